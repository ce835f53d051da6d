"""The `hf-distill` command line: `demo` (the embedded end-to-end run) and `train` (any HF script's arguments)."""

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

    from hf_distill.demo import DemoSettings, run_demo, settings_with
    from hf_distill.reporting import demo_table

    console = Console(width=max(110, shutil.get_terminal_size().columns))  # the table needs ~100 columns
    settings = settings_with(
        DemoSettings.fast() if args.fast else DemoSettings(), seed=args.seed, teacher_steps=args.teacher_steps,
        student_steps=args.student_steps, temperature=args.temperature, alpha=args.alpha,
    )
    result = run_demo(args.out, settings, log=console.print)
    console.print(demo_table(result))
    console.print(f"Everything is in {os.path.abspath(args.out)} (reload any model with from_pretrained).")
    return 0


def _train(argv: list[str]) -> int:
    from hf_distill.train import main as train_main

    return train_main(argv)


COMMANDS = {"demo": _demo, "train": _train}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        print("usage: hf-distill {demo,train} [options]\n\n"
              "  demo   distil an embedded reasoning task end to end (no downloads)\n"
              "  train  distil with DistillationConfig arguments (see `hf-distill train --help`)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
