"""Small helpers to reach inside a causal LM: its final hidden states and its output head.

Distillation projects hidden states through ``lm_head`` chunk by chunk instead of asking the model for full logits,
so we need the backbone and the head separately. PEFT wraps the model; DDP/FSDP/DeepSpeed wrap it again (the trainer
routes the call through the wrapper's ``forward`` so their hooks still run).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

# Config attributes of models whose logits are not plain ``lm_head(hidden)``: Gemma-2's soft-capping, Cohere's scale,
# Granite's divisor, and so on. For those, the full logits come from the model's own forward.
_LOGIT_POSTPROCESSING_ATTRS = (
    "final_logit_softcapping",
    "logit_scale",
    "logits_scaling",
    "output_multiplier",
    "lm_head_multiplier",
)


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (LoRA layers stay injected in it)."""
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if callable(get_base_model) and hasattr(model, "peft_config") else model


def has_plain_output_head(model: nn.Module) -> bool:
    """True when ``logits == lm_head(last_hidden_state)``, so the head can be applied chunk by chunk."""
    model = unwrap_peft(model)
    config = model.config.get_text_config()
    if any(getattr(config, attr, None) not in (None, 1.0) for attr in _LOGIT_POSTPROCESSING_ATTRS):
        return False
    head = model.get_output_embeddings() if isinstance(model, PreTrainedModel) else None
    backbone = getattr(model, "base_model", None)
    # bitsandbytes' quantised layers subclass nn.Linear but hold packed integer weights: use the model's logits.
    plain = isinstance(head, nn.Linear) and head.weight.dtype.is_floating_point
    return plain and backbone is not None and backbone is not model


def output_head(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight ``(V, H)`` and bias of the model's output embedding."""
    head = unwrap_peft(model).get_output_embeddings()
    return head.weight, head.bias


def output_vocab_size(model: nn.Module) -> int:
    """Rows of the output embedding: the width of the logits, padding rows included."""
    head = unwrap_peft(model).get_output_embeddings()
    return getattr(head, "out_features", None) or head.weight.shape[0]  # a quantised weight's shape is packed


def model_inputs(inputs: dict) -> dict:
    """The subset of a collated batch that a causal LM forward takes (labels are handled by the loss)."""
    keys = ("input_ids", "attention_mask", "position_ids")
    return {key: inputs[key] for key in keys if key in inputs and inputs[key] is not None}


def forward_outputs(model: nn.Module, inputs: dict, use_head: bool, **kwargs):
    """The backbone's outputs when ``use_head`` (no logits computed), otherwise the model's; ``kwargs`` such as
    ``output_hidden_states=True`` go to the forward. Read the final states with :func:`final_output`."""
    if use_head:
        backbone = unwrap_peft(model).base_model
        return backbone(**model_inputs(inputs), use_cache=False, **kwargs)
    return model(**model_inputs(inputs), use_cache=False, **kwargs)


def final_output(outputs, use_head: bool) -> torch.Tensor:
    """``(B, T, H)`` final (normed) hidden states when ``use_head``, otherwise the ``(B, T, V)`` logits."""
    return outputs.last_hidden_state if use_head else outputs.logits


def final_hidden_states(model: nn.Module, inputs: dict, use_head: bool) -> torch.Tensor:
    """``(B, T, H)`` final (normed) hidden states when ``use_head``, otherwise the ``(B, T, V)`` logits."""
    return final_output(forward_outputs(model, inputs, use_head), use_head)


def loss_rows(tensor: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Rows of ``(B, T, ...)`` at the positions that predict a loss token: ``(N, ...)`` for a ``(B, T-1)`` mask."""
    return tensor[:, :-1][loss_mask.to(tensor.device)]
