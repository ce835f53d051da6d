"""Trace and logit-cache collection over the processes of a launcher (see tests/test_multiprocess_collection.py).

    accelerate launch --config_file recipes/accelerate/ddp.yaml --num_processes 2 tests/scripts/collect_shards.py \
        OUT TEACHER_DIR [--chat_url URL] [--vllm_url URL] [--only traces_local,cache_local] [--stop_after N] \
        [--killed_chat_url URL]

Every rank runs the same collections into ``OUT/<name>`` (``traces_local``, ``cache_local``: the tiny teacher saved
in TEACHER_DIR, in-process; ``traces_served``, ``cache_served``: the loopback engines at the URLs; ``traces_cli``,
``cache_cli``: `hf-distill traces` / `cache-logits` on generated arithmetic problems, in-process teacher) and writes
``OUT/rank-<r>.json``: its rank, the world size, the shards it collected per collection, what it got back (number
of traces, the cache manifest's shard count). ``--stop_after N`` simulates a kill: each rank stops each collection
once it collected N shards (its N-th cache shard is then written but not yet recorded, its N-th trace shard
recorded), goes on with the next and exits with status 3. ``--killed_chat_url`` first runs such a killed collection
(``cache_local`` and ``traces_served`` through that engine, ``--stop_after 2``) into ``OUT/killed``, in the same
launch (one start-up less). Run in-process (``main(...)``) it is the one-process reference.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the tiny-model helpers

from helpers import prompt_completion  # noqa: E402

from hf_distill.data.arithmetic import make_arithmetic_dataset  # noqa: E402
from hf_distill.utils.device import end_distributed  # noqa: E402
from hf_distill.utils.manifest import WorkShare  # noqa: E402

NAMES = ("traces_local", "cache_local", "traces_served", "cache_served", "traces_cli", "cache_cli")


class Killed(KeyboardInterrupt):
    """The simulated kill of ``--stop_after``."""


def problems():
    """10 GSM8K-format problems: 5 shards of 2, so rank 0 of 2 has one more than rank 1."""
    return make_arithmetic_dataset(n_train=10, n_test=1, seed=0)["train"].select_columns(["question", "answer"])


def trace_config(**overrides):
    from hf_distill.traces import TraceConfig

    values = dict(num_samples=2, batch_size=4, shard_size=2, max_new_tokens=6, temperature=1.0, seed=0,
                  keep_only_verified=False, dedupe=False)
    return TraceConfig(**{**values, **overrides})


def cache_args(out: Path, **overrides):
    from hf_distill import DistillationConfig

    return DistillationConfig(output_dir=str(out / "unused"), report_to=[], use_cpu=True, bf16=False, **overrides)


def cache_data():
    return prompt_completion(slice(0, 20))  # 5 shards of 4


def main(out: Path, teacher_dir: Path, chat_url: str | None = None, vllm_url: str | None = None,
         only: list[str] | None = None, stop_after: int | None = None, share: WorkShare | None = None) -> dict:
    from transformers import AutoTokenizer

    share = share or WorkShare.from_env()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    report = {"rank": share.rank, "world_size": share.world_size, "shards": {}, "results": {}, "killed": []}
    wanted = [name for name in NAMES if (only is None or name in only)
              and (name.endswith("local") or (chat_url if name.startswith("traces") else vllm_url))]
    for name in wanted:
        collected = report["shards"][name] = []

        def log(line: str, collected=collected) -> None:
            found = re.search(r"shard (\d+)/\d+", line)
            if found and "waiting" not in line:
                collected.append(int(found.group(1)) - 1)
                if stop_after is not None and len(collected) >= stop_after:
                    raise Killed(f"killed after {len(collected)} shards")

        try:
            report["results"][name] = _collect(name, out, teacher_dir, tokenizer, chat_url, vllm_url, log, share)
        except Killed:
            report["killed"].append(name)
    (out / f"rank-{share.rank}.json").write_text(json.dumps(report))
    return report


def _collect(name, out, teacher_dir, tokenizer, chat_url, vllm_url, log, share) -> int:
    """Number of traces, or of cache shards, that ``name`` returned."""
    from transformers import AutoModelForCausalLM

    from hf_distill.cache.writer import collect_teacher_cache
    from hf_distill.served.teacher import ServedTeacher
    from hf_distill.traces import collect_traces

    target = out / name
    if name.endswith("cli"):
        return _run_cli(name, target, teacher_dir)
    if name == "traces_local":
        teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
        return len(collect_traces(teacher, tokenizer, problems(), target, trace_config(), log=log, share=share))
    if name == "traces_served":
        config = trace_config(teacher_url=chat_url, teacher_concurrency=2)
        return len(collect_traces(None, None, problems(), target, config, log=log, share=share))
    if name == "cache_local":
        manifest = collect_teacher_cache(str(teacher_dir), cache_data(), target, tokenizer, args=cache_args(out),
                                         top_k=6, shard_size=4, batch_size=3, log=log, share=share)
        return len(manifest["shards"])
    args = cache_args(out, teacher_url=vllm_url, teacher_top_k=8)
    served = ServedTeacher.from_args(args, tokenizer, top_k=8)
    manifest = collect_teacher_cache(served, cache_data(), target, tokenizer, args=args, top_k=8, shard_size=4,
                                     batch_size=3, log=log, share=share)
    return len(manifest["shards"])


def _run_cli(name: str, target: Path, teacher_dir: Path) -> int:
    """The subcommand's ``main`` (the ``hf-distill`` entry point adds only ``end_distributed``, called at the end)."""
    from hf_distill.cli import cache_logits, traces

    common = ["--teacher_model_name_or_path", str(teacher_dir), "--dataset_name", "arithmetic", "--output_dir",
              str(target)]
    if name == "traces_cli":
        return traces.main([*common, "--num_examples", "6", "--num_samples", "2", "--shard_size", "2",
                            "--batch_size", "4", "--max_new_tokens", "4", "--no_keep_only_verified", "--no_dedupe"])
    return cache_logits.main([*common, "--num_examples", "12", "--top_k", "4", "--shard_size", "3",
                              "--report_to", "none"])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("teacher_dir", type=Path)
    parser.add_argument("--chat_url")
    parser.add_argument("--vllm_url")
    parser.add_argument("--only", type=lambda text: text.split(","))
    parser.add_argument("--stop_after", type=int)
    parser.add_argument("--killed_chat_url")
    cli = parser.parse_args()
    if cli.killed_chat_url:
        (cli.out / "killed").mkdir(exist_ok=True)
        main(cli.out / "killed", cli.teacher_dir, cli.killed_chat_url, only=["cache_local", "traces_served"],
             stop_after=2)
    report = main(cli.out, cli.teacher_dir, cli.chat_url, cli.vllm_url, cli.only, cli.stop_after)
    end_distributed()  # an open gloo group at exit sometimes aborts rank 0 after a finished run
    sys.exit(3 if report["killed"] else 0)
