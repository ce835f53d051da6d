"""Sparse (mixture-of-experts) students upcycled from a dense teacher: a Llama/Mistral becomes a Mixtral
(``MixtralForCausalLM``, which transformers, llama.cpp and vLLM all run) whose experts start as the teacher's MLP.

    student = upcycle_to_mixtral(teacher, num_experts=8, top_k=2)              # experts = copies ("sparse upcycling")
    student = upcycle_to_mixtral(teacher, 4, 1, expert_intermediate_size=256)  # experts = slices of the MLP
    attach_load_balancing_loss(student)                                        # before training it

* **Copies** (default, Komatsuzaki et al. 2022): every expert is the teacher's MLP, so the student computes exactly
  the teacher's function at initialisation (the top-k weights sum to 1); experts drift apart as each trains on the
  tokens routed to it.
* **Slices** (``expert_intermediate_size`` < the MLP's): expert ``e`` holds a contiguous block of the MLP's neurons
  (blocks spread evenly over them, overlapping when ``num_experts * size`` exceeds the width): fewer active
  parameters, not the teacher's function at init.

Attention, norms, embeddings and head are copied; the router starts random (std ``initializer_range``).

**The load-balancing loss.** Mixtral's own ``forward(labels=...)`` adds ``router_aux_loss_coef`` times the Switch
load-balancing loss only when it computes the loss itself; ``DistillationTrainer`` computes its loss from the
backbone's hidden states and never sees router logits. :func:`attach_load_balancing_loss` makes the loss reach the
gradients whoever computes the loss: hooks collect the routers' logits, and the backbone's output passes through an
identity whose backward also sends gradient ``coef`` into the aux loss (Megatron-Core's ``MoEAuxLossAutoScaler``).
It is not added to the *logged* loss; ``model.last_aux_loss`` holds its latest value.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import MixtralConfig, MixtralForCausalLM, PreTrainedModel
from transformers.models.mixtral.modeling_mixtral import (
    MixtralTopKRouter,
    load_balancing_loss_func,
)

from hf_distill.models.build import count_parameters

UPCYCLABLE = ("llama", "mistral")
"""Dense model types whose decoder layer is Mixtral's minus the MoE block (same attention, norms and SwiGLU)."""


def mixtral_config(dense_config, num_experts: int, top_k: int, expert_intermediate_size: int | None = None,
                   router_aux_loss_coef: float = 0.01, router_jitter_noise: float = 0.0) -> MixtralConfig:
    """The Mixtral config of a dense Llama/Mistral config with ``num_experts`` experts, ``top_k`` per token."""
    model_type = getattr(dense_config, "model_type", None)
    if model_type not in UPCYCLABLE:
        raise ValueError(f"Upcycling to a Mixtral student needs a Llama or Mistral dense model, got {model_type!r}: "
                         "start from a Llama/Mistral teacher, or give the stage a `student: {config: ...}` of its "
                         "own.")
    if getattr(dense_config, "attention_bias", False) or getattr(dense_config, "mlp_bias", False):
        raise ValueError("Mixtral layers have no attention/MLP biases: this dense model's biases cannot be upcycled.")
    if not 1 <= top_k <= num_experts:
        raise ValueError(f"need 1 <= top_k <= num_experts, got top_k={top_k}, num_experts={num_experts}")
    width = expert_intermediate_size or dense_config.intermediate_size
    if not 1 <= width <= dense_config.intermediate_size:
        raise ValueError(f"expert_intermediate_size must be in [1, {dense_config.intermediate_size}] (the dense MLP's "
                         f"width; each expert is a slice of it), got {width}")
    return MixtralConfig(
        vocab_size=dense_config.vocab_size, hidden_size=dense_config.hidden_size, intermediate_size=width,
        num_hidden_layers=dense_config.num_hidden_layers, num_attention_heads=dense_config.num_attention_heads,
        num_key_value_heads=dense_config.num_key_value_heads,
        head_dim=getattr(dense_config, "head_dim", None)
        or dense_config.hidden_size // dense_config.num_attention_heads,
        hidden_act=dense_config.hidden_act, max_position_embeddings=dense_config.max_position_embeddings,
        initializer_range=dense_config.initializer_range, rms_norm_eps=dense_config.rms_norm_eps,
        pad_token_id=dense_config.pad_token_id, bos_token_id=dense_config.bos_token_id,
        eos_token_id=dense_config.eos_token_id, tie_word_embeddings=dense_config.tie_word_embeddings,
        sliding_window=getattr(dense_config, "sliding_window", None),
        attention_dropout=getattr(dense_config, "attention_dropout", 0.0),
        rope_parameters=getattr(dense_config, "rope_parameters", None), num_local_experts=num_experts,
        num_experts_per_tok=top_k, router_aux_loss_coef=router_aux_loss_coef, router_jitter_noise=router_jitter_noise,
        output_router_logits=False,  # the aux loss comes through attach_load_balancing_loss, never twice
    )


def expert_slices(intermediate_size: int, num_experts: int, width: int) -> list[slice]:
    """Expert ``e``'s block of the dense MLP's neurons: ``width`` consecutive ones, the blocks' starts spread evenly
    over the MLP (so together they cover it whenever ``num_experts * width >= intermediate_size``)."""
    span = intermediate_size - width
    starts = [round(e * span / (num_experts - 1)) if num_experts > 1 else 0 for e in range(num_experts)]
    return [slice(start, start + width) for start in starts]


