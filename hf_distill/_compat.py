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


def moved_module(old: str, *new: str):
    """A module ``__getattr__`` for a public module that moved (or was split): its names still import from ``old``
    for one release, found in the ``new`` modules in order, with a DeprecationWarning naming where each one is now."""
    import importlib
    import warnings

    def __getattr__(name: str):
        for module in new:
            found = importlib.import_module(module)
            if hasattr(found, name) and not name.startswith("__"):
                warnings.warn(f"{old} moved: import {name} from {module} ({old} goes in the next release).",
                              DeprecationWarning, stacklevel=2)
                return getattr(found, name)
        raise AttributeError(f"module {old!r} has no attribute {name!r}")

    return __getattr__
