"""Tables for people: the demo's comparison of teacher, distilled student and SFT-only student."""

from __future__ import annotations

from rich.table import Table

# teacher: SFT on many labelled problems; student-kd: the teacher's traces of unlabelled questions + logit KD;
# student-sft: SFT on the student's few labelled problems (the recipe's comments say how many)
_LABELS = {"teacher": "teacher (SFT)", "student-kd": "student, KD", "student-sft": "student, SFT only"}


def demo_table(result) -> Table:
    n = next(iter(result.rows.values())).get("n", 0)
    table = Table(title=f"hf-distill demo: {n} held-out arithmetic word problems (± one standard error)")
    for column in ("model", "exact match", "agrees w/ teacher", "parameters", "size vs teacher", "gen tokens/s",
                   "train s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    teacher_params = result.rows["teacher"]["parameters"]
    for name, row in result.rows.items():
        se = f" ± {row['accuracy_se']:.1%}" if "accuracy_se" in row else ""
        table.add_row(
            _LABELS.get(name, name), f"{row['accuracy']:.1%}{se}", f"{row['agreement_with_teacher']:.1%}",
            f"{row['parameters'] / 1e6:.2f}M", f"1/{teacher_params / row['parameters']:.1f}",
            f"{row['tokens_per_second']:.0f}", f"{result.seconds.get(name, 0.0):.0f}",
        )
    comparison = getattr(result, "comparison", None)
    if comparison:
        diff, se = comparison["difference"], comparison["se"]
        ratio = f" = {diff / se:+.1f} s.e." if se and se == se else ""  # se is NaN for n < 2
        table.caption = (f"distilled - SFT-only: {diff:+.1%} (paired s.e. {se:.1%}, n = {comparison['n']}){ratio}")
    return table