@torch.no_grad()
def upcycle_to_mixtral(dense: PreTrainedModel, num_experts: int = 8, top_k: int = 2,
                       expert_intermediate_size: int | None = None, router_aux_loss_coef: float = 0.01,
                       router_jitter_noise: float = 0.0, seed: int = 0) -> MixtralForCausalLM:
    """A Mixtral student whose experts are the dense model's MLP (copies, or slices: see the module doc)."""
    config = mixtral_config(dense.config, num_experts, top_k, expert_intermediate_size, router_aux_loss_coef,
                            router_jitter_noise)
    torch.manual_seed(seed)
    student = MixtralForCausalLM(config).to(dense.dtype)
    dense_state = dense.state_dict()
    missing = [name for name in student.state_dict() if ".mlp." not in name and name not in dense_state]
    if missing:
        raise ValueError(f"the dense model has no {missing[:3]}: not a Llama/Mistral layout")
    student.load_state_dict({name: value for name, value in dense_state.items() if ".mlp." not in name},
                            strict=False)
    blocks = expert_slices(dense.config.intermediate_size, num_experts, config.intermediate_size)
    for layer, dense_layer in zip(student.model.layers, dense.model.layers):
        mlp, experts = dense_layer.mlp, layer.mlp.experts
        for e, block in enumerate(blocks):
            experts.gate_up_proj[e] = torch.cat([mlp.gate_proj.weight[block], mlp.up_proj.weight[block]])  # (2I, H)
            experts.down_proj[e] = mlp.down_proj.weight[:, block]  # (H, I)
        layer.mlp.gate.weight.normal_(0.0, config.initializer_range)
    if config.tie_word_embeddings:
        student.tie_weights()
    student.generation_config = dense.generation_config
    return student


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """``total`` parameters and ``active`` ones (used for one token: the experts it is not routed to excluded)."""
    total = count_parameters(model)
    config = getattr(model, "config", None)
    experts = getattr(config, "num_local_experts", None)
    if not experts:
        return {"total": total, "active": total}
    per_expert = 3 * config.hidden_size * config.intermediate_size
    idle = (experts - config.num_experts_per_tok) * per_expert * config.num_hidden_layers
    return {"total": total, "active": total - idle}


def router_logits_off(model: nn.Module) -> None:
    """Undo the ``output_router_logits = True`` TRL's `SFTTrainer` sets on an MoE model whose aux-loss coefficient is
    non-zero: `DistillationTrainer` computes its loss from the backbone's hidden states and never reads router
    logits (:func:`attach_load_balancing_loss` puts the load-balancing loss into the gradients instead), and a saved
    config with the flag on makes transformers' batched ``generate`` fail in ``load_balancing_loss_func``."""
    config = getattr(model, "config", None)
    if getattr(config, "output_router_logits", False):
        config.output_router_logits = False


class _AuxLossInGradient(torch.autograd.Function):
    """Identity on ``hidden``; its backward also gives ``aux_loss`` a gradient of 1, so ``aux_loss`` is minimised
    with whatever loss is computed downstream of ``hidden`` (Megatron-Core's ``MoEAuxLossAutoScaler``).

    The naive version, which needs the loss's owner to cooperate: ``loss = loss + aux_loss``.
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, aux_loss: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(aux_loss)
        return hidden.view_as(hidden)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (aux_loss,) = ctx.saved_tensors
        return grad, torch.ones_like(aux_loss)


def attach_load_balancing_loss(model: MixtralForCausalLM, coef: float | None = None) -> list:
    """Make ``coef`` (default ``router_aux_loss_coef``) times Mixtral's load-balancing loss part of every training
    backward through ``model.model`` (see the module doc). Returns the hook handles (``handle.remove()`` detaches).

    Under gradient accumulation it is added once per micro-batch, like Mixtral's own loss.
    """
    config = model.config
    coef = config.router_aux_loss_coef if coef is None else coef
    routers = [module for module in model.modules() if isinstance(module, MixtralTopKRouter)]
    if not routers:
        raise ValueError(f"{type(model).__name__} has no Mixtral routers: upcycle it first (upcycle_to_mixtral)")
    logits: list[torch.Tensor] = []
    mask: dict[str, torch.Tensor | None] = {}

    def active() -> bool:
        return model.training and torch.is_grad_enabled() and coef > 0

    def keep_router_logits(module, args, output):
        if active():
            logits.append(output[0])  # (B*T, E)

    def start(module, args, kwargs):
        logits.clear()
        mask["attention_mask"] = kwargs.get("attention_mask")

    def add_aux_loss(module, args, kwargs, output):
        if not active() or len(logits) != len(routers):
            return output
        attention_mask = mask.get("attention_mask")
        if attention_mask is not None and attention_mask.dim() != 2:  # a 4D mask: no padding information to use
            attention_mask = None
        aux = load_balancing_loss_func(tuple(logits), config.num_local_experts, config.num_experts_per_tok,
                                       attention_mask)
        logits.clear()
        model.last_aux_loss = aux.detach()
        output.last_hidden_state = _AuxLossInGradient.apply(output.last_hidden_state, coef * aux)
        return output

    handles = [router.register_forward_hook(keep_router_logits) for router in routers]
    handles.append(model.model.register_forward_pre_hook(start, with_kwargs=True))
    handles.append(model.model.register_forward_hook(add_aux_loss, with_kwargs=True))
    return handles
