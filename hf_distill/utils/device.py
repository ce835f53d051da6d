"""Which device and precision a run gets, asked of accelerate (the device the Trainer will use) rather than probed by
hand in each module."""

from __future__ import annotations

import functools
from pathlib import Path

import torch


def default_device() -> torch.device:
    """The device accelerate would train on in this process (cuda:N under a launcher, else cuda/xpu/mps, else cpu)."""
    from accelerate import PartialState

    return PartialState().device


def has_bf16_accelerator() -> bool:
    """A GPU/XPU that runs bfloat16: where `TrainingArguments(bf16=True)` is accepted without `use_cpu`.

    Asks transformers the very question its check asks, without creating a `PartialState`: that would start the
    process group under a launcher before `TrainingArguments` does, and its `ddp_backend`/`ddp_timeout` would be
    ignored.
    """
    from transformers.utils import is_torch_bf16_gpu_available, is_torch_xla_available

    return is_torch_bf16_gpu_available() or is_torch_xla_available()


@functools.cache
def cpu_has_native_bf16() -> bool:
    """CPUs with avx512_bf16/AMX run bf16 autocast faster than float32 (benchmarks/); on others it is much slower."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fast_bf16_available() -> bool:
    """Whether bf16 autocast speeds training up here: a bf16 accelerator, or a CPU with native bf16."""
    return has_bf16_accelerator() if default_device().type != "cpu" else cpu_has_native_bf16()


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str | torch.dtype | None, what: str = "dtype") -> torch.dtype | str | None:
    """``'float32'``/``'bfloat16'``/``'float16'`` -> the torch dtype; a dtype, ``None`` and ``'auto'`` unchanged.
    ``what`` names the setting in the error (``"teacher dtype"``)."""
    if name is None or isinstance(name, torch.dtype) or name == "auto":
        return name
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"Unknown {what} {name!r}. Use one of: auto, {', '.join(_DTYPES)}.") from None


def end_distributed() -> None:
    """Close the process group a launcher started, once every rank got here.

    A gloo group left open at interpreter exit sometimes aborts the process ("terminate called without an active
    exception": its threads are torn down while still joinable), which turns a finished run into a failed launch.
    Nothing to do in a single process.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
