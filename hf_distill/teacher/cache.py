"""An offline teacher: top-k log-probabilities read from a logit cache, so one teacher run serves many students.

A cache is a directory written by :func:`hf_distill.teacher.collect.collect_teacher_cache` (``hf-distill
cache-logits``)::

    manifest.json          format version, teacher, tokenizer/dataset fingerprints, k, temperature, dtypes, shards
    shard-00000.arrow      Arrow IPC stream, one row per example: key, num_tokens,
    shard-00001.arrow      token_ids (num_tokens x k, uint16 if the vocabulary fits, else int32),
    ...                    logprobs (num_tokens x k, float16), tail_logprob (num_tokens, float32)

Rows hold the tokens that carry loss (next-token label not ``-100``), in sequence order. ``logprobs`` are the
teacher's ``log_softmax(logits / T)`` at its k most likely tokens, ``tail_logprob`` the log of the mass left over;
:class:`~hf_distill.teacher.signals.SparseTeacherSignal` documents the loss built on them. Any shard can be inspected
with ``datasets.Dataset.from_file(path)``.

**Keys.** An example is found by its content, not its position: its key is the first 8 bytes of BLAKE2b over its
tokenized ``input_ids`` and ``labels`` (see :func:`example_key`), computed from the examples the collator receives.
Shuffling, several epochs, gradient accumulation, samplers that shard batches across processes and dataloader
workers therefore need nothing special, and a row is never matched to the wrong example: a different tokenization,
truncation or loss mask gives a different key. The dataset fingerprint is a hash of the sorted set of keys; a
trainer accepts any dataset whose examples are all in the cache (a subset included), and names ``dataset_fingerprint``
in its error otherwise. Duplicate examples are stored once.

**Reads** are memory-mapped (``pyarrow.memory_map``, zero-copy): opening a cache keeps only the keys and an index in
RAM (24 bytes per example) and each batch copies just its own rows. Opening verifies every shard's sha256, which
reads the whole cache once (about 1 s per GB on one core); pass ``TeacherCache(path, verify=False)`` to check sizes
only.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from hf_distill.teacher.signals import SparseTeacherSignal
from hf_distill.teacher.vocab import tokenizer_fingerprint

logger = logging.getLogger(__name__)

FORMAT_NAME = "hf_distill.teacher_cache"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CACHE_KEY = "teacher_cache_key"
"""Batch entry that :class:`KeyedCollator` adds: the ``(B,)`` int64 keys of the batch's examples."""

_FIX_SHARD = ("Fix: delete it and re-run the collection with the same arguments; it resumes and rewrites only that "
              "shard.")


class TeacherCacheError(ValueError):
    """A cache that cannot be read: missing, incomplete, truncated or corrupt."""


class CacheMismatchError(ValueError):
    """A cache made for another dataset, tokenizer, temperature or vocabulary. ``field`` names what differs."""

    def __init__(self, field: str, message: str):
        super().__init__(f"Teacher cache mismatch in `{field}`: {message}")
        self.field = field


# ------------------------------------------------------------------------------------------------------------------
# Keys and fingerprints
# ------------------------------------------------------------------------------------------------------------------


def example_key(input_ids, labels=None) -> int:
    """Stable int64 key of a tokenized example: BLAKE2b-64 over its lengths, ``input_ids`` and ``labels`` (int64)."""
    ids = np.asarray(input_ids, dtype=np.int64)
    digest = hashlib.blake2b(digest_size=8, person=b"hf_distill-key1")
    digest.update(np.array([len(ids), -1 if labels is None else len(labels)], dtype=np.int64).tobytes())
    digest.update(ids.tobytes())
    if labels is not None:
        digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    return int.from_bytes(digest.digest(), "little", signed=True)


def _list_rows(column: pa.ChunkedArray) -> Iterable[np.ndarray]:
    for chunk in column.chunks:
        offsets, values = chunk.offsets.to_numpy(), chunk.values.to_numpy(zero_copy_only=False).astype(np.int64)
        for start, end in zip(offsets[:-1], offsets[1:]):
            yield values[start:end]


