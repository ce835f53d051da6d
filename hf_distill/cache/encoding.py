"""Cache format v2's encoding: pure numpy functions between a shard's rows and the Arrow record batches that hold them.

One record batch (a *block*) holds consecutive examples, about :data:`BLOCK_TOKENS` loss tokens; the IPC stream
compresses every buffer with zstd, so a read decompresses only the blocks it needs. Per example, each field is stored
as byte planes (``list<uint8>`` columns, one per byte of the value), because zstd finds the redundancy of a plane
(the high bytes of small numbers are mostly zero) and not that of interleaved bytes:

* **token ids** at the ``ceil(log2 V)`` bits the vocabulary needs: one plane per full byte, the remaining bits
  bit-packed (``uint18`` at Gemma-3's 262,144: two planes and a 2-bit plane; ``uint16`` at SmolLM2's 49,152).
* **log-probabilities**, codec ``grid1024`` (the default): rounded to multiples of 1/1024 nat, which the sorted top-k
  turns into non-negative gaps between neighbours (the first gap from 0), stored as uint32 planes. The error is at
  most 2^-11 nat, no more than float16's for any log-probability below -0.5, and its storage KL on real teachers is
  below float16's (``benchmarks/cache.py --fidelity``). Codec ``float32`` keeps the float32 bits exactly.
* **tail** (the log of the mass outside the top-k): float32 bits, exact (``-inf`` when the top-k is the vocabulary).

Naive equivalent of the default log-probability codec::

    gaps = np.diff(np.round(-logprobs * 1024), prepend=0)    # (n, k), >= 0 for sorted rows
    logprobs = -np.cumsum(gaps, axis=1) / 1024

Decoding works on a whole training batch at once (:func:`decode_rows`): concatenated planes, one vectorised pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

BLOCK_TOKENS = 1024
"""Loss tokens per record batch (at least one example each): the unit of decompression. Compression barely depends on
it (measured on SmolLM2: 256 tokens cost 1% more than 4096), a read decompresses one block per example."""

ZSTD_LEVEL = 9
LOGPROB_CODECS = {"float16": "grid1024", "float32": "float32"}
"""``logprob_dtype`` (what the user asks for: at least this precision) -> the codec the manifest records."""
GRID = 1024.0
LOGPROB_FLOOR = -65504.0  # log-probabilities below (-inf included) are stored as this, as format v1's float16 did
_WORD_PLANES = 4  # uint32 / float32 words: 4 byte planes


def token_id_dtype(vocab_size: int) -> str:
    """The packed id type the manifest records: ``"uint<bits>"``, ``bits = ceil(log2 vocab_size)`` (at least 1)."""
    return f"uint{max(1, math.ceil(math.log2(max(vocab_size, 2))))}"


def _id_bits(token_ids: str) -> int:
    if not token_ids.startswith("uint") or not token_ids[4:].isdigit() or not 1 <= int(token_ids[4:]) <= 31:
        raise ValueError(f"Unknown token id type {token_ids!r} in a format-2 cache (expected 'uint<bits>').")
    return int(token_ids[4:])


def _columns(token_ids: str) -> list[str]:
    full, rest = divmod(_id_bits(token_ids), 8)
    return ([f"token_ids_{i}" for i in range(full)] + (["token_ids_bits"] if rest else [])
            + [f"logprobs_{i}" for i in range(_WORD_PLANES)] + [f"tail_logprob_{i}" for i in range(_WORD_PLANES)])


def schema(token_ids: str) -> pa.Schema:
    """The Arrow schema of a format-2 shard: ``key``, ``num_tokens`` and one ``list<uint8>`` column per plane."""
    planes = [pa.field(name, pa.list_(pa.uint8())) for name in _columns(token_ids)]
    return pa.schema([pa.field("key", pa.int64()), pa.field("num_tokens", pa.int32()), *planes])


def _byte_planes(words: np.ndarray, count: int) -> list[np.ndarray]:
    """The ``count`` low byte planes of ``words`` (little-endian), each ``(words.size,)`` uint8."""
    as_bytes = np.ascontiguousarray(words.astype("<u4").reshape(-1)).view(np.uint8).reshape(-1, 4)
    return [np.ascontiguousarray(as_bytes[:, i]) for i in range(count)]


def _from_byte_planes(planes: Sequence[np.ndarray]) -> np.ndarray:
    """The inverse of :func:`_byte_planes`: uint32 words, the missing high bytes zero."""
    if len(planes) == 2:
        return np.stack(planes, axis=1).view("<u2").reshape(-1).astype(np.uint32)
    zeros = [np.zeros_like(planes[0])] * (4 - len(planes))
    return np.stack([*planes, *zeros], axis=1).view("<u4").reshape(-1)  # (n,)


def _logprob_words(logprobs: np.ndarray, codec: str) -> np.ndarray:
    logprobs = np.maximum(np.asarray(logprobs, dtype=np.float64), LOGPROB_FLOOR)  # (n, k); -inf -> the floor
    if codec == "float32":
        return logprobs.astype(np.float32).view(np.uint32)
    if codec != "grid1024":
        raise ValueError(f"Unknown log-probability codec {codec!r}; known: {sorted(set(LOGPROB_CODECS.values()))}.")
    gaps = np.diff(np.rint(-logprobs * GRID).astype(np.int64), axis=1, prepend=0)  # (n, k), >= 0: rows are sorted
    return gaps.astype(np.uint32)


def encode_example(token_ids: np.ndarray, logprobs: np.ndarray, tail: np.ndarray, *, token_id_type: str,
                   codec: str) -> list[np.ndarray]:
    """One example's planes, in :func:`schema` column order, from ids ``(n, k)``, log-probs ``(n, k)``, tail ``(n,)``.

    Each row is stored sorted by log-probability, highest first (top-k's own order)."""
    bits = _id_bits(token_id_type)
    full, rest = divmod(bits, 8)
    ids, logprobs = np.asarray(token_ids, dtype=np.int64), np.asarray(logprobs, dtype=np.float64)  # (n, k)
    if np.isnan(logprobs).any():
        raise ValueError("The teacher's log-probabilities hold NaN: nothing to cache.")
    if (np.diff(logprobs, axis=1) > 0).any():  # e.g. a server's top-k out of order: the loss ignores the order
        order = np.argsort(-logprobs, axis=1, kind="stable")
        ids, logprobs = np.take_along_axis(ids, order, 1), np.take_along_axis(logprobs, order, 1)
    ids = ids.reshape(-1)  # (n * k,)
    if len(ids) and (ids.min() < 0 or ids.max() >= 1 << bits):
        raise ValueError(f"Token ids must lie in [0, 2**{bits}) for {token_id_type}, got {ids.min()}..{ids.max()}.")
    planes = _byte_planes(ids & 0xFFFFFFFF, full)
    if rest:
        high = (ids >> (8 * full))[:, None] >> np.arange(rest) & 1  # (n * k, rest) bits, least significant first
        planes.append(np.packbits(high.astype(np.uint8).reshape(-1), bitorder="little"))
    planes += _byte_planes(_logprob_words(logprobs, codec), _WORD_PLANES)
    planes += _byte_planes(np.asarray(tail, dtype=np.float32).view(np.uint32), _WORD_PLANES)
    return planes


def encode_blocks(keys: np.ndarray, rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], *, token_id_type: str,
                  codec: str, block_tokens: int = BLOCK_TOKENS) -> list[pa.RecordBatch]:
    """Record batches of consecutive examples (``rows[i] = (ids, logprobs, tail)`` of ``keys[i]``), each cut after
    ``block_tokens`` loss tokens."""
    target = schema(token_id_type)
    counts = np.array([len(row[2]) for row in rows], dtype=np.int32)
    batches, start = [], 0
    while start < len(rows):
        end = start + 1 + int(np.searchsorted(np.cumsum(counts[start + 1 :]), block_tokens - counts[start], "right"))
        planes = [encode_example(*rows[i], token_id_type=token_id_type, codec=codec) for i in range(start, end)]
        columns = [pa.array(keys[start:end], pa.int64()), pa.array(counts[start:end], pa.int32())]
        for plane in range(len(target) - 2):
            parts = [example[plane] for example in planes]
            offsets = np.concatenate([[0], np.cumsum([len(part) for part in parts])]).astype(np.int32)
            columns.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(parts), pa.uint8())))
        batches.append(pa.RecordBatch.from_arrays(columns, schema=target))
        start = end
    return batches


