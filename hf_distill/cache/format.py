"""An offline teacher: top-k log-probabilities read from a logit cache, so one teacher run serves many students.

A cache is a directory written by :func:`hf_distill.cache.writer.collect_teacher_cache` (``hf-distill
cache-logits``)::

    manifest.json          format version, teacher, tokenizer/dataset fingerprints, k, temperature, dtypes, shards
    shard-00000.arrow      Arrow IPC stream of zstd-compressed record batches ("blocks" of ~1024 loss tokens),
    shard-00001.arrow      one row per example: key, num_tokens, and the example's token ids, log-probs and tail
    ...                    as byte planes (format 2, :mod:`hf_distill.cache.encoding`)

Rows hold the tokens that carry loss (next-token label not ``-100``), in sequence order. ``logprobs`` are the
teacher's ``log_softmax(logits / T)`` at its k most likely tokens, ``tail_logprob`` the log of the mass left over;
:class:`~hf_distill.losses.targets.SparseTeacherSignal` documents the loss built on them.

**Format 2** (what the collector writes; the manifest's ``format_version`` decides how a cache is read) stores token ids
at the ``ceil(log2 V)`` bits the vocabulary needs (``dtypes.token_ids``, e.g. ``uint18`` at 262,144) and log-probs
on a 1/1024-nat grid as gaps between the sorted values (``dtypes.logprobs = "grid1024"``; ``"float32"`` keeps them
exactly), with the tail in float32: 93 bytes per token at k = 32 on SmolLM2 (format 1: 132), 99 on Gemma-3 (198),
with a storage error below format 1's float16 (see the README's cache section, ``benchmarks/cache.py --fidelity``).
**Format 1** caches (one record batch: ``token_ids`` uint16/int32, ``logprobs`` float16/float32, ``tail_logprob``
float32 as list columns) are still read; any format-1 shard can be inspected with ``datasets.Dataset.from_file``.

**Keys.** An example is found by its content, not its position: its key is the first 8 bytes of BLAKE2b over its
tokenized ``input_ids`` and ``labels`` (see :func:`example_key`), computed from the examples the collator receives.
Shuffling, several epochs, gradient accumulation, samplers that shard batches across processes and dataloader
workers therefore need nothing special, and a row is never matched to the wrong example: a different tokenization,
truncation or loss mask gives a different key. The dataset fingerprint is a hash of the sorted set of keys; a
trainer accepts any dataset whose examples are all in the cache (a subset included), and names ``dataset_fingerprint``
in its error otherwise. Duplicate examples are stored once.

**Reads** are memory-mapped (``pyarrow.memory_map``): opening a cache keeps only the keys and an index in RAM
(about 24 bytes per example) and each batch decompresses and decodes just the blocks of its own rows (format 1:
copies its rows). Opening verifies every shard's sha256, which reads the whole cache once (about 1 s per GB on one
core); pass ``TeacherCache(path, verify=False)`` to check sizes only.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pyarrow as pa

from hf_distill.utils.fingerprint import fingerprint_bytes
from hf_distill.utils.io import sha256_file

logger = logging.getLogger(__name__)

FORMAT_NAME = "hf_distill.teacher_cache"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
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
    return fingerprint_bytes(np.unique(keys).astype("<i8").tobytes())


# The config fields that decide how examples are tokenized: recorded in the manifest, compared at training.
PREPARATION_FIELDS = ("max_length", "truncation_mode", "completion_only_loss", "assistant_only_loss",
                      "dataset_text_field", "chat_template_path")


def preparation_fields(args) -> dict:
    return {name: getattr(args, name, None) for name in PREPARATION_FIELDS}


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


def read_manifest(directory: Path, name: str = MANIFEST) -> dict | None:
    """The manifest ``directory/name`` (``name``: a rank's progress file while many processes collect), checked to be
    a cache manifest of a readable version; None when there is none."""
    path = directory / name
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT_NAME:
        raise TeacherCacheError(f"{path} is not a teacher-logit cache manifest (format {manifest.get('format')!r}).")
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise CacheMismatchError(
            "format_version",
            f"{directory} was written in cache format version {manifest.get('format_version')}, this hf_distill "
            f"reads versions {', '.join(map(str, READABLE_VERSIONS))}. Fix: re-collect the cache with this version "
            "(`hf-distill cache-logits`), or read it with the hf_distill that wrote it.",
        )
    return manifest
