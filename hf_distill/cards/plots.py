"""PNG plots for model cards: a stage's training curves and the cascade's size-vs-quality trade-off."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402

from hf_distill.utils.io import atomic_path  # noqa: E402

CURVES = ("loss", "kd_loss", "ce_loss", "top1_agreement")


def _save(fig, path: Path) -> Path:
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix.removeprefix(".") or "png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def training_curves(log_history: list[dict], path: str | Path, title: str = "") -> Path | None:
    """One panel per logged quantity (loss, kd_loss, ce_loss, top1_agreement) against the optimiser step."""
    series = {key: [(row["step"], row[key]) for row in log_history if key in row and "step" in row] for key in CURVES}
    series = {key: points for key, points in series.items() if points}
    if not series:
        return None
    fig, axes = plt.subplots(1, len(series), figsize=(3.6 * len(series), 3.0), squeeze=False)
    for ax, (key, points) in zip(axes[0], series.items()):
        ax.plot(*zip(*points), marker=".", linewidth=1)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    fig.suptitle(title, y=1.04)  # above the panel titles
    return _save(fig, Path(path))


def cascade_plot(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Accuracy against parameters (log scale) for every model of the cascade, in lineage order; beside it, accuracy
    against generation speed (tokens/s, log scale) for the models whose speed was measured: ``model.generate``'s
    (``tokens_per_second``) and, as separate points per GGUF type, one request at a time behind llama.cpp's server
    (``served_tokens_per_second``: {quant: tokens/s}, from a stage's ``export: {bench: ...}``)."""
    timed = [row for row in rows if row.get("tokens_per_second") or row.get("served_tokens_per_second")]
    fig, axes = plt.subplots(1, 2 if timed else 1, figsize=(10.0 if timed else 5.0, 3.6), squeeze=False)
    panels = [(axes[0][0], rows, "parameters", "parameters", "size vs quality")]
    if timed:
        panels.append((axes[0][1], timed, "tokens_per_second", "generation speed (tokens/s)", "speed vs quality"))
    for ax, points, key, label, subtitle in panels:
        points = [row for row in points if row.get(key)]
        xs, accuracy = [row[key] for row in points], [100 * row["accuracy"] for row in points]
        ax.plot(xs, accuracy, marker="o", label="transformers generate" if key == "tokens_per_second" else None)
        for row, x, y in zip(points, xs, accuracy):
            ax.annotate(row["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        if key == "tokens_per_second":
            _served_points(ax, timed)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{title}: {subtitle}")
        ax.grid(alpha=0.3)
    return _save(fig, Path(path))


def _served_points(ax, rows: list[dict]) -> None:
    """One marker series per GGUF type: the model's accuracy at its tokens/s behind llama.cpp's server."""
    quants = sorted({quant for row in rows for quant in (row.get("served_tokens_per_second") or {})})
    for marker, quant in zip("s^Dv<>p*", quants):
        served = [(row["served_tokens_per_second"][quant], 100 * row["accuracy"], row["name"]) for row in rows
                  if quant in (row.get("served_tokens_per_second") or {})]
        ax.scatter([x for x, _, _ in served], [y for _, y, _ in served], marker=marker,
                   label=f"llama.cpp server, GGUF {quant}")
    if quants:
        ax.legend(fontsize=7, loc="best")