def dataset_keys(dataset) -> tuple[np.ndarray, np.ndarray]:
    """Keys and lengths of every example of a tokenized map-style dataset, read column-wise from Arrow.

    Equivalent to ``[example_key(ex["input_ids"], ex.get("labels")) for ex in dataset]``, a few microseconds per
    example.
    """
    if "input_ids" not in dataset.column_names:
        raise ValueError(f"The dataset is not tokenized (columns: {dataset.column_names}); keys need `input_ids`.")
    columns = ["input_ids", "labels"] if "labels" in dataset.column_names else ["input_ids"]
    keys, lengths = [], []
    for table in dataset.select_columns(columns).with_format("arrow").iter(batch_size=4096):
        ids = _list_rows(table.column("input_ids"))
        labels = _list_rows(table.column("labels")) if "labels" in columns else itertools.repeat(None)
        for row_ids, row_labels in zip(ids, labels):
            keys.append(example_key(row_ids, row_labels))
            lengths.append(len(row_ids))
    return np.array(keys, dtype=np.int64), np.array(lengths, dtype=np.int64)


def keys_fingerprint(keys: np.ndarray) -> str:
    """Order-independent fingerprint of a set of examples: sha256 of their sorted unique keys."""
    return hashlib.sha256(np.unique(keys).astype("<i8").tobytes()).hexdigest()[:16]


@dataclass
class KeyedCollator:
    """Wraps a data collator and adds each example's cache key to the batch (under ``CACHE_KEY``).

    >>> collator = KeyedCollator(lambda examples: {"size": len(examples)})
    >>> batch = collator([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}])
    >>> batch["size"], batch[CACHE_KEY].shape
    (1, torch.Size([1]))
    """

    collator: Callable

    def __call__(self, examples: list[dict]) -> dict:
        keys = [example_key(example["input_ids"], example.get("labels")) for example in examples]
        batch = self.collator(examples)
        batch[CACHE_KEY] = torch.tensor(keys, dtype=torch.int64)
        return batch


# ------------------------------------------------------------------------------------------------------------------
# Files: checksums, atomic writes, shard verification
# ------------------------------------------------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on this platform
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: dict) -> None:
    """Write to a temporary name, fsync, then rename over ``path``: readers see the old file or the new one."""
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as file:
        json.dump(data, file, indent=1)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def verify_shard(directory: Path, entry: dict, checksum: bool = True) -> None:
    """Raise :class:`TeacherCacheError`, naming the shard and the fix, unless the file matches the manifest."""
    path = directory / entry["file"]
    if not path.is_file():
        raise TeacherCacheError(f"Shard {path} is missing. {_FIX_SHARD.replace('delete it and ', '')}")
    size = path.stat().st_size
    if size != entry["bytes"]:
        raise TeacherCacheError(
            f"Shard {path} is truncated or corrupt: {size} bytes, the manifest records {entry['bytes']}. {_FIX_SHARD}"
        )
    if checksum and sha256_file(path) != entry["sha256"]:
        raise TeacherCacheError(f"Shard {path} is corrupt: its sha256 differs from the manifest's. {_FIX_SHARD}")


def read_manifest(directory: Path) -> dict | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT_NAME:
        raise TeacherCacheError(f"{path} is not a teacher-logit cache manifest (format {manifest.get('format')!r}).")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise CacheMismatchError(
            "format_version",
            f"{directory} was written in cache format version {manifest.get('format_version')}, this hf_distill "
            f"reads version {FORMAT_VERSION}. Fix: re-collect the cache with this version (`hf-distill cache-logits`).",
        )
    return manifest


# ------------------------------------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------------------------------------


@dataclass
class _Shard:
    offsets: np.ndarray  # (n + 1,) token offsets of each example
    token_ids: np.ndarray  # (tokens, k), memory-mapped
    logprobs: np.ndarray  # (tokens, k), memory-mapped
    tail_logprob: np.ndarray  # (tokens,), memory-mapped
    table: pa.Table  # keeps the memory map alive


def _read_shard(path: Path, top_k: int) -> tuple[np.ndarray, _Shard]:
    table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()  # zero-copy views of the mapped file
    if table.column("key").num_chunks != 1:  # the collector writes one record batch; anything else is copied once
        table = table.combine_chunks()

    def column(name: str) -> pa.Array:
        return table.column(name).chunk(0)

    ids, logprobs, tail = column("token_ids"), column("logprobs"), column("tail_logprob")
    offsets = ids.offsets.to_numpy()
    shard = _Shard(
        offsets=offsets - offsets[0],
        token_ids=ids.values.values.to_numpy().reshape(-1, top_k)[offsets[0] : offsets[-1]],
        logprobs=logprobs.values.values.to_numpy().reshape(-1, top_k)[offsets[0] : offsets[-1]],
        tail_logprob=tail.values.to_numpy()[offsets[0] : offsets[-1]],
        table=table,
    )
    return column("key").to_numpy(), shard


