"""Resumable work in numbered shards, recorded in a JSON manifest: the common part of the teacher-logit cache and
trace collection.

    manifest = ShardManifest.open(out / "manifest.json", fields, mismatch=MyMismatchError)
    done = manifest.finished(check)             # recorded shards that are still intact, by index
    for index in range(num_shards):
        if index not in done:
            manifest.record(write_shard(index))  # each finished shard is recorded at once, atomically

The manifest's identifying ``fields`` (format, teacher, data, settings) must equal this run's for it to resume; the
first field that differs is named. Shards are written atomically (:func:`hf_distill.utils.io.atomic_path`) before
they are recorded, so a crash costs at most the shard in progress.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path

from hf_distill.utils.io import remove_partial, write_json_atomic


def first_difference(old: dict, new: dict, prefix: str = "") -> tuple[str, object, object] | None:
    """The first field of ``new`` (dotted path into nested dicts) whose value differs in ``old``, with both values."""
    for key, value in new.items():
        if isinstance(value, dict) and isinstance(old.get(key), dict):
            found = first_difference(old[key], value, f"{prefix}{key}.")
            if found:
                return found
        elif old.get(key) != value:
            return f"{prefix}{key}", old.get(key), value
    return None


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


class ShardManifest:
    """``data``: the manifest as a dict (its ``"shards"``: one entry per finished shard, with an ``"index"``)."""

    def __init__(self, path: str | Path, data: dict, write: Callable[[Path, dict], None] = write_json_atomic):
        self.path, self.data, self._write = Path(path), data, write

    @classmethod
    def open(
        cls,
        path: str | Path,
        fields: dict,
        *,
        mismatch: Callable[[str, object, object], Exception],
        new: dict | None = None,
        read: Callable[[Path], dict | None] = _read_json,
        write: Callable[[Path, dict], None] = write_json_atomic,
        shard_folders: Iterable[str | Path] = (),
    ) -> ShardManifest:
        """The manifest at ``path`` if it was written with these ``fields``, else a new one written now.

        ``mismatch(field, old, new)`` is raised for the first field (dotted path) that differs. A new manifest is
        ``{**fields, **new, "shards": []}``. ``read`` reads (and may check) an existing one, None when there is
        none. What interrupted writes left beside the manifest and in ``shard_folders`` is removed first.
        """
        path = Path(path)
        for folder in (path.parent, *shard_folders):
            remove_partial(folder)
        data = read(path)
        if data is None:
            manifest = cls(path, {**fields, **(new or {}), "shards": []}, write)
            manifest.save()
            return manifest
        difference = first_difference(data, fields)
        if difference:
            raise mismatch(*difference)
        return cls(path, data, write)

    def finished(self, check: Callable[[dict], bool] = lambda entry: True) -> dict[int, dict]:
        """The recorded shards, by index, that ``check(entry)`` keeps: it returns False for one to redo and raises
        for one that must not be built on. All are checked before any work starts."""
        return {entry["index"]: entry for entry in self.data["shards"] if check(entry)}

    def record(self, entry: dict) -> None:
        """Record a finished shard (replacing an entry of the same index) and rewrite the manifest atomically."""
        others = [e for e in self.data["shards"] if e["index"] != entry["index"]]
        self.data["shards"] = sorted([*others, entry], key=lambda e: e["index"])
        self.save()

    def save(self, **updates) -> None:
        """Set ``updates`` (e.g. ``complete=True``) and rewrite the manifest atomically."""
        self.data.update(updates)
        self._write(self.path, self.data)
