"""What a student's deployment looks like, kept beside its weights: ``deployment.json`` (GGUF exports and their
sizes; server measurements) and the "Deployment" table of its model card, rendered from it.

``hf-distill export`` and ``hf-distill bench-serve --card DIR`` add to the file and refresh the card's section in
place; a cascade stage renders the same table when it writes its card (``hf_distill.cards``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from hf_distill.utils.io import write_json_atomic, write_text_atomic

DEPLOYMENT_FILE = "deployment.json"
SECTION = "## Deployment"


def load_deployment(model_dir: str | os.PathLike) -> dict:
    path = Path(model_dir) / DEPLOYMENT_FILE
    return json.loads(path.read_text()) if path.is_file() else {"exports": {}, "serving": []}


def record_export(model_dir: str | os.PathLike, gguf_path: str | os.PathLike, quant: str) -> dict:
    """Note a GGUF export (file name, size) in ``model_dir/deployment.json``; returns the whole record."""
    deployment = load_deployment(model_dir)
    gguf_path = Path(gguf_path)
    deployment["exports"][quant] = {"file": gguf_path.name, "bytes": gguf_path.stat().st_size}
    write_json_atomic(Path(model_dir) / DEPLOYMENT_FILE, deployment)
    return deployment


def record_serving(model_dir: str | os.PathLike, levels: list[dict], quant: str | None, engine: str,
                   max_tokens: int, gguf_bytes: int | None = None) -> dict:
    """Replace the measurements of format ``quant`` in ``model_dir/deployment.json`` with ``levels``
    (:class:`hf_distill.deploy.bench.LevelResult` dicts)."""
    deployment = load_deployment(model_dir)
    kept = [row for row in deployment["serving"] if row.get("format") != quant]
    size = gguf_bytes or deployment["exports"].get(quant or "", {}).get("bytes")
    deployment["serving"] = kept + [{"format": quant, "bytes": size, "engine": engine, "max_tokens": max_tokens,
                                     **level} for level in levels]
    write_json_atomic(Path(model_dir) / DEPLOYMENT_FILE, deployment)
    return deployment


def _size(num_bytes) -> str:
    return "-" if not num_bytes else f"{num_bytes / 1e6:.1f} MB" if num_bytes < 1e9 else f"{num_bytes / 1e9:.2f} GB"


def _ms(seconds) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f} ms"


def deployment_table(deployment: dict) -> str | None:
    """The card's "Deployment" table (markdown, no heading), or None when nothing was exported or measured."""
    serving, exports = deployment.get("serving") or [], deployment.get("exports") or {}
    if not serving and not exports:
        return None
    lines = ["| format | file size | concurrent requests | tokens/s per request | tokens/s total | "
             "time to first token (p50) | latency p50 / p95 |", "|---|---:|---:|---:|---:|---:|---:|"]
    measured = set()
    for row in serving:
        measured.add(row.get("format"))
        lines.append(f"| GGUF {row.get('format') or '?'} | {_size(row.get('bytes'))} | {row['concurrency']} | "
                     f"{row['tokens_per_second']:.1f} | {row['throughput']:.1f} | {_ms(row['ttft_p50'])} | "
                     f"{_ms(row['latency_p50'])} / {_ms(row['latency_p95'])} |")
    for quant, export in exports.items():
        if quant not in measured:
            lines.append(f"| GGUF {quant} (`{export['file']}`) | {_size(export['bytes'])} | - | - | - | - | - |")
    engines = sorted({row["engine"] for row in serving if row.get("engine")})
    tokens = sorted({row["max_tokens"] for row in serving if row.get("max_tokens")})
    note = ""
    if serving:
        note = (f"\n\nMeasured with `hf-distill bench-serve` against {', '.join(engines) or 'an OpenAI server'}: "
                f"streamed greedy requests of up to {', '.join(map(str, tokens))} new tokens; a request's latency "
                "includes its wait in the server's queue.")
    return "\n".join(lines) + note


def update_card(readme: str | os.PathLike, deployment: dict) -> bool:
    """Put the Deployment section into an existing model card (replacing the one there, else before "## How it
    was trained" / "## Use", else at the end). False when there is no card or nothing to show."""
    readme, table = Path(readme), deployment_table(deployment)
    if not readme.is_file() or table is None:
        return False
    text, section = readme.read_text(), f"{SECTION}\n\n{table}\n\n"
    existing = re.search(rf"^{SECTION}\n.*?(?=^## |\Z)", text, flags=re.S | re.M)
    if existing:
        text = text[: existing.start()] + section + text[existing.end() :]
    else:
        anchor = re.search(r"^## (How it was trained|Use)\b", text, flags=re.M)
        at = anchor.start() if anchor else len(text)
        text = text[:at] + ("" if at == len(text) or text[:at].endswith("\n\n") else "\n") + section + text[at:]
    write_text_atomic(readme, text)
    return True
