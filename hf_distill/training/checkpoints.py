"""Checkpoints that a crash or a full disk cannot turn into a bad resume.

`Trainer` writes ``checkpoint-N/`` in place (weights, optimizer, scheduler, RNG states) and ``trainer_state.json``
last, and ``resume_from_checkpoint=True`` picks the highest ``N`` whatever its state. A run killed or out of disk in
the middle of a save therefore leaves a directory that looks like the newest checkpoint but cannot be resumed from.
Two rules fix that without changing the on-disk format:

* a checkpoint is complete when its ``trainer_state.json`` exists (written after everything else); resuming with
  ``True`` takes the newest *complete* one and says which half-written ones it skipped;
* a save that fails with an ``OSError`` (``ENOSPC``, quota, I/O error) removes its half-written directory, so the
  previous checkpoints stay the newest, and raises an error that says what to do.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
from pathlib import Path

from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

logger = logging.getLogger(__name__)

TRAINER_STATE = "trainer_state.json"  # transformers.trainer.TRAINER_STATE_NAME: the last file a save writes
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


def is_complete(checkpoint: str | os.PathLike) -> bool:
    return (Path(checkpoint) / TRAINER_STATE).is_file()


def last_complete_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest ``checkpoint-N`` under ``output_dir`` whose save finished, or None."""
    directory = Path(output_dir)
    if not directory.is_dir():
        return None
    found = sorted(
        ((int(match.group(1)), path) for path in directory.iterdir()
         if path.is_dir() and (match := _CHECKPOINT.match(path.name))),
        reverse=True,
    )
    for _, path in found:
        if is_complete(path):
            return str(path)
        logger.warning("Skipping %s: it has no %s, so its save never finished (the run was killed or ran out of "
                       "disk while writing it). Delete it to silence this warning.", path, TRAINER_STATE)
    return None


def resolve_resume(resume_from_checkpoint: str | bool | None, output_dir: str) -> str | bool | None:
    """``True`` -> the newest complete checkpoint (an error naming the fix if there is none); anything else as is."""
    if resume_from_checkpoint is not True:
        return resume_from_checkpoint
    checkpoint = last_complete_checkpoint(output_dir)
    if checkpoint is None:
        raise ValueError(
            f"resume_from_checkpoint=True, but {output_dir} holds no complete checkpoint-N directory (one with "
            f"{TRAINER_STATE}). Fix: pass the path of a checkpoint, or start without resume_from_checkpoint (set "
            "save_strategy/save_steps so that the next run can resume)."
        )
    return checkpoint


def discard_failed_save(checkpoint: str | os.PathLike, error: OSError) -> OSError:
    """Remove a half-written checkpoint and return the error to raise instead of ``error``."""
    shutil.rmtree(checkpoint, ignore_errors=True)
    reason = "the disk is full" if error.errno in (errno.ENOSPC, errno.EDQUOT) else f"writing failed ({error})"
    return OSError(
        error.errno,
        f"Saving {checkpoint} failed: {reason}. The half-written checkpoint was removed; earlier checkpoints are "
        "intact. Fix: free space (or lower `save_total_limit` so that old checkpoints are rotated out), then rerun "
        "with resume_from_checkpoint=True to continue from the last complete checkpoint.",
    )
