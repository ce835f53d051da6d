"""`hf-distill cascade`: run a YAML recipe of stages, each stage's trained student teaching the next.

    hf-distill cascade recipes/tiny-arithmetic.yaml                 # train; a rerun skips finished stages
    hf-distill cascade recipes/llama3.1-70b-to-1b-to-100m.yaml --dry_run   # the plan only, no weights loaded
    hf-distill cascade recipes/llama3.1-70b-to-1b-to-100m.yaml --dry_run --num_processes 8   # + memory per rank
    hf-distill cascade RECIPE --from_stage s2 --output_dir runs/x
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field

from hf_distill.cli.parser import Parser


@dataclass
class CascadeArguments:
    recipe: str | None = field(default=None, metadata={"help": "A recipe YAML file (see recipes/); also positional."})
    dry_run: bool = field(default=False, metadata={"help": "Validate and print the plan (models, parameter counts, "
                                                           "memory estimates) without loading weights."})
    from_stage: str | None = field(default=None, metadata={"help": "Rerun this stage and all after it (earlier "
                                                                    "stages must have finished)."})
    output_dir: str | None = field(default=None, metadata={"help": "Overrides the recipe's output_dir."})
    num_processes: int = field(default=1, metadata={"help": "With more than 1, the plan also gives each stage's "
                                                               "memory per rank when trained with fully_shard (FSDP2) "
                                                               "over this many ranks, and the GPU size that holds it."})


def parser() -> Parser:
    return Parser(CascadeArguments, positional="recipe", prog="hf-distill cascade",
                  description="Run a distillation cascade from a YAML recipe: each stage's trained student teaches "
                  "the next. A rerun skips finished stages and resumes an interrupted one from its last checkpoint.")


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    (args,) = cli.parse(sys.argv[1:] if argv is None else argv)
    if args.recipe is None:
        cli.error("a recipe is required: hf-distill cascade RECIPE.yaml [--dry_run]")
    if args.num_processes < 1:
        cli.error(f"--num_processes must be at least 1, got {args.num_processes}")

    from rich.console import Console

    from hf_distill.cascade.plan import build_plan, plan_table
    from hf_distill.cascade.recipe import RecipeError, load_recipe
    from hf_distill.cascade.stage import lora_config, training_config

    console = Console(width=max(140, shutil.get_terminal_size().columns))
    try:
        recipe = load_recipe(args.recipe)
        plans = build_plan(recipe)
        for stage in recipe.stages:  # every stage's values too (kd_loss choices, ranges), before stage 1 trains
            training_config(stage, "dry-run", recipe.seed)
            lora_config(stage)
    except RecipeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    console.print(plan_table(recipe, plans, args.num_processes))
    if args.dry_run:
        return 0
    from hf_distill.cascade.runner import run_cascade

    manifest = run_cascade(recipe, args.output_dir, args.from_stage, log=console.print)
    console.print(cascade_table(recipe, manifest))
    return 0


def cascade_table(recipe, manifest: dict):
    """Per stage: parameters, accuracy, agreement, accuracy kept of its teacher, size ratio, wall time."""
    from rich.table import Table

    table = Table(title=f"cascade {recipe.name}: held-out results")
    for column in ("model", "params", "vs teacher", "accuracy", "kept of teacher", "agrees w/ teacher",
                   "Logic-Match", "gen tok/s", "wall s"):
        table.add_column(column, justify="left" if column == "model" else "right")

    def pct(value):
        return "-" if value is None else f"{value:.1%}"

    root = manifest.get("root", {}).get("metrics")
    rows = ([("root teacher", root, None)] if root else []) + [
        (name, entry.get("metrics", {}), entry.get("seconds")) for name, entry in manifest["stages"].items()
        if name in {s.name for s in recipe.stages}]
    for name, m, seconds in rows:
        size = m.get("size_vs_teacher")
        table.add_row(name, f"{m.get('parameters', 0) / 1e6:.3f}M", f"1/{1 / size:.1f}" if size else "-",
                      pct(m.get("accuracy")), pct(m.get("accuracy_kept")), pct(m.get("agreement_with_teacher")),
                      "-" if m.get("logic_match") is None else f"{m['logic_match']:.3f}",
                      f"{m.get('tokens_per_second', 0):.0f}", "-" if seconds is None else f"{seconds:.0f}")
    return table
