"""Reading a teacher-logit cache: :class:`TeacherCache` (memory-mapped shards, checked against the training run) and
:class:`CachedTeacher`, which yields the same sparse signals a live teacher would (see :mod:`hf_distill.cache.format`
for the layout and the keys)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from hf_distill.cache.encoding import decode_rows, read_index
from hf_distill.cache.format import (
    _FIX_SHARD,
    CACHE_KEY,
    MANIFEST,
    CacheMismatchError,
    TeacherCacheError,
    dataset_keys,
    keys_fingerprint,
    read_manifest,
    verify_shard,
)
from hf_distill.losses.targets import SparseTeacherSignal
from hf_distill.teacher.vocab import tokenizer_fingerprint

logger = logging.getLogger(__name__)


@dataclass
class _Shard:
    """A format-1 shard: the whole shard as zero-copy arrays of the mapped file."""

    offsets: np.ndarray  # (n + 1,) token offsets of each example
    token_ids: np.ndarray  # (tokens, k), memory-mapped
    logprobs: np.ndarray  # (tokens, k), memory-mapped
    tail_logprob: np.ndarray  # (tokens,), memory-mapped
    table: pa.Table  # keeps the memory map alive

    def rows(self, rows: np.ndarray) -> tuple[np.ndarray, ...]:
        parts = [(self.token_ids[a:b], self.logprobs[a:b], self.tail_logprob[a:b])
                 for a, b in zip(self.offsets[rows], self.offsets[rows + 1])]
        return tuple(np.concatenate([part[i] for part in parts]) for i in range(3))


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


class _BlockShard:
    """A format-2 shard (:mod:`hf_distill.cache.encoding`): the index from the stream's schema, and one IPC message
    per block, a zero-copy view of the mapped file that is decompressed only when a batch needs one of its rows."""

    def __init__(self, path: Path):
        reader = pa.ipc.MessageReader.open_stream(pa.memory_map(str(path)))
        try:
            self.schema = pa.ipc.read_schema(reader.read_next_message())
            self.keys, self.counts, block_rows = read_index(self.schema)
            self.messages = list(reader)  # reads message headers only; the bodies stay in the map
        except (pa.ArrowException, ValueError, StopIteration) as error:
            raise TeacherCacheError(f"Shard {path} cannot be read as a format-2 shard ({error}). "
                                    f"{_FIX_SHARD}") from error
        if len(self.messages) != len(block_rows):
            raise TeacherCacheError(f"Shard {path} holds {len(self.messages)} blocks, its index {len(block_rows)}. "
                                    f"{_FIX_SHARD}")
        starts = np.cumsum(block_rows) - block_rows
        self.block = np.repeat(np.arange(len(block_rows)), block_rows)  # (n,) block of each row
        self.row_in_block = np.arange(len(self.keys)) - starts[self.block]  # (n,)
        self.path = path

    def planes(self, block: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(offsets, bytes)`` of each plane column of ``block``, decompressed."""
        try:
            batch = pa.ipc.read_record_batch(self.messages[block], self.schema)
        except pa.ArrowException as error:
            raise TeacherCacheError(f"Block {block} of shard {self.path} is corrupt ({error}). {_FIX_SHARD}") from error
        return [(column.offsets.to_numpy(), column.values.to_numpy()) for column in batch.columns[2:]]


def _read_blocks(shards: list[_BlockShard], where: np.ndarray, k: int, dtypes: dict) -> tuple[np.ndarray, ...]:
    """The rows ``where`` (``(B, 2)`` shard, row) of format-2 shards, decoded in one vectorised pass."""
    decompressed, parts, counts = {}, [], []
    for shard_index, row in where:
        shard = shards[shard_index]
        block = (shard_index, shard.block[row])
        if block not in decompressed:  # each block of the batch is decompressed once
            decompressed[block] = shard.planes(block[1])
        position = shard.row_in_block[row]
        parts.append([plane[offsets[position] : offsets[position + 1]] for offsets, plane in decompressed[block]])
        counts.append(shard.counts[row])
    planes = [np.concatenate([part[c] for part in parts]) for c in range(len(parts[0]))]
    return decode_rows(planes, np.array(counts), k, token_id_type=dtypes["token_ids"], codec=dtypes["logprobs"])


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
                f"--teacher_model_name_or_path TEACHER --dataset_name DATA --output_dir {self.path}`."
            )
        if not manifest["complete"]:
            raise TeacherCacheError(
                f"The teacher cache at {self.path} is incomplete ({len(manifest['shards'])} of "
                f"{manifest['num_shards']} shards). Fix: re-run the collection with the same arguments; it resumes."
            )
        self.manifest = manifest
        keys, where = [], []
        self._shards: list[_Shard | _BlockShard] = []
        for index, entry in enumerate(manifest["shards"]):
            verify_shard(self.path, entry, checksum=verify)
            if self.format_version == 1:
                shard_keys, shard = _read_shard(self.path / entry["file"], self.top_k)
            else:
                shard = _BlockShard(self.path / entry["file"])
                shard_keys = shard.keys
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
    format_version = property(lambda self: self.manifest["format_version"])

    def __repr__(self) -> str:
        return (f"TeacherCache({str(self.path)!r}, examples={self.num_examples}, k={self.top_k}, "
                f"temperature={self.temperature}, vocab={self.vocab_size})")

    def contains(self, keys: np.ndarray) -> np.ndarray:
        position = np.minimum(np.searchsorted(self._keys, keys), max(len(self._keys) - 1, 0))
        return self._keys[position] == keys if len(self._keys) else np.zeros(len(keys), bool)

    def read(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Rows of ``keys``, concatenated in order: token ids ``(N, k)`` int32, log-probs ``(N, k)`` (float32; float16
        from a format-1 float16 cache), tail ``(N,)`` float32 and the number of loss tokens of each example
        ``(len(keys),)``."""
        keys = np.asarray(keys, dtype=np.int64)
        if keys.size == 0:  # nothing to read (e.g. a prefetch of no examples): empty arrays, not an error
            k = self.top_k
            return np.zeros((0, k), np.int32), np.zeros((0, k), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64)
        found = self.contains(keys)
        if not found.all():
            raise TeacherCacheError(
                f"Example with cache key {keys[~found][0]} is not in the teacher cache at {self.path}. Its tokens or "
                "labels differ from every example the cache was collected on. Fix: collect the cache from this data, "
                "tokenized with the same settings (max_length, completion_only_loss, chat template)."
            )
        where = self._where[np.searchsorted(self._keys, keys)]  # (B, 2) shard, row
        if self.format_version == 1:
            parts = [self._shards[shard].rows(np.array([row])) for shard, row in where]
            ids, logprobs, tail = (np.concatenate([part[i] for part in parts]) for i in range(3))
            return ids.astype(np.int32), logprobs, tail, np.array([len(part[2]) for part in parts], dtype=np.int64)
        ids, logprobs, tail = _read_blocks(self._shards, where, self.top_k, self.manifest["dtypes"])
        return ids, logprobs, tail, np.array([self._shards[shard].counts[row] for shard, row in where], np.int64)

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