_INDEX = (b"hf_distill.keys", b"hf_distill.num_tokens", b"hf_distill.block_rows")


def encode_shard(keys: np.ndarray, rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], *, token_id_type: str,
                 codec: str, block_tokens: int = BLOCK_TOKENS) -> tuple[pa.Schema, list[pa.RecordBatch]]:
    """The stream schema and record batches of one shard.

    The schema's metadata indexes the shard (keys, loss tokens per example, examples per block), so a reader finds
    any row without decompressing anything; the ``key`` and ``num_tokens`` columns repeat it for plain Arrow readers.
    """
    blocks = encode_blocks(keys, rows, token_id_type=token_id_type, codec=codec, block_tokens=block_tokens)
    index = (np.asarray(keys, "<i8"), np.array([len(row[2]) for row in rows], "<i4"),
             np.array([block.num_rows for block in blocks], "<i4"))
    metadata = {name: array.tobytes() for name, array in zip(_INDEX, index)}
    return schema(token_id_type).with_metadata(metadata), blocks


def read_index(shard_schema: pa.Schema) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys ``(n,)`` int64, loss tokens ``(n,)`` and examples per block ``(blocks,)`` from a shard's schema."""
    metadata = shard_schema.metadata or {}
    if any(name not in metadata for name in _INDEX):
        raise ValueError("The shard's schema has no hf_distill index: not a format-2 shard.")
    keys, counts, blocks = (np.frombuffer(metadata[name], dtype) for name, dtype in zip(_INDEX, ("<i8", "<i4", "<i4")))
    if len(keys) != len(counts) or blocks.sum() != len(keys):
        raise ValueError("The shard's hf_distill index is inconsistent.")
    return keys.astype(np.int64), counts.astype(np.int64), blocks.astype(np.int64)


