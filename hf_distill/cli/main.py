"""The `hf-distill` command line: `demo` (the embedded end-to-end run), `train` (any HF script's arguments) and
`cache-logits` (run a teacher once, keep its top-k log-probabilities for `train --teacher_cache`)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys

os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _demo(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hf-distill demo", description="Distil a reasoning task end to end on a CPU.")
    parser.add_argument("--out", default="demo_out", help="output directory (stages already finished are reused)")
    parser.add_argument("--fast", action="store_true", help="toy sizes: a seconds-long run of the same pipeline")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--teacher-steps", type=int, default=None)
    parser.add_argument("--student-steps", type=int, default=None)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--alpha", type=float, default=None)
    args = parser.parse_args(argv)

    from rich.console import Console

    from hf_distill.cli.demo_table import demo_table
    from hf_distill.demo import DemoSettings, run_demo, settings_with

    console = Console(width=max(110, shutil.get_terminal_size().columns))  # the table needs ~100 columns
    settings = settings_with(
        DemoSettings.fast() if args.fast else DemoSettings(), seed=args.seed, teacher_steps=args.teacher_steps,
        student_steps=args.student_steps, temperature=args.temperature, alpha=args.alpha,
    )
    result = run_demo(args.out, settings, log=console.print)
    console.print(demo_table(result))
    console.print(f"Everything is in {os.path.abspath(args.out)} (reload any model with from_pretrained).")
    return 0


def _cache_logits(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-distill cache-logits",
        description="Run a teacher once over a dataset and cache its top-k log-probabilities at every loss token, "
        "for `hf-distill train --teacher_cache DIR`. Re-running with the same arguments resumes an interrupted run.",
    )
    parser.add_argument("--teacher", required=True, help="teacher checkpoint (local directory or hub id)")
    parser.add_argument("--dataset", default="arithmetic", help="as for `hf-distill train`: 'arithmetic', a .jsonl "
                        "file or a directory of train/test.jsonl")
    parser.add_argument("--out", required=True, help="cache directory (created; an interrupted one is resumed)")
    parser.add_argument("--top-k", type=int, default=32, help="tokens kept per position (default 32)")
    parser.add_argument("--temperature", type=float, default=1.0, help="teacher softmax temperature; training "
                        "must use the same one (default 1.0)")
    parser.add_argument("--batch-size", type=int, default=8, help="examples per teacher forward pass")
    parser.add_argument("--shard-size", type=int, default=1024, help="examples per shard file (the unit of resuming)")
    parser.add_argument("--max-length", type=int, default=1024, help="truncation length; must match training's "
                        "max_length (default 1024, as DistillationConfig)")
    parser.add_argument("--num-examples", type=int, default=None, help="keep the first N examples; for "
                        "'arithmetic', the problems generated (default 2000), as `hf-distill train --num_examples`")
    parser.add_argument("--dataset-train-split", default="train", help="split with `datasets` slice syntax, e.g. "
                        "'train[:500]', as `hf-distill train --dataset_train_split`")
    parser.add_argument("--question-column", default="question")
    parser.add_argument("--answer-column", default="answer")
    parser.add_argument("--teacher-dtype", default=None, help="auto, float32, bfloat16 or float16")
    parser.add_argument("--logprob-dtype", default="float16", choices=["float16", "float32"])
    parser.add_argument("--device", default=None, help="e.g. cuda:0 (default: cuda if available, else cpu)")
    args = parser.parse_args(argv)

    from hf_distill.cache.writer import collect_teacher_cache
    from hf_distill.cli.train import DatasetArguments, load_splits
    from hf_distill.config import DistillationConfig
    from hf_distill.models.gguf import load_tokenizer

    dataset_args = DatasetArguments(dataset=args.dataset, dataset_train_split=args.dataset_train_split,
                                    num_examples=args.num_examples, question_column=args.question_column,
                                    answer_column=args.answer_column)
    data, _ = load_splits(dataset_args, tokenizer=load_tokenizer(args.teacher))
    config = DistillationConfig(output_dir=args.out, max_length=args.max_length, temperature=args.temperature,
                                report_to=[])
    manifest = collect_teacher_cache(
        args.teacher, data, args.out, args=config, top_k=args.top_k, batch_size=args.batch_size,
        shard_size=args.shard_size, logprob_dtype=args.logprob_dtype, teacher_dtype=args.teacher_dtype,
        device=args.device, log=print,
    )
    tokens = sum(shard["num_tokens"] for shard in manifest["shards"])
    size = sum(shard["bytes"] for shard in manifest["shards"])
    print(f"Cached {manifest['dataset']['num_examples']} examples, {tokens} loss tokens, k={manifest['top_k']}, "
          f"T={manifest['temperature']}: {size / 2**20:.1f} MiB in {os.path.abspath(args.out)} "
          f"({size / max(tokens, 1):.0f} bytes/token). Train with --teacher_cache {args.out}")
    return 0


def _train(argv: list[str]) -> int:
    from hf_distill.cli.train import main as train_main

    return train_main(argv)


def _cascade(argv: list[str]) -> int:
    from hf_distill.cascade import main as cascade_main

    return cascade_main(argv)


def _traces(argv: list[str]) -> int:
    from hf_distill.cli.traces import main as traces_main

    return traces_main(argv)


def _push(argv: list[str]) -> int:
    from hf_distill.hub import main as push_main

    return push_main(argv)


COMMANDS = {"demo": _demo, "train": _train, "cache-logits": _cache_logits, "cascade": _cascade, "push": _push,
            "traces": _traces}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: hf-distill {demo,train,cache-logits,cascade,push,traces} [options]\n\n"
              "  demo          distil an embedded reasoning task end to end (no downloads)\n"
              "  train         distil with DistillationConfig arguments (see `hf-distill train --help`)\n"
              "  cache-logits  run a teacher once and cache its top-k log-probabilities for `train --teacher_cache`\n"
              "  cascade       run a YAML recipe of stages, each student teaching the next (`--dry-run`: the plan)\n"
              "  push          publish a model folder (safetensors + card) to the Hugging Face Hub\n"
              "  traces        sample a teacher's reasoning traces, keep the verified ones (`hf-distill traces -h`)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
