"""Workarounds for the libraries underneath (hf_distill._compat)."""

from __future__ import annotations

import logging
import subprocess
import sys

from conftest import subprocess_env


def test_commands_print_no_bitsandbytes_kernel_note():
    result = subprocess.run([sys.executable, "-c", "import hf_distill.cli.main, hf_distill, peft, bitsandbytes"],
                            capture_output=True, text=True, env=subprocess_env())
    assert result.returncode == 0, result.stderr
    assert "gemm_4bit_forward" not in result.stderr


def test_the_kernel_note_filter_drops_that_note_only():
    from hf_distill._compat import silence_bitsandbytes_kernel_note

    silence_bitsandbytes_kernel_note()
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "no module")
        logger.warning("something else went wrong")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["something else went wrong"]