def write_options() -> pa.ipc.IpcWriteOptions:
    return pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd", compression_level=ZSTD_LEVEL))


def decode_rows(planes: Sequence[np.ndarray], counts: np.ndarray, k: int, *, token_id_type: str,
                codec: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids ``(N, k)`` int32, log-probs ``(N, k)`` float32 and tail ``(N,)`` float32 of several examples.

    ``planes[c]`` is the concatenation, over the examples, of their bytes in column ``c`` of :func:`schema` (without
    ``key`` and ``num_tokens``); ``counts`` their numbers of loss tokens, ``N = counts.sum()``.
    """
    bits = _id_bits(token_id_type)
    full, rest = divmod(bits, 8)
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    ids = _from_byte_planes(planes[:full]).astype(np.int32) if full else np.zeros(total * k, np.int32)  # (N * k,)
    if rest:  # each example's bits are padded to a byte: keep the first counts * k * rest of each
        bit_stream = np.unpackbits(planes[full], bitorder="little")
        valid = counts * k * rest
        padded = (valid + 7) // 8 * 8
        if (valid != padded).any():
            position = np.arange(len(bit_stream)) - np.repeat(np.cumsum(padded) - padded, padded)
            bit_stream = bit_stream[position < np.repeat(valid, padded)]
        high = bit_stream.reshape(-1, rest)  # (N * k, rest), least significant bit first
        for bit in range(rest):
            ids |= high[:, bit].astype(np.int32) << (8 * full + bit)
    start = full + (1 if rest else 0)
    words = _from_byte_planes(planes[start : start + _WORD_PLANES]).reshape(total, k)  # (N, k)
    if codec == "float32":
        logprobs = words.view(np.float32)
    elif codec == "grid1024":
        logprobs = np.cumsum(words.view(np.int32), axis=1, dtype=np.int32).astype(np.float32) * np.float32(-1 / GRID)
    else:
        raise ValueError(f"Unknown log-probability codec {codec!r} in a format-2 cache.")
    tail = _from_byte_planes(planes[start + _WORD_PLANES :]).view(np.float32)
    return ids.reshape(total, k), logprobs, tail


def format1_table(keys: np.ndarray, rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], k: int,
                  logprob_dtype: str = "float16", vocab_size: int = 2**16) -> pa.Table:
    """Format 1's one-record-batch table (what hf_distill 0.1 wrote, uncompressed): ids uint16 (int32 above 65,536
    tokens), log-probs float16/float32, tail float32, as list columns. For tests, benchmarks and conversions."""
    np_lp, pa_lp = {"float16": (np.float16, pa.float16()), "float32": (np.float32, pa.float32())}[logprob_dtype]
    counts = np.array([len(row[2]) for row in rows], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    ids = np.concatenate([row[0] for row in rows]).astype(np.uint16 if vocab_size <= 2**16 else np.int32).reshape(-1)
    logprobs = np.concatenate([row[1] for row in rows]).clip(np.finfo(np_lp).min, None).astype(np_lp).reshape(-1)
    tail = np.concatenate([row[2] for row in rows]).astype(np.float32)
    return pa.table({
        "key": pa.array(keys, pa.int64()),
        "num_tokens": pa.array(counts, pa.int32()),
        "token_ids": pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(pa.array(ids), k)),
        "logprobs": pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(pa.array(logprobs, pa_lp), k)),
        "tail_logprob": pa.ListArray.from_arrays(offsets, pa.array(tail, pa.float32())),
    })
