"""How much each part of a teacher matters, measured on calibration batches (what importance pruning keeps).

Depth (one score per decoder layer; higher: keep):

- ``block_influence`` (ShortGPT): ``1 - cos(input, output)`` of each layer's residual stream, averaged over the real
  tokens. A layer whose output equals its input scores 0 and is the first one dropped. One forward pass per batch.
- ``skip_kl``: the KL divergence from the full model's next-token distribution to the model with that one layer
  skipped (the layer's input passed straight on). Costs one forward pass per layer per batch, and measures what a
  drop does to the output rather than to one layer's stream.

Width (Minitron's activation importance; higher: keep), from one forward pass with hooks:

- MLP neurons: the mean ``|activation|`` entering the MLP's down projection, per layer.
- Attention heads: the mean L2 norm of each head's output entering the attention output projection, per layer.
- Residual channels: the mean ``|activation|`` of every norm's output over the residual stream, summed over the layers.

Modules are found by the same name rules that :mod:`hf_distill.models.shrink` slices by (``down_proj``/``fc2``:
neurons in; ``o_proj``/``dense``: query rows in; ``*norm*``: residual channels out), so any family shrink can narrow
can be scored. Batches are dicts with ``input_ids`` and optionally ``attention_mask`` (padding is not counted).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

LAYER_IMPORTANCE = ("block_influence", "skip_kl")


@dataclass
class WidthScores:
    """Activation importance (higher: keep), as :func:`hf_distill.models.shrink.plan_shrink` consumes it."""

    hidden: torch.Tensor  # (H,) residual channels
    neurons: dict[int, torch.Tensor] = field(default_factory=dict)  # teacher layer -> (I,) MLP neurons
    heads: dict[int, torch.Tensor] = field(default_factory=dict)  # teacher layer -> (heads,) query heads


def _decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    from hf_distill.models.shrink import (
        _layer_prefix,  # the shared rule for "model.layers" / "transformer.h"
    )

    prefix = _layer_prefix(model)
    if prefix is None:
        raise NotImplementedError(f"importance scores need the decoder layers of {type(model).__name__}")
    return prefix, model.get_submodule(prefix)


def _token_mask(batch: dict, like: torch.Tensor) -> torch.Tensor:
    """(B, T) float mask of the real tokens."""
    mask = batch.get("attention_mask")
    if mask is None:
        return torch.ones(like.shape[:2], dtype=torch.float32, device=like.device)
    return mask.to(device=like.device, dtype=torch.float32)


def _forward(model: nn.Module, batch: dict):
    device = next(model.parameters()).device
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask") if batch.get(k) is not None}
    return model(**inputs, use_cache=False)


def _hidden_in(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _hidden_out(output) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


@torch.no_grad()
def block_influence(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    """(L,) ``1 - cos(input, output)`` of each decoder layer, averaged over the real tokens of ``batches``."""
    _, layers = _decoder_layers(model)
    totals, count = torch.zeros(len(layers), dtype=torch.float64), 0.0
    current: dict = {}

    def hook(index):
        def record(module, args, kwargs, output):
            x, y = _hidden_in(args, kwargs).float(), _hidden_out(output).float()
            cos = torch.nn.functional.cosine_similarity(x, y, dim=-1, eps=1e-8)  # (B, T)
            totals[index] += ((1 - cos) * current["mask"]).sum().double().cpu()
        return record

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]
    count += _run_hooked(model, batches, handles, current)
    return (totals / max(count, 1.0)).float()


@contextlib.contextmanager
def skipping(layer: nn.Module):
    """Within the block, ``layer`` passes its input residual stream through unchanged."""
    def passthrough(module, args, kwargs, output):
        hidden = _hidden_in(args, kwargs)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = layer.register_forward_hook(passthrough, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _masked_kl(reference: torch.Tensor, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed KL(reference || logits) over the real tokens."""
    p = reference.float().log_softmax(-1)
    q = logits.float().log_softmax(-1)
    return ((p.exp() * (p - q)).sum(-1) * mask).sum()


