"""`hf-distill demo`: distil the embedded reasoning task end to end on a CPU (no downloads).

    hf-distill demo --output_dir demo_out            # minutes; --fast: a seconds-long run of the same pipeline
    hf-distill demo --fast --teacher_steps 50 --temperature 2.0

Stages already finished in --output_dir are reused, so a rerun only does what is missing.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field

from hf_distill.cli.parser import Parser


@dataclass
class DemoArguments:
    output_dir: str = field(default="demo_out", metadata={"help": "Output directory (finished stages are reused)."})
    fast: bool = field(default=False, metadata={"help": "Toy sizes: a seconds-long run of the same pipeline."})
    seed: int | None = field(default=None, metadata={"help": "Seed (default: the demo's)."})
    teacher_steps: int | None = field(default=None, metadata={"help": "Teacher SFT steps (default: the demo's)."})
    student_steps: int | None = field(default=None, metadata={"help": "Student KD steps (default: the demo's)."})
    temperature: float | None = field(default=None, metadata={"help": "KD temperature (default: the demo's)."})
    alpha: float | None = field(default=None, metadata={"help": "Hard-label CE weight (default: the demo's)."})


def parser() -> Parser:
    return Parser(DemoArguments, prog="hf-distill demo",
                  description="Distil a reasoning task end to end on a CPU.")


def main(argv: list[str] | None = None) -> int:
    (args,) = parser().parse(sys.argv[1:] if argv is None else argv)

    from rich.console import Console

    from hf_distill.cli.demo_table import demo_table
    from hf_distill.demo import DemoSettings, run_demo, settings_with

    console = Console(width=max(110, shutil.get_terminal_size().columns))  # the table needs ~100 columns
    settings = settings_with(
        DemoSettings.fast() if args.fast else DemoSettings(), seed=args.seed, teacher_steps=args.teacher_steps,
        student_steps=args.student_steps, temperature=args.temperature, alpha=args.alpha,
    )
    result = run_demo(args.output_dir, settings, log=console.print)
    console.print(demo_table(result))
    console.print(f"Everything is in {os.path.abspath(args.output_dir)} (reload any model with from_pretrained).")
    return 0
