"""Tables for people: the demo's comparison of teacher, distilled student and SFT-only student."""

from __future__ import annotations

from rich.table import Table

_LABELS = {"teacher": "teacher (SFT)", "student-kd": "student, logit KD", "student-sft": "student, SFT only"}


def demo_table(result) -> Table:
    table = Table(title="hf-distill demo: held-out arithmetic word problems")
    for column in ("model", "exact match", "agrees w/ teacher", "parameters", "size vs teacher", "gen tokens/s",
                   "train s"):
        table.add_column(column, justify="left" if column == "model" else "right")
    teacher_params = result.rows["teacher"]["parameters"]
    for name, row in result.rows.items():
        table.add_row(
            _LABELS.get(name, name), f"{row['accuracy']:.1%}", f"{row['agreement_with_teacher']:.1%}",
            f"{row['parameters'] / 1e6:.2f}M", f"1/{teacher_params / row['parameters']:.1f}",
            f"{row['tokens_per_second']:.0f}", f"{result.seconds.get(name, 0.0):.0f}",
        )
    return table
