"""PEFT (LoRA) students: describe an adapter for the model card, and merge it into a plain transformers model.

A quantised base (QLoRA, or LoRA on 8-bit) is merged by dequantising it first; on a CPU that ran bitsandbytes' 4-bit
inference kernel its weights are unpacked before (see :mod:`hf_distill.models.quantization`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from transformers import PreTrainedModel

from hf_distill._compat import unpack_cpu_4bit_weights
from hf_distill.models.quantization import quantization_mode, resolve_torch_dtype


def describe_adapter(model: nn.Module) -> dict | None:
    """What a model card says about a LoRA student: type, r, alpha, dropout, target modules, base quantisation,
    trainable parameters and whether it was merged. None for a model that never had an adapter."""
    merged = getattr(model, "hf_distill_adapter", None)
    if merged is not None:
        return dict(merged)
    peft_config = getattr(model, "peft_config", None)
    if not isinstance(peft_config, dict) or not peft_config:
        return None
    name = getattr(model, "active_adapter", None) or next(iter(peft_config))
    config = peft_config[name]
    targets = config.target_modules
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "peft_type": str(getattr(config.peft_type, "value", config.peft_type)),
        "r": getattr(config, "r", None),
        "lora_alpha": getattr(config, "lora_alpha", None),
        "lora_dropout": getattr(config, "lora_dropout", None),
        "target_modules": sorted(targets) if isinstance(targets, (set, list, tuple)) else targets,
        "modules_to_save": sorted(config.modules_to_save or []),
        "base_quantization": quantization_mode(model),
        "trainable_parameters": trainable,
        "merged": False,
    }


def merge_adapters(model: nn.Module, dtype: torch.dtype | str | None = None) -> PreTrainedModel:
    """Merge the active LoRA adapter into its base and return a plain transformers model (no PEFT, no bnb layers).

    A model without adapters is returned as it is. For a quantised base (QLoRA, or LoRA on 8-bit) the adapter
    weights are set aside, the base is dequantised in place to ``dtype`` (default: the dtype the base was loaded
    in), the adapter is re-attached and merged in full precision. The result computes what the trained student
    computed (dequantised base + LoRA), not the original full-precision base + LoRA. PEFT's own ``merge_and_unload``
    on a 4-bit base re-quantises the merged weights (a second rounding) and, on a CPU after an inference pass, reads
    repacked weights as if they were not (wrong logits; ``tests/models/test_peft.py`` checks ours against the adapted
    model's). ``describe_adapter`` on the result records ``merged: True``.
    """
    from peft import (
        PeftModel,
        get_peft_model,
        get_peft_model_state_dict,
        set_peft_model_state_dict,
    )

    if not isinstance(model, PeftModel):
        if any(hasattr(module, "lora_A") for module in model.modules()):
            raise TypeError("merge_adapters needs the PeftModel wrapper (as returned by get_peft_model/the trainer).")
        return model
    info = {**describe_adapter(model), "merged": True}
    mode = quantization_mode(model)
    if mode is None:
        merged = model.merge_and_unload()
    else:
        name = model.active_adapter
        peft_config = copy.deepcopy(model.peft_config[name])
        peft_config.inference_mode = False
        adapter_state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model, adapter_name=name).items()}
        base = model.unload()  # the quantised base, LoRA layers removed (not merged)
        target = resolve_torch_dtype(dtype) or getattr(base.config, "dtype", None) or torch.float32
        target = resolve_torch_dtype(target)
        unpack_cpu_4bit_weights(base)  # repacked 4-bit weights would dequantise wrongly
        base = base.dequantize(dtype=target)
        base.to(target)
        for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit", "is_quantized"):
            if hasattr(base, attr):
                setattr(base, attr, False)
        rewrapped = get_peft_model(base, peft_config)
        set_peft_model_state_dict(rewrapped, adapter_state)
        merged = rewrapped.merge_and_unload()
        merged.to(target)
    # Undo prepare_model_for_kbit_training / the trainer's training set-up: the result is an ordinary model.
    if getattr(merged, "supports_gradient_checkpointing", False):
        merged.gradient_checkpointing_disable()
    merged.disable_input_require_grads()
    merged.requires_grad_(True)
    merged.hf_distill_adapter = info
    return merged
