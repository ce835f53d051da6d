"""Where hf_distill works around the behaviour of the libraries it builds on (one place, each with its reason)."""

from __future__ import annotations

import logging

_BNB_CPU_OPS_LOGGER = "bitsandbytes.backends.cpu.ops"


class _DropBitsandbytesKernelNote(logging.Filter):
    """bitsandbytes logs "Failed to load CPU gemm_4bit_forward from kernels-community" at import on CPUs with
    AVX512-BF16 when the optional `kernels` package is absent; it then uses its own kernel, which is what we test.
    PEFT imports bitsandbytes whenever it is installed (``peft.helpers``), so the note reached every command, also
    ones that quantise nothing. Other bitsandbytes messages pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Failed to load CPU gemm_4bit_forward")


def silence_bitsandbytes_kernel_note() -> None:
    """Install the filter (idempotent). Must run before bitsandbytes is first imported to catch its import note."""
    logger = logging.getLogger(_BNB_CPU_OPS_LOGGER)
    if not any(isinstance(f, _DropBitsandbytesKernelNote) for f in logger.filters):
        logger.addFilter(_DropBitsandbytesKernelNote())
