"""Short content hashes: the one way hf_distill names "the same inputs" (a cache's dataset, a stage's recipe entry,
a demo stage's settings, a teacher's config), so a rerun can tell finished work from work to redo."""

from __future__ import annotations

import hashlib
import json


def fingerprint(value, length: int = 16) -> str:
    """``sha256`` of ``value`` as canonical JSON (sorted keys; non-JSON values by ``str``), first ``length`` hex digits.

    >>> fingerprint({"b": 1, "a": [1, 2]}) == fingerprint({"a": [1, 2], "b": 1})
    True
    """
    return fingerprint_bytes(json.dumps(value, sort_keys=True, default=str, ensure_ascii=False).encode(), length)


def fingerprint_bytes(data: bytes, length: int = 16) -> str:
    return hashlib.sha256(data).hexdigest()[:length]
