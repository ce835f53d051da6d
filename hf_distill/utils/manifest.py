"""Resumable work in numbered shards, recorded in a JSON manifest: the common part of the teacher-logit cache and
trace collection.

    manifest = ShardManifest.open(out / "manifest.json", fields, mismatch=MyMismatchError)
    done = manifest.finished(check)             # recorded shards that are still intact, by index
    for index in range(num_shards):
        if index not in done:
            manifest.record(write_shard(index))  # each finished shard is recorded at once, atomically
    manifest.gather(num_shards)                  # the final manifest (with what other processes recorded)

The manifest's identifying ``fields`` (format, teacher, data, settings) must equal this run's for it to resume; the
first field that differs is named. Shards are written atomically (:func:`hf_distill.utils.io.atomic_path`) before
they are recorded, so a crash costs at most the shard in progress.

**Many processes** (``torchrun`` / ``accelerate launch --num_processes N``, read from ``RANK`` and ``WORLD_SIZE``:
:class:`WorkShare`): shard ``i`` is rank ``i % N``'s. Each rank records its shards in its own progress file,
``manifest.rank-<r>.json`` beside the manifest (no two processes ever write one file), and counts as finished the
shards any progress file records, so a resumed run, with any number of processes, redoes only what no file records.
At the end (:meth:`ShardManifest.gather`) rank 0 waits until the progress files together record every shard, writes
the one ``manifest.json`` a single process would have written and removes the progress files; the other ranks wait
for that manifest. The processes synchronise through these files only: no collective call, whose count could differ
between ranks (one with no shard left) and whose timeout (30 min for gloo) a long, uneven collection would exceed.
Every rank must see the same output directory (one machine, or a shared filesystem across nodes)::

    manifest = ShardManifest.open(out / "manifest.json", fields, mismatch=..., share=WorkShare.from_env())
    done = manifest.finished(check)
    for index in range(num_shards):
        if manifest.share.owns(index) and index not in done:
            manifest.record(write_shard(index))
    merged = manifest.gather(num_shards)      # every rank: the merged manifest, once all shards are recorded
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class WorkShare:
    """This process's part of work spread over ``world_size`` processes: shard ``i`` is rank ``i % world_size``'s
    (round-robin: the ranks finish together even when later shards are slower)."""

    rank: int = 0
    world_size: int = 1

    def __post_init__(self):
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank {self.rank} of {self.world_size}")

    @classmethod
    def from_env(cls) -> WorkShare:
        """What a launcher (torchrun, ``accelerate launch``, ``srun`` with torch's variables) set: ``RANK`` and
        ``WORLD_SIZE``; one process without them."""
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)))

    def owns(self, index: int) -> bool:
        return index % self.world_size == self.rank

    def prefix(self) -> str:
        """``"rank 1/4: "`` for log lines; empty in a single process."""
        return f"rank {self.rank}/{self.world_size}: " if self.world_size > 1 else ""


def progress_path(path: Path, rank: int) -> Path:
    """Rank ``rank``'s progress file beside the manifest ``path``: ``manifest.rank-<rank>.json``."""
    return path.with_name(f"{path.stem}.rank-{rank}{path.suffix}")


def progress_files(path: Path) -> list[Path]:
    """Every rank's progress file beside ``path`` (of this run or of an interrupted one with another world size)."""
    return sorted(path.parent.glob(f"{path.stem}.rank-*{path.suffix}"))


class ShardManifest:
    """``data``: this process's manifest as a dict (its ``"shards"``: one entry per finished shard, with an
    ``"index"``); ``share``: which shards are this process's. In a single process ``progress`` is ``path``."""

    def __init__(self, path: str | Path, data: dict, write: Callable[[Path, dict], None] = write_json_atomic, *,
                 share: WorkShare = WorkShare(), read: Callable[[Path], dict | None] = _read_json,
                 check: Callable[[dict], None] = lambda data: None, shard_folders: Iterable[str | Path] = ()):
        self.path, self.data, self._write, self.share = Path(path), data, write, share
        self.progress = self.path if share.world_size == 1 else progress_path(self.path, share.rank)
        self._read, self._check, self._folders = read, check, [Path(f) for f in shard_folders]
        self._others: dict[int, list[dict]] = {}  # what the other progress files and the manifest record
        self._redo: tuple[set[int], Callable[[dict], bool] | None] = (set(), None)  # rejected by `finished`, its check

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
        share: WorkShare | None = None,
    ) -> ShardManifest:
        """The manifest at ``path`` if it was written with these ``fields``, else a new one written now.

        ``mismatch(field, old, new)`` is raised for the first field (dotted path) that differs, in the manifest or
        in any rank's progress file. A new manifest is ``{**fields, **new, "shards": []}``. ``read`` reads (and may
        check) an existing one, None when there is none. In a single process, what interrupted writes left beside
        the manifest and in ``shard_folders`` is removed first (under many processes, by rank 0 in :meth:`gather`,
        once no rank is writing). ``share``: this process's part (default: :meth:`WorkShare.from_env`).
        """
        path, share = Path(path), share or WorkShare.from_env()
        folders = [path.parent, *shard_folders]
        if share.world_size == 1:
            for folder in folders:
                remove_partial(folder)

        def check(data: dict) -> None:
            difference = first_difference(data, fields)
            if difference:
                raise mismatch(*difference)

        manifest = cls(path, {}, write, share=share, read=_vanishing(read), check=check, shard_folders=folders[1:])
        own = manifest._read(manifest.progress)
        if own is None:
            manifest.data = {**fields, **(new or {}), "shards": []}
            if share.world_size == 1:  # a rank's file is written at its first shard: a rank with none writes none
                manifest.save()
        else:
            check(own)
            manifest.data = own
        manifest._others = manifest._recorded_elsewhere()
        return manifest

    def _recorded_elsewhere(self) -> dict[int, list[dict]]:
        """The entries that the other progress files and the merged manifest record, by index (each file checked
        against ``fields``). Progress files are read first: rank 0 writes the merged manifest before removing them."""
        found: dict[int, list[dict]] = {}
        for path in [*progress_files(self.path), self.path]:
            data = None if path == self.progress else self._read(path)
            if data is not None:
                self._check(data)
                for entry in data["shards"]:
                    found.setdefault(entry["index"], []).append(entry)
        return found

    def _all_recorded(self, usable: Callable[[int, dict], bool] = lambda index, entry: True) -> dict[int, dict]:
        """One entry per recorded index (this process's own first), the first that ``usable`` accepts."""
        candidates = {index: list(entries) for index, entries in self._others.items()}
        for entry in self.data["shards"]:
            candidates.setdefault(entry["index"], []).insert(0, entry)
        recorded = {}
        for index, entries in sorted(candidates.items()):
            entry = next((e for e in entries if usable(index, e)), None)
            if entry is not None:
                recorded[index] = entry
        return recorded

    def finished(self, check: Callable[[dict], bool] = lambda entry: True) -> dict[int, dict]:
        """The recorded shards (by any rank), by index, that ``check(entry)`` keeps: it returns False for one to redo
        and raises for one that must not be built on. All are checked before any work starts."""
        kept = self._all_recorded(lambda index, entry: check(entry))
        self._redo = {index for index in self._all_recorded() if index not in kept}, check
        return kept

    def record(self, entry: dict) -> None:
        """Record a finished shard (replacing an entry of the same index) and rewrite the progress file atomically."""
        others = [e for e in self.data["shards"] if e["index"] != entry["index"]]
        self.data["shards"] = sorted([*others, entry], key=lambda e: e["index"])
        self.save()

    def save(self, **updates) -> None:
        """Set ``updates`` (e.g. ``complete=True``) and rewrite the manifest (the progress file) atomically."""
        self.data.update(updates)
        self._write(self.progress, self.data)

    def gather(self, num_shards: int, finish: Callable[[list[dict]], dict] | None = None, *, poll: float = 0.5,
               log: Callable[[str], None] | None = None, log_every: float = 60.0) -> dict:
        """Every rank calls this after its own shards; returns the merged manifest once it records shards
        ``0..num_shards-1``, with ``finish(shards)`` (e.g. ``{"complete": True}``) set in it.

        Rank 0 waits until the progress files together record every shard (a shard that :meth:`finished` found to
        redo counts once its file passes the check again), then writes ``path`` in one atomic write, removes the
        progress files and what interrupted writes left, and carries on with ``path`` as its manifest; the other
        ranks wait for that file (and then remove their own progress file, should they have written it after rank 0
        merged; they wait for a manifest holding their own entries). ``log`` hears which shards are missing every
        ``log_every`` seconds of waiting. A rank that died is the launcher's to stop (torchrun stops the others).
        """
        redo, check = self._redo

        def usable(index: int, entry: dict) -> bool:
            if index not in redo:
                return True
            try:
                return bool(check(entry))
            except Exception:  # the stale entry of a shard being redone: wait for the new one
                return False

        wanted, began, last_log = set(range(num_shards)), time.monotonic(), time.monotonic()
        while True:
            if self.share.rank == 0:
                self._others = self._recorded_elsewhere()
                shards = self._all_recorded(usable)
            else:
                merged = self._read(self.path)
                shards = {e["index"]: e for e in merged["shards"]} if merged is not None else {}
                # a manifest merged before this rank's (re)done shards is an older run's: not the one to wait for
                own = {entry["index"]: entry for entry in self.data["shards"]}
                shards = {i: e for i, e in shards.items() if own.get(i, e) == e}
            missing = sorted(wanted - set(shards))
            if not missing:
                break
            if log is not None and time.monotonic() - last_log >= log_every:
                last_log = time.monotonic()
                owners = sorted({index % self.share.world_size for index in missing})
                log(f"{self.share.prefix()}waiting ({time.monotonic() - began:.0f} s) for {len(missing)} shard(s) of "
                    f"rank(s) {owners}: {missing[:8]}{' ...' if len(missing) > 8 else ''}. Every rank of the launch "
                    "must run this collection (a call made on the main process only waits forever: pass "
                    "share=WorkShare() there to collect everything in it)")
            time.sleep(poll)
        if self.share.rank != 0:
            if self.progress != self.path:
                self.progress.unlink(missing_ok=True)
            return merged
        entries = [shards[index] for index in sorted(wanted)]
        self.data = {**self.data, "shards": entries, **(finish(entries) if finish else {})}
        self._write(self.path, self.data)
        for stale in progress_files(self.path):
            stale.unlink(missing_ok=True)
        if self.share.world_size > 1:
            for folder in (self.path.parent, *self._folders):
                remove_partial(folder)
        self.progress, self._others = self.path, {}
        return self.data


def _vanishing(read: Callable[[Path], dict | None]) -> Callable[[Path], dict | None]:
    """``read``, with a file that another rank removed meanwhile read as absent."""

    def tolerant(path: Path) -> dict | None:
        try:
            return read(path)
        except FileNotFoundError:
            return None

    return tolerant
