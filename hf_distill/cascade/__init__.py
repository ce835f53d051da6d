"""Recursive distillation cascades: teacher -> student 1 -> student 2 -> ..., from one YAML recipe.

    hf-distill cascade recipes/tiny-arithmetic.yaml            # run (finished stages are skipped on a rerun)
    hf-distill cascade recipes/qwen2.5-7b-to-0.5b.yaml --dry_run   # plan only: models, parameters, memory
"""

from hf_distill.cascade.recipe import Recipe, RecipeError, load_recipe, parse_recipe

__all__ = ["Recipe", "RecipeError", "load_recipe", "parse_recipe", "main"]


def main(argv: list[str]) -> int:
    from hf_distill.cli.cascade import main as cli_main

    return cli_main(argv)
