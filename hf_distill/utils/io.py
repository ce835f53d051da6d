"""Writing files so that a crash never leaves a half-written one: every durable write in hf_distill goes through here.

The rule: write under a temporary name in the same folder, fsync, rename over the target (atomic on POSIX), fsync
the folder. A reader then sees the old file or the new one, never a torn one, and a killed run resumes from what is
complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(directory: str | os.PathLike) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on this platform
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path`` for the caller (or a library: ``savefig``, ``pq.write_table``) to write;
    on success it is fsynced and renamed over ``path``, on error removed.

    The naive version, which a crash can leave torn: ``write(path)``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb") as file:
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fsync_dir(path.parent)


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | os.PathLike, data) -> None:
    write_text_atomic(path, json.dumps(data, indent=1))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yields an empty staging folder beside ``path``; on success it replaces ``path`` whole (a model folder is
    complete or absent), on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp", dir=path.parent))
    os.chmod(staging, 0o755)  # mkdtemp makes it private; the finished folder is an ordinary one
    try:
        yield staging
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
        fsync_dir(path.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_partial(folder: str | os.PathLike) -> None:
    """Delete what writes killed half-way (``kill -9``: no ``finally`` ran) left in ``folder``: the hidden
    ``.NAME.tmp*`` files of :func:`atomic_path` and folders of :func:`atomic_dir`. Finished files are never touched."""
    for stale in Path(folder).glob(".*.tmp*"):
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
