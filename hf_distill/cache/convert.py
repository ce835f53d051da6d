"""Rewrite a teacher-logit cache in another format version, without the teacher: a format-1 cache upgraded to
format 2 (about 30% smaller at k = 32), or a format-1 copy of a new cache for an older hf_distill.

    python -m hf_distill.cache.convert OLD_CACHE NEW_CACHE            # to format 2, log-probs on the 1/1024 grid

The examples, shards, keys and fingerprints stay as they are, so the new cache passes the same
:meth:`~hf_distill.cache.reader.TeacherCache.check`; only ``format_version``, ``dtypes`` and the shard entries change.
Converting float16 log-probs to the grid adds at most 2^-11 nat of error to float16's.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from hf_distill.cache.encoding import (
    LOGPROB_CODECS,
    encode_shard,
    format1_table,
    token_id_dtype,
    write_options,
)
from hf_distill.cache.format import FORMAT_VERSION, MANIFEST, READABLE_VERSIONS
from hf_distill.cache.reader import TeacherCache
from hf_distill.utils.io import atomic_path, sha256_file, write_json_atomic


def _write(path: Path, keys: np.ndarray, rows: list, manifest: dict, version: int, logprob_dtype: str) -> None:
    if version == 1:
        table = format1_table(keys, rows, manifest["top_k"], logprob_dtype, manifest["vocab_size"])
        schema, batches = table.schema, table.to_batches()
        options = pa.ipc.IpcWriteOptions()
    else:
        schema, batches = encode_shard(keys, rows, token_id_type=token_id_dtype(manifest["vocab_size"]),
                                       codec=LOGPROB_CODECS[logprob_dtype])
        options = write_options()
    with atomic_path(path) as tmp, open(tmp, "wb") as file, pa.ipc.new_stream(file, schema, options=options) as out:
        for batch in batches:
            out.write_batch(batch)


def convert_cache(source: str | os.PathLike | TeacherCache, destination: str | os.PathLike,
                  format_version: int = FORMAT_VERSION, logprob_dtype: str = "float16") -> dict:
    """Write ``source`` (a cache directory or an open cache) to the empty directory ``destination`` in
    ``format_version``, log-probs stored at ``logprob_dtype`` (``"float16"`` or ``"float32"``); returns the manifest."""
    if format_version not in READABLE_VERSIONS:
        raise ValueError(f"format_version must be one of {READABLE_VERSIONS}, got {format_version}.")
    if logprob_dtype not in LOGPROB_CODECS:
        raise ValueError(f"logprob_dtype must be one of {sorted(LOGPROB_CODECS)}, got {logprob_dtype!r}.")
    cache = source if isinstance(source, TeacherCache) else TeacherCache(source)
    out = Path(destination)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty. Fix: pass a new directory for the converted cache.")
    manifest = {**cache.manifest, "format_version": format_version, "shards": []}
    vocab = manifest["vocab_size"]
    manifest["dtypes"] = (
        {"token_ids": "uint16" if vocab <= 2**16 else "int32", "logprobs": logprob_dtype, "tail_logprob": "float32"}
        if format_version == 1 else
        {"token_ids": token_id_dtype(vocab), "logprobs": LOGPROB_CODECS[logprob_dtype], "tail_logprob": "float32"}
    )
    for index, entry in enumerate(cache.manifest["shards"]):
        rows_of_shard = cache._where[:, 0] == index
        keys = cache._keys[rows_of_shard][np.argsort(cache._where[rows_of_shard, 1])]  # in the shard's order
        ids, logprobs, tail, counts = cache.read(keys)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        rows = [(ids[a:b], logprobs[a:b].astype(np.float64), tail[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        path = out / entry["file"]
        _write(path, keys, rows, manifest, format_version, logprob_dtype)
        manifest["shards"].append({**entry, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("destination")
    parser.add_argument("--format_version", type=int, default=FORMAT_VERSION, choices=READABLE_VERSIONS)
    parser.add_argument("--logprob_dtype", default="float16", choices=sorted(LOGPROB_CODECS))
    args = parser.parse_args(argv)
    manifest = convert_cache(args.source, args.destination, args.format_version, args.logprob_dtype)
    size = sum(shard["bytes"] for shard in manifest["shards"])
    tokens = sum(shard["num_tokens"] for shard in manifest["shards"])
    print(f"Wrote {args.destination}: format {args.format_version}, {size / max(tokens, 1):.1f} bytes/token.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