class TeacherCache:
    """A teacher-logit cache opened for reading. See the module docstring for the layout.

    Args:
        path: the directory written by ``hf-distill cache-logits``.
        verify: check every shard's sha256 (reads the whole cache once). Sizes are always checked.
    """

    def __init__(self, path: str | os.PathLike, verify: bool = True):
        self.path = Path(path)
        manifest = read_manifest(self.path)
        if manifest is None:
            raise TeacherCacheError(
                f"No teacher cache at {self.path} (no {MANIFEST}). Fix: write one with `hf-distill cache-logits "
                f"--teacher TEACHER --dataset DATA --out {self.path}`."
            )
        if not manifest["complete"]:
            raise TeacherCacheError(
                f"The teacher cache at {self.path} is incomplete ({len(manifest['shards'])} of "
                f"{manifest['num_shards']} shards). Fix: re-run the collection with the same arguments; it resumes."
            )
        self.manifest = manifest
        keys, where = [], []
        self._shards: list[_Shard] = []
        for index, entry in enumerate(manifest["shards"]):
            verify_shard(self.path, entry, checksum=verify)
            shard_keys, shard = _read_shard(self.path / entry["file"], self.top_k)
            keys.append(shard_keys)
            where.append(np.stack([np.full(len(shard_keys), index), np.arange(len(shard_keys))], 1))
            self._shards.append(shard)
        keys = np.concatenate(keys) if keys else np.zeros(0, np.int64)
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]  # (examples,) sorted, for searchsorted
        self._where = (np.concatenate(where) if where else np.zeros((0, 2), np.int64))[order]  # (examples, 2)

    vocab_size = property(lambda self: self.manifest["vocab_size"])
    top_k = property(lambda self: self.manifest["top_k"])
    temperature = property(lambda self: self.manifest["temperature"])
    num_examples = property(lambda self: len(self._keys))

    def __repr__(self) -> str:
        return (f"TeacherCache({str(self.path)!r}, examples={self.num_examples}, k={self.top_k}, "
                f"temperature={self.temperature}, vocab={self.vocab_size})")

    def contains(self, keys: np.ndarray) -> np.ndarray:
        position = np.minimum(np.searchsorted(self._keys, keys), max(len(self._keys) - 1, 0))
        return self._keys[position] == keys if len(self._keys) else np.zeros(len(keys), bool)

    def read(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows of ``keys``, concatenated in order: token ids ``(N, k)``, log-probs ``(N, k)``, tail ``(N,)`` and the
        number of loss tokens of each example ``(len(keys),)``."""
        keys = np.asarray(keys, dtype=np.int64)
        found = self.contains(keys)
        if not found.all():
            raise TeacherCacheError(
                f"Example with cache key {keys[~found][0]} is not in the teacher cache at {self.path}. Its tokens or "
                "labels differ from every example the cache was collected on. Fix: collect the cache from this data, "
                "tokenized with the same settings (max_length, completion_only_loss, chat template)."
            )
        parts = []
        for shard_index, row in self._where[np.searchsorted(self._keys, keys)]:
            shard = self._shards[shard_index]
            start, end = shard.offsets[row], shard.offsets[row + 1]
            parts.append((shard.token_ids[start:end], shard.logprobs[start:end], shard.tail_logprob[start:end]))
        ids, logprobs, tail = (np.concatenate([part[i] for part in parts]) for i in range(3))
        return ids.astype(np.int32), logprobs, tail, np.array([len(part[2]) for part in parts], dtype=np.int64)

    def check(self, *, tokenizer=None, student_vocab_rows: int | None = None, temperature: float | None = None,
              datasets: dict | None = None, preparation: dict | None = None) -> None:
        """Raise :class:`CacheMismatchError` (naming the field) unless this cache fits the training run.

        ``preparation``: the run's tokenization settings (:func:`preparation_fields` of its config), compared with
        the recorded ones before the datasets, so a different ``max_length`` is named as such, with both values.
        """
        recorded = self.manifest.get("preparation") or {}
        for field, value in (preparation or {}).items():
            if field in recorded and recorded[field] != value:
                raise CacheMismatchError(
                    f"preparation.{field}",
                    f"the cache at {self.path} was collected with {field}={recorded[field]!r}, this run has "
                    f"{field}={value!r}: the examples are tokenized differently. Fix: train with "
                    f"{field}={recorded[field]!r}, or re-collect the cache with {field}={value!r}.",
                )
        if tokenizer is not None and tokenizer_fingerprint(tokenizer) != self.manifest["tokenizer_fingerprint"]:
            raise CacheMismatchError(
                "tokenizer_fingerprint",
                f"the cache at {self.path} holds token ids of a tokenizer with fingerprint "
                f"{self.manifest['tokenizer_fingerprint']}, the student's tokenizer has "
                f"{tokenizer_fingerprint(tokenizer)}. Fix: train with the tokenizer the cache was collected with, or "
                "collect a cache with this one.",
            )
        if student_vocab_rows is not None and student_vocab_rows < self.vocab_size:
            raise CacheMismatchError(
                "vocab_size",
                f"the cache covers {self.vocab_size} tokens but the student's output layer has {student_vocab_rows} "
                "rows. Fix: `model.resize_token_embeddings(len(tokenizer))` on the student.",
            )
        if temperature is not None and abs(temperature - self.temperature) > 1e-6 * max(1.0, abs(temperature)):
            raise CacheMismatchError(
                "temperature",
                f"the cache holds teacher log-probabilities at temperature {self.temperature}, but the training "
                f"temperature is {temperature}. Top-k log-probabilities cannot be re-tempered exactly (the tempered "
                f"mass of the tail is unknown). Fix: train with temperature={self.temperature}, or re-collect the "
                f"cache with `hf-distill cache-logits ... --temperature {temperature}`.",
            )
        for name, dataset in (datasets or {}).items():
            self._check_dataset(name, dataset)

    def _check_dataset(self, name: str, dataset) -> None:
        if not hasattr(dataset, "column_names") or not hasattr(dataset, "select_columns") or not hasattr(
            dataset, "__len__"
        ):
            logger.warning("%s is not a map-style Dataset: it is checked against the teacher cache batch by batch.",
                           name)
            return
        keys, _ = dataset_keys(dataset)
        missing = np.flatnonzero(~self.contains(keys))
        if len(missing):
            raise CacheMismatchError(
                "dataset_fingerprint",
                f"the cache at {self.path} was collected on a dataset with fingerprint "
                f"{self.manifest['dataset']['fingerprint']} ({self.manifest['dataset']['num_examples']} examples); "
                f"{name}, tokenized as this trainer tokenizes it, has fingerprint {keys_fingerprint(keys)} and "
                f"{len(missing)} of its {len(keys)} examples are not in the cache (first: row {missing[0]}). Fix: "
                "collect the cache from the same dataset with the same tokenization settings (max_length, "
                "completion_only_loss, chat template), e.g. `hf-distill cache-logits` with the arguments of this run.",
            )


# The config fields that decide how examples are tokenized: recorded in the manifest, compared at training.
PREPARATION_FIELDS = ("max_length", "truncation_mode", "completion_only_loss", "assistant_only_loss",
                      "dataset_text_field", "chat_template_path")


def preparation_fields(args) -> dict:
    return {name: getattr(args, name, None) for name in PREPARATION_FIELDS}


class CachedTeacher:
    """The cache's counterpart of :class:`~hf_distill.teacher.live.LiveTeacher`: yields sparse signals for a batch."""

    unwrapped = None  # no model to save, move or wrap

    def __init__(self, cache: TeacherCache):
        self.cache = cache

    def signal(
        self, inputs: dict, loss_mask: torch.Tensor, vocab_size: int, output_device: torch.device
    ) -> SparseTeacherSignal:
        """``loss_mask`` is ``(B, T-1)``: True where the next-token label at position t+1 carries loss."""
        if CACHE_KEY not in inputs:
            raise KeyError(
                f"The batch has no `{CACHE_KEY}`: wrap the data collator in `KeyedCollator` (DistillationTrainer does "
                "this when `teacher_cache` is set)."
            )
        keys = inputs[CACHE_KEY].cpu().numpy()
        ids, logprobs, tail, cached = self.cache.read(keys)
        counts = loss_mask.sum(1).cpu().numpy()
        rows_match = len(counts) == len(cached)  # False for padding-free batches (one row of several examples)
        if (rows_match and (counts != cached).any()) or counts.sum() != cached.sum():
            bad = int(np.flatnonzero(counts != cached)[0]) if rows_match else 0
            raise TeacherCacheError(
                f"Batch row {bad} has {counts[bad]} loss tokens but the teacher cache holds {cached[bad]} for it "
                f"(key {keys[bad]}): the collator builds different labels than during collection. Fix: train with the "
                "data collator and settings the cache was collected with."
            )
        return SparseTeacherSignal(
            torch.from_numpy(ids).to(output_device),
            torch.from_numpy(logprobs).to(output_device),
            torch.from_numpy(tail).to(output_device),
            vocab_size,
            self.cache.temperature,
        )