@torch.no_grad()
def skip_kl(model: nn.Module, batches: list[dict]) -> torch.Tensor:
    """(L,) mean per-token KL(full model || model without that layer) over the real tokens of ``batches``."""
    _, layers = _decoder_layers(model)
    totals, count = torch.zeros(len(layers), dtype=torch.float64), 0.0
    for batch in batches:
        reference = _forward(model, batch).logits
        mask = _token_mask(batch, reference)
        count += float(mask.sum())
        for i, layer in enumerate(layers):
            with skipping(layer):
                totals[i] += _masked_kl(reference, _forward(model, batch).logits, mask).double().cpu()
    return (totals / max(count, 1.0)).float()


def layer_importance(model: nn.Module, batches: list[dict], metric: str = "block_influence") -> torch.Tensor:
    """(L,) importance of each decoder layer by ``metric`` (one of :data:`LAYER_IMPORTANCE`); higher: keep."""
    if metric not in LAYER_IMPORTANCE:
        raise ValueError(f"layer importance {metric!r}: use one of {list(LAYER_IMPORTANCE)}")
    if not batches:
        raise ValueError("importance pruning needs calibration batches (a few hundred training examples)")
    return (block_influence if metric == "block_influence" else skip_kl)(model, batches)


@torch.no_grad()
def activation_importance(model: nn.Module, batches: list[dict]) -> WidthScores:
    """Minitron's width importance: mean activation magnitudes of neurons, heads and residual channels."""
    from hf_distill.models.shrink import _kinds, _sizes, head_dim

    if not batches:
        raise ValueError("importance pruning needs calibration batches (a few hundred training examples)")
    config = model.config
    sizes = _sizes(config)
    heads, d = config.num_attention_heads, head_dim(config)
    prefix, _ = _decoder_layers(model)
    scores = WidthScores(hidden=torch.zeros(config.hidden_size, dtype=torch.float64))
    current: dict = {}
    handles = []

    def masked_sum(values: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (C,) over the real tokens
        return (values.float() * current["mask"][..., None]).sum((0, 1)).double().cpu()

    def add(store: dict, layer: int, value: torch.Tensor):
        store[layer] = store[layer] + value if layer in store else value

    for name, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        kinds = _kinds(f"{name}.weight", tuple(weight.shape), sizes)
        layer = int(name[len(prefix) + 1:].split(".")[0]) if name.startswith(f"{prefix}.") else None
        if kinds == ("h", "i") and layer is not None:  # MLP down projection: neurons enter it
            def neurons(module, args, layer=layer):
                add(scores.neurons, layer, masked_sum(args[0].abs()))
            handles.append(module.register_forward_pre_hook(neurons))
        elif kinds == ("h", "q") and layer is not None:  # attention output projection: heads enter it
            def head_norms(module, args, layer=layer):
                x = args[0]
                add(scores.heads, layer, masked_sum(x.reshape(*x.shape[:-1], heads, d).float().norm(dim=-1)))
            handles.append(module.register_forward_pre_hook(head_norms))
        elif kinds == ("h",):  # a norm over the residual stream
            def channels(module, args, output):
                scores.hidden += masked_sum(_hidden_out(output).abs())
            handles.append(module.register_forward_hook(channels))
    count = _run_hooked(model, batches, handles, current)
    count = max(count, 1.0)
    return WidthScores(hidden=(scores.hidden / count).float(),
                       neurons={k: (v / count).float() for k, v in scores.neurons.items()},
                       heads={k: (v / count).float() for k, v in scores.heads.items()})


def calibration_batches(rows: list[dict], batch_size: int = 8, pad_token_id: int = 0) -> list[dict]:
    """Right-padded ``input_ids``/``attention_mask`` batches from tokenised rows (each with ``input_ids``)."""
    batches = []
    for start in range(0, len(rows), batch_size):
        chunk = [list(r["input_ids"]) for r in rows[start:start + batch_size]]
        width = max(len(ids) for ids in chunk)
        ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, row in enumerate(chunk):
            ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, :len(row)] = 1
        batches.append({"input_ids": ids, "attention_mask": mask})
    return batches


def _run_hooked(model: nn.Module, batches, handles: list, current: dict) -> float:
    """Run the calibration batches through ``model`` with the hooks of ``handles`` recording, ``current["mask"]``
    telling them which tokens count; remove the hooks however it ends. Returns the number of counted tokens."""
    count = 0.0
    try:
        for batch in batches:
            current["mask"] = _token_mask(batch, batch["input_ids"]).to(next(model.parameters()).device)
            count += float(current["mask"].sum())
            _forward(model, batch)
    finally:
        for handle in handles:
            handle.remove()
    return count
