"""Short content hashes: the one way hf_distill names "the same inputs" (a cache's dataset, a stage's recipe entry,
a demo stage's settings, a teacher's config), so a rerun can tell finished work from work to redo."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable


def fingerprint(value, length: int = 16, *, ensure_ascii: bool = True) -> str:
    """``sha256`` of ``value`` as canonical JSON (sorted keys; non-JSON values by ``str``), first ``length`` hex digits.

    Persisted fingerprints (cache manifests, cascade stage hashes) must never change, so the serialisation is fixed:
    ``ensure_ascii`` is JSON's default (``\\u`` escapes), which they were written with; the tokenizer fingerprint was
    written with ``ensure_ascii=False`` (raw UTF-8) and keeps it.

    >>> fingerprint({"b": 1, "a": [1, 2]}) == fingerprint({"a": [1, 2], "b": 1})
    True
    """
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=ensure_ascii)
    return fingerprint_bytes(text.encode(), length)


def fingerprint_bytes(data: bytes | Iterable[bytes], length: int = 16) -> str:
    """``sha256`` of ``data`` (or of its parts, concatenated, hashed as they come), first ``length`` hex digits."""
    digest = hashlib.sha256()
    for part in [data] if isinstance(data, (bytes, bytearray, memoryview)) else data:
        digest.update(part)
    return digest.hexdigest()[:length]
