"""`hf-distill cascade RECIPE [--dry-run] [--from-stage NAME] [--output-dir DIR]`."""

from __future__ import annotations

import argparse
import shutil
import sys


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-distill cascade",
        description="Run a distillation cascade from a YAML recipe: each stage's trained student teaches the next. "
        "A rerun skips finished stages and resumes an interrupted one from its last checkpoint.",
    )
    parser.add_argument("recipe", help="a recipe YAML file (see recipes/)")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan (models, parameter "
                        "counts, memory estimates) without loading weights")
    parser.add_argument("--from-stage", default=None, help="rerun this stage and all after it (earlier stages must "
                        "have finished)")
    parser.add_argument("--output-dir", default=None, help="overrides the recipe's output_dir")
    args = parser.parse_args(argv)

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
    console.print(plan_table(recipe, plans))
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
