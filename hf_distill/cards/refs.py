"""How a card names a model: a Hub repo by its id (linked), a local folder by its name, never by a path of the
machine that trained it (``/home/alice/runs/teacher`` is useless to a reader and tells them about alice's disk).
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id


def hub_id(ref: str | os.PathLike | None) -> str | None:
    """``ref`` if it names a Hub repo (``owner/name`` or ``name``), None for a local path or nothing.

    >>> hub_id("HuggingFaceTB/SmolLM2-135M-Instruct"), hub_id("/tmp/teacher"), hub_id("./teacher"), hub_id("")
    ('HuggingFaceTB/SmolLM2-135M-Instruct', None, None, None)
    """
    if not ref:
        return None
    ref = os.fspath(ref)
    if os.path.isabs(ref) or ref.startswith((".", "~")) or "\\" in ref or os.path.exists(ref):
        return None  # what `from_pretrained` would read from disk
    try:
        validate_repo_id(ref)
    except HFValidationError:
        return None
    return ref


def folder_name(ref: str | os.PathLike) -> str:
    """A local model by its folder name; a Trainer checkpoint keeps its run's name (``run/checkpoint-500``)."""
    path = Path(os.fspath(ref)).expanduser()
    name = path.name or path.resolve().name
    return f"{path.parent.name}/{name}" if name.startswith("checkpoint-") and path.parent.name else name


def model_ref(ref: str | os.PathLike | None) -> dict | None:
    """``{"name": ..., "hub_id": ...}`` for a card: ``hub_id`` is None for a local folder (shown by name, unlinked)."""
    if not ref:
        return None
    repo = hub_id(ref)
    return {"name": repo or folder_name(ref), "hub_id": repo}


def strip_local_paths(value):
    """``value`` (a recipe excerpt: dicts, lists, strings) with every absolute path replaced by its folder name."""
    if isinstance(value, dict):
        return {key: strip_local_paths(item) for key, item in value.items()}
    if isinstance(value, list):
        return [strip_local_paths(item) for item in value]
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")):
        return folder_name(value)
    return value
