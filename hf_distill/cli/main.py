"""The `hf-distill` command line (also `python -m hf_distill`): this module only dispatches to one module per
subcommand. All of them read TRL's snake_case argument names through `HfArgumentParser` dataclasses and take
`--config FILE.yaml` (`hf_distill.cli.parser`); `hf-distill COMMAND -h` lists a command's flags."""

from __future__ import annotations

import importlib
import os
import sys

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

# name: (module with `main(argv) -> int`, one line of help)
COMMANDS = {
    "demo": ("hf_distill.cli.demo", "distil an embedded reasoning task end to end (no downloads)"),
    "train": ("hf_distill.cli.train", "distil with DistillationConfig arguments (see `hf-distill train -h`)"),
    "cache-logits": ("hf_distill.cli.cache_logits",
                     "run a teacher once and cache its top-k log-probabilities for `train --teacher_cache`"),
    "cascade": ("hf_distill.cli.cascade",
                "run a YAML recipe of stages, each student teaching the next (`--dry_run`: the plan)"),
    "push": ("hf_distill.cli.push", "publish a model folder (safetensors + card) to the Hugging Face Hub"),
    "traces": ("hf_distill.cli.traces", "sample a teacher's reasoning traces, keep the verified ones"),
    "export": ("hf_distill.cli.export", "write a student as a GGUF file (f16, q8_0, q4_k_m...) for llama.cpp"),
    "serve": ("hf_distill.cli.serve", "serve a student with llama.cpp's OpenAI-compatible server"),
    "bench-serve": ("hf_distill.cli.bench_serve",
                    "measure a server's TTFT, tokens/s and p50/p95 latency at 1, 4, 16 concurrent requests"),
    "env": ("hf_distill.cli.env", "print the versions to paste into a bug report"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:<13} {text}" for name, (_, text) in COMMANDS.items())
    return (f"usage: hf-distill {{{','.join(COMMANDS)}}} [--config FILE.yaml] [options]\n\n{rows}\n\n"
            "Every command takes --config FILE.yaml (its flags' names as keys; flags given too override the file).")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print(usage())
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    code = importlib.import_module(COMMANDS[argv[0]][0]).main(argv[1:])
    from hf_distill.utils.device import end_distributed

    end_distributed()  # under `accelerate launch`: every rank closes its process group (not after an error: no barrier)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
