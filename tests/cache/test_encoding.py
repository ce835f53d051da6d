"""Cache format v2's encoding (hf_distill.cache.encoding): exact ids and tails, log-probs within the grid's half step,
on odd shapes and every id width, decoded for any subset of examples at once."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from hf_distill.cache import encoding
from hf_distill.cache.encoding import (
    decode_rows,
    encode_example,
    encode_shard,
    read_index,
    token_id_dtype,
)


def _rows(vocab: int, k: int, lengths, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for n in lengths:
        ids = np.array([rng.choice(vocab, size=k, replace=False) for _ in range(n)], dtype=np.int64).reshape(n, k)
        logprobs = np.sort(rng.normal(-6, 4, size=(n, k)), axis=1)[:, ::-1].copy()  # (n, k), sorted, some > 0 is fine
        tail = rng.normal(-3, 2, size=n).astype(np.float32)
        if n:
            logprobs[0, -1], tail[0] = -np.inf, -np.inf  # a zero-mass last token and an empty tail
        rows.append((ids, logprobs, tail))
    return rows


def _decode(rows, picked, k, token_id_type, codec):
    planes = [encode_example(*rows[i], token_id_type=token_id_type, codec=codec) for i in picked]
    concatenated = [np.concatenate([example[c] for example in planes]) for c in range(len(planes[0]))]
    return decode_rows(concatenated, np.array([len(rows[i][2]) for i in picked]), k, token_id_type=token_id_type,
                       codec=codec)


@pytest.mark.parametrize("vocab, k", [(2, 1), (97, 7), (256, 5), (257, 3), (49152, 32), (262144, 11), (2**20 + 3, 6)])
@pytest.mark.parametrize("codec", ["grid1024", "float32"])
def test_round_trip_of_any_subset_of_examples_in_any_order(vocab, k, codec):
    token_id_type = token_id_dtype(vocab)
    rows = _rows(vocab, k, [5, 0, 13, 1, 7])
    picked = [2, 0, 4, 1, 2]  # repeated, out of order, with an empty example
    ids, logprobs, tail = _decode(rows, picked, k, token_id_type, codec)
    want_ids, want_lp, want_tail = (np.concatenate([rows[i][j] for i in picked]) for j in range(3))
    assert ids.dtype == np.int32 and ids.shape == (sum(len(rows[i][2]) for i in picked), k)
    assert np.array_equal(ids, want_ids)
    assert np.array_equal(tail, want_tail)  # float32 bits, -inf included
    floor = np.maximum(want_lp, encoding.LOGPROB_FLOOR)  # -inf is stored as the floor, as format 1's float16 did
    error = np.abs(logprobs.astype(np.float64) - floor)
    assert error.max() <= (2**-11 + 1e-9 if codec == "grid1024" else 4e-6 * np.abs(floor).max())
    assert logprobs[0, -1] == encoding.LOGPROB_FLOOR


def test_grid_is_at_least_as_precise_as_float16_below_minus_one_half():
    logprobs = -np.sort(np.random.default_rng(1).uniform(0.5, 60, size=(200, 64)), axis=1)  # (200, 64)
    ids = np.tile(np.arange(64), (200, 1))
    _, decoded, _ = decode_rows(encode_example(ids, logprobs, np.zeros(200), token_id_type="uint6", codec="grid1024"),
                                np.array([200]), 64, token_id_type="uint6", codec="grid1024")
    grid_error = np.abs(decoded - logprobs)
    float16_error = np.abs(logprobs.astype(np.float16).astype(np.float64) - logprobs)
    assert grid_error.max() <= 2**-11 + 1e-9
    assert grid_error.mean() < 0.5 * float16_error.mean()  # measured: 0.25 x


def test_token_ids_take_the_bits_the_vocabulary_needs():
    assert [token_id_dtype(v) for v in (2, 256, 257, 32000, 49152, 65536, 65537, 151936, 262144)] == [
        "uint1", "uint8", "uint9", "uint15", "uint16", "uint16", "uint17", "uint18", "uint18"]
    n, k = 10, 32
    rows = _rows(262144, k, [n])
    planes = encode_example(*rows[0], token_id_type="uint18", codec="grid1024")
    id_bytes = sum(len(plane) for plane in planes[:3])  # two byte planes and the 2-bit plane
    assert id_bytes == math.ceil(n * k * 18 / 8)


def test_unsorted_rows_are_stored_sorted_with_their_ids():
    ids = np.array([[4, 9, 1], [7, 3, 5]])
    logprobs = np.log(np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]))
    got_ids, got_lp, _ = decode_rows(encode_example(ids, logprobs, np.zeros(2), token_id_type="uint4", codec="float32"),
                                     np.array([2]), 3, token_id_type="uint4", codec="float32")
    assert got_ids.tolist() == [[9, 1, 4], [7, 5, 3]]
    np.testing.assert_allclose(np.exp(got_lp), [[0.6, 0.3, 0.1], [0.5, 0.3, 0.2]], rtol=1e-6)


def test_bad_rows_are_refused_with_a_clear_error():
    ids, logprobs = np.array([[1, 2]]), np.array([[-0.1, np.nan]])
    with pytest.raises(ValueError, match="NaN"):
        encode_example(ids, logprobs, np.zeros(1), token_id_type="uint4", codec="grid1024")
    with pytest.raises(ValueError, match=r"\[0, 2\*\*4\)"):
        encode_example(np.array([[1, 16]]), np.array([[-0.1, -1.0]]), np.zeros(1), token_id_type="uint4",
                       codec="grid1024")
    with pytest.raises(ValueError, match="codec"):
        encode_example(ids, np.array([[-0.1, -1.0]]), np.zeros(1), token_id_type="uint4", codec="float8")


def test_a_shard_is_indexed_by_its_schema_and_cut_into_blocks_of_about_block_tokens():
    rows = _rows(1000, 4, [300, 300, 300, 2000, 10, 10])
    keys = np.arange(6, dtype=np.int64) * 7 - 20
    shard_schema, blocks = encode_shard(keys, rows, token_id_type="uint10", codec="grid1024", block_tokens=700)
    assert [block.num_rows for block in blocks] == [2, 1, 1, 2]  # 600 | 300 | 2000 (alone) | 20
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, shard_schema, options=encoding.write_options()) as writer:
        for block in blocks:
            writer.write_batch(block)
    table = pa.ipc.open_stream(sink.getvalue()).read_all()  # a plain Arrow reader sees keys and token counts
    assert table.column("key").to_pylist() == keys.tolist()
    assert table.column("num_tokens").to_pylist() == [300, 300, 300, 2000, 10, 10]
    index_keys, counts, block_rows = read_index(table.schema)
    assert index_keys.tolist() == keys.tolist() and counts.tolist() == [300, 300, 300, 2000, 10, 10]
    assert block_rows.tolist() == [2, 1, 1, 2]
    with pytest.raises(ValueError, match="not a format-2 shard"):
        read_index(pa.schema([("key", pa.int64())]))
