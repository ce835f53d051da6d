"""bitsandbytes 8-bit / 4-bit loading for teachers and QLoRA students (merging their LoRA adapters: models.adapters).

What bitsandbytes 0.50 does on a CPU (measured, and tested in ``tests/models/test_quantization.py``):

* 8-bit (LLM.int8) and 4-bit (NF4/FP4, double quantisation, any compute dtype) load, run forward and train LoRA
  adapters on the CPU; its 8-bit and paged optimizers also step there. No path this module configures is GPU-only.
* One CPU-only limit: on CPUs with AVX512-BF16, a 4-bit layer run in inference (eval mode, no grad: a teacher, or
  generation) is repacked for a fast kernel that needs the layer's output size to be a multiple of 32 and its input
  size a multiple of the 64-weight quantisation block; otherwise bitsandbytes fails mid-forward with
  ``AssertionError: N must be divisible by block_n`` or ``RuntimeError: shape '[96, 0]' is invalid``.
  :func:`check_quantizable` finds such layers before loading and names them.
* The repacking is permanent and silently breaks two things: the backward pass (the packed kernel has no autograd
  formula, so no gradient reaches the layer's input) and ``dequantize_4bit`` (so transformers' ``dequantize()`` and
  PEFT's ``merge_and_unload``). :func:`keep_4bit_trainable` turns it off for students;
  :func:`hf_distill.models.adapters.merge_adapters` undoes it before dequantising.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    PretrainedConfig,
    PreTrainedModel,
)

from hf_distill._compat import (
    modules_not_to_quantize,
    should_quantize_module,
    stop_cpu_4bit_repacking,
    unpack_cpu_4bit_weights,
)

QUANTIZATION_MODES = ("8bit", "4bit")
_INSTALL_HINT = "Install bitsandbytes: `pip install 'hf-distill[quant]'` (or `pip install -U bitsandbytes`)."
_CPU_4BIT_ROWS = 32  # bitsandbytes' CPU inference kernel packs 4-bit weights in blocks of 32 output rows ...
_4BIT_BLOCKSIZE = 64  # ... and reshapes the absmax of each 64-weight quantisation block per input row


def quantization_config(
    mode: str | None, compute_dtype: torch.dtype | str | None = None, device: str | torch.device | None = None
) -> BitsAndBytesConfig | None:
    """The `BitsAndBytesConfig` for ``mode`` ("8bit", "4bit" or None), after checking it runs on ``device``.

    4-bit uses the QLoRA recipe: NF4 weights, double quantisation, matmuls in ``compute_dtype`` (default: bfloat16
    where the device supports it, else float32). ``device`` defaults to the current accelerator, else the CPU. The
    check quantises and runs one small layer, so a missing or broken bitsandbytes fails here, not mid-training.
    """
    if mode is None:
        return None
    if mode not in QUANTIZATION_MODES:
        raise ValueError(f"Unknown quantization mode {mode!r}: use one of {', '.join(QUANTIZATION_MODES)}, or None.")
    device = torch.device(device) if device is not None else _default_device()
    compute_dtype = _resolve_compute_dtype(compute_dtype, device)
    if mode == "8bit":
        config = BitsAndBytesConfig(load_in_8bit=True)
    else:
        config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    _check_runs(mode, str(device), compute_dtype)
    return config


def check_quantizable(
    model: str | os.PathLike | PretrainedConfig, config: BitsAndBytesConfig | dict | None,
    device: str | torch.device | None = None, trust_remote_code: bool = False,
) -> None:
    """Fail early, naming the layers, when a 4-bit model could not run inference on this CPU (see module doc).

    ``model`` is a checkpoint path / hub id or its config; the layers bitsandbytes would quantise are found on a
    meta-device copy with transformers' own skip rules (no weights are read).
    """
    if isinstance(config, dict):  # as given in from_pretrained kwargs; only bitsandbytes 4-bit concerns us
        config = BitsAndBytesConfig.from_dict(config) if config.get("load_in_4bit") else None
    device = torch.device(device) if device is not None else _default_device()
    if not isinstance(config, BitsAndBytesConfig) or not config.load_in_4bit or device.type != "cpu":
        return
    if not _cpu_repacks_4bit():
        return
    model_config = model if isinstance(model, PretrainedConfig) else AutoConfig.from_pretrained(
        str(model), trust_remote_code=trust_remote_code
    )
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(model_config, trust_remote_code=trust_remote_code)
    skipped = modules_not_to_quantize(meta, config.llm_int8_skip_modules)
    bad = sorted(
        {name.rsplit(".", 1)[-1] for name, module in meta.named_modules()
         if type(module) is nn.Linear and should_quantize_module(name, skipped)
         and (module.out_features % _CPU_4BIT_ROWS or module.in_features % _4BIT_BLOCKSIZE)}
    )
    if bad:
        raise ValueError(
            f"4-bit inference on this CPU (bitsandbytes' AVX512-BF16 kernel) needs every quantised layer's output "
            f"size to be a multiple of {_CPU_4BIT_ROWS} and its input size a multiple of {_4BIT_BLOCKSIZE}; these "
            f"are not: {', '.join(bad)}. Keep them unquantised with "
            f"BitsAndBytesConfig(llm_int8_skip_modules={sorted({*bad, *skipped})!r}) (this list keeps the default "
            f"skips), use 8-bit, or choose hidden/intermediate/head sizes that are multiples of {_4BIT_BLOCKSIZE}."
        )


def with_quantization(
    path: str, kwargs: dict, mode: str | None, compute_dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None, inference: bool = True,
) -> dict:
    """``from_pretrained`` kwargs with ``quantization_config`` for ``mode`` and a ``device_map`` added (unless given),
    after the checks above (the layer-size check only for a model meant for ``inference``, e.g. a teacher). A
    bitsandbytes config the caller already put in ``kwargs`` is checked too."""
    device = torch.device(device) if device is not None else _default_device()
    kwargs = dict(kwargs)
    if mode is not None:
        dtype = compute_dtype if isinstance(compute_dtype, (torch.dtype, str)) and compute_dtype != "auto" else None
        kwargs["quantization_config"] = quantization_config(mode, dtype, device)
    if kwargs.get("quantization_config") is not None:
        kwargs.setdefault("device_map", {"": str(device)})
        if inference:
            check_quantizable(path, kwargs["quantization_config"], device, kwargs.get("trust_remote_code", False))
    return kwargs


def load_quantized(
    path: str | os.PathLike, mode: str | None, compute_dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None, **kwargs,
) -> PreTrainedModel:
    """A QLoRA (or LoRA-on-8-bit) student: ``from_pretrained(path, quantization_config=..., device_map=...)``.

    Pass it with ``peft_config=LoraConfig(...)`` to `DistillationTrainer`. Its 4-bit layers never switch to
    bitsandbytes' CPU inference kernel (:func:`keep_4bit_trainable`), so it trains after being evaluated, with any
    layer sizes. ``kwargs`` go to ``from_pretrained``.
    """
    kwargs = with_quantization(str(path), kwargs, mode, compute_dtype, device, inference=False)
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    keep_4bit_trainable(model)
    return model


def quantization_mode(model: nn.Module) -> str | None:
    """"8bit", "4bit" or None for a (possibly PEFT-wrapped) transformers model."""
    if getattr(model, "is_loaded_in_4bit", False):
        return "4bit"
    if getattr(model, "is_loaded_in_8bit", False):
        return "8bit"
    base = getattr(model, "get_base_model", None)
    return quantization_mode(base()) if callable(base) and base() is not model else None


def weight_memory_bytes(model: nn.Module) -> int:
    """Bytes held by parameters, buffers and bitsandbytes' quantisation state (absmax, codebooks, row scales).

    ``PreTrainedModel.get_memory_footprint`` misses the quantisation state: up to 12% of a 4-bit layer (3% with
    double quantisation).
    """
    seen: dict[int, torch.Tensor] = {}

    def add(tensor):
        if isinstance(tensor, torch.Tensor) and not tensor.is_meta:
            seen.setdefault(id(tensor), tensor)

    for tensor in [*model.parameters(), *model.buffers()]:
        add(tensor)
        state = getattr(tensor, "quant_state", None)
        while state is not None:  # 4-bit: absmax, code, and the nested state of double quantisation
            add(state.absmax)
            add(state.code)
            state = state.state2 if getattr(state, "nested", False) else None
        add(getattr(tensor, "SCB", None))  # 8-bit row scales
    return sum(t.numel() * t.element_size() for t in seen.values())


def keep_4bit_trainable(model: nn.Module) -> int:
    """Stop bitsandbytes repacking a 4-bit student's layers for CPU inference (see module doc), and undo packing
    already done. Returns the number of 4-bit layers.

    A repacked layer runs a kernel with no autograd formula, so once a QLoRA student has been evaluated (eval mode,
    no grad) on such a CPU, no gradient flows back through its 4-bit layers: adapters before the last one silently
    stop training. `DistillationTrainer` calls this on its student; teachers keep the faster packed kernel.
    """
    count = stop_cpu_4bit_repacking(model)
    unpack_cpu_4bit_weights(model)
    return count


def _default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_torch_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    """A torch dtype from its name (``'bfloat16'``); a dtype or None unchanged. (Not ``utils.device.resolve_dtype``,
    which passes ``'auto'`` through: a compute or merge dtype must be a real one.)"""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}: use 'float32', 'bfloat16' or 'float16'.")
    return resolved


def _resolve_compute_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    dtype = resolve_torch_dtype(dtype)
    if dtype is not None:
        return dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if device.type == "cpu" and _cpu_repacks_4bit() else torch.float32


@functools.lru_cache(maxsize=None)
def _cpu_repacks_4bit() -> bool:
    """True on CPUs where bitsandbytes uses its AVX512-BF16 4-bit inference kernel.

    bitsandbytes' own probe, on purpose, not :func:`hf_distill.utils.device.cpu_has_native_bf16`: ``Linear4bit`` sets
    ``support_avx512bf16_for_cpu = has_avx512bf16()`` (a check in its native library), and that alone decides
    whether it repacks; ours reads /proc/cpuinfo (Linux only) and also counts AMX-BF16, so the two can differ.
    """
    try:
        from bitsandbytes.functional import has_avx512bf16
    except ImportError:
        return False
    return bool(has_avx512bf16())


@functools.lru_cache(maxsize=None)
def _check_runs(mode: str, device: str, compute_dtype: torch.dtype) -> None:
    """Quantise one 64x64 layer and run it (training and inference) on ``device``, or raise naming the fix."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ImportError(f"Loading a model in {mode} needs bitsandbytes. {_INSTALL_HINT}")
    try:
        import bitsandbytes as bnb

        torch.manual_seed(0)
        if mode == "8bit":
            layer = bnb.nn.Linear8bitLt(64, 64, has_fp16_weights=False)
            layer.weight = bnb.nn.Int8Params(torch.randn(64, 64), requires_grad=False, has_fp16_weights=False)
        else:
            layer = bnb.nn.Linear4bit(64, 64, compute_dtype=compute_dtype, quant_type="nf4")
            layer.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="nf4")
        layer = layer.to(device)
        x = torch.randn(2, 64, device=device, requires_grad=True)
        layer(x).float().sum().backward()  # the training path (what LoRA students run)
        with torch.no_grad():
            layer.eval()(x)  # the inference path (what teachers run)
    except Exception as error:  # noqa: BLE001 - any failure means "does not run here"; the cause is chained
        version = getattr(__import__("bitsandbytes"), "__version__", "?")
        raise RuntimeError(
            f"bitsandbytes {version} cannot run {mode} layers on {device} ({type(error).__name__}: {error}). "
            f"{_INSTALL_HINT} bitsandbytes 0.50 runs both on CPUs and CUDA GPUs (tested); otherwise load the model "
            "unquantised (teacher_quantization=None)."
        ) from error
