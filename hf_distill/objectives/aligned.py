"""The distillation objective when intermediate states matter: feature alignment and/or co-distillation.

Plain logit KD needs only each model's final hidden states (``DistillationTrainer._distillation_loss``). This
objective asks both forwards for ``hidden_states`` (and ``attentions``) only when alignment is on, and runs the
teacher with gradients only for co-distillation, so a run with the defaults pays nothing for it. It returns the
usual :class:`~hf_distill.losses.LossOutput` plus the sums of its extra terms for logging::

    loss = kd_loss(student)                                            # the fused logit KD + CE, as without it
         + (feature_weight * sum_pairs w_p * L(proj_p(h_s), h_t) + attention_weight * KL(A_t || A_s)) / N
         + codistill_term (co_distill only: the teacher's own loss, see hf_distill.objectives.codistill)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from hf_distill._compat import attn_implementation
from hf_distill.features.aligner import FeatureAligner
from hf_distill.features.layers import parse_pair_weights, resolve_layer_pairs
from hf_distill.features.settings import features_enabled
from hf_distill.losses import LossOutput, LossSpec
from hf_distill.models.introspect import (
    final_output,
    forward_outputs,
    has_plain_output_head,
    unwrap_peft,
)
from hf_distill.objectives.codistill import codistill_term
from hf_distill.objectives.logit import logit_distillation
from hf_distill.teacher.live import LiveTeacher


@dataclass
class AlignedLossOutput(LossOutput):
    extra_sums: dict[str, torch.Tensor] = field(default_factory=dict)  # detached sums over the loss tokens


def build_aligner(args, student: nn.Module, teacher: nn.Module) -> FeatureAligner | None:
    """The aligner the config asks for (None when feature and attention weights are 0), checked against both models."""
    if not features_enabled(args):
        return None
    s_config, t_config = (unwrap_peft(m).config.get_text_config() for m in (student, teacher))
    pairs = resolve_layer_pairs(args.feature_layers, t_config.num_hidden_layers, s_config.num_hidden_layers)
    if args.attention_weight > 0:
        check_attention_maps(s_config, t_config)
    # Projector init from `args.seed` alone: the same on every process and whatever ran before, and the global
    # random stream (data order, dropout) is left as it would be without feature alignment.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        return FeatureAligner(
            pairs, s_config.hidden_size, t_config.hidden_size, args.feature_loss,
            parse_pair_weights(args.feature_pair_weights, len(pairs)), args.feature_projector,
            attention=args.attention_weight > 0, hidden=args.feature_weight > 0,
        )


def check_attention_maps(student_config, teacher_config) -> None:
    for who, config in (("student", student_config), ("teacher", teacher_config)):
        if attn_implementation(config) != "eager":
            raise ValueError(
                f"attention_weight > 0 needs the {who}'s attention maps, which only attn_implementation='eager' "
                f"returns (it uses {attn_implementation(config)!r}). Load it with "
                "`from_pretrained(..., attn_implementation='eager')` (teacher_model_init_kwargs for the teacher), "
                "or set attention_weight=0."
            )
    heads = student_config.num_attention_heads, teacher_config.num_attention_heads
    if heads[0] != heads[1]:
        raise ValueError(f"Attention-map transfer compares head h with head h, but the student has {heads[0]} heads "
                         f"and the teacher {heads[1]}. Use models with equal head counts, or attention_weight=0.")


class AlignedObjective:
    """Callable ``(student, inputs, num_items_in_batch) -> AlignedLossOutput``; runs inside the student's wrapper.

    Args:
        teacher: the live teacher (trainable when ``co_distill``).
        aligner: the (possibly DDP-wrapped) :class:`FeatureAligner`, or None.
        feature_weight, attention_weight: the overall weights of its two terms.
    """

    def __init__(self, teacher: LiveTeacher, aligner: nn.Module | None, vocab_size: int, spec: LossSpec,
                 feature_weight: float = 0.0, attention_weight: float = 0.0, co_distill: bool = False):
        self.teacher, self.aligner, self.vocab_size, self.spec = teacher, aligner, vocab_size, spec
        self.feature_weight, self.attention_weight, self.co_distill = feature_weight, attention_weight, co_distill

    def __call__(self, student: nn.Module, inputs: dict, num_items_in_batch) -> AlignedLossOutput:
        use_head = has_plain_output_head(student)
        attentions = self.attention_weight > 0
        wants = dict(output_hidden_states=self.feature_weight > 0, output_attentions=attentions)
        student_out = forward_outputs(student, inputs, use_head, **wants)
        states = final_output(student_out, use_head)  # (B, T, H) or (B, T, V)
        with torch.set_grad_enabled(self.co_distill and torch.is_grad_enabled()):
            teacher_out = self.teacher.outputs(inputs, **wants)
        teacher_states = final_output(teacher_out, self.teacher.use_head)
        logit = logit_distillation(student, states, use_head, inputs, self.teacher, self.vocab_size, self.spec,
                                   num_items_in_batch, teacher_states=teacher_states)
        kd, loss_mask = logit.output, logit.loss_mask
        loss, extras = kd.loss, {}
        if self.aligner is not None:
            hidden, attention = self.aligner(
                student_out.hidden_states, _detached(teacher_out.hidden_states), loss_mask,
                student_out.attentions, _detached(teacher_out.attentions) if attentions else None,
            )
            loss = loss + (self.feature_weight * hidden + self.attention_weight * attention) / logit.normalizer
            if self.feature_weight > 0:
                extras["feature_loss"] = hidden.detach()
            if attentions:
                extras["attention_loss"] = attention.detach()
        if self.co_distill:  # the teacher's own DML loss: hf_distill.objectives.codistill
            mutual, sums = codistill_term(self.teacher, teacher_states, logit, student, use_head, self.vocab_size,
                                          self.spec)
            loss = loss + mutual.to(loss.device)
            extras.update(sums)
        return AlignedLossOutput(loss, kd.kd_sum, kd.ce_sum, kd.top1_agree, kd.num_tokens, extras)


def _detached(states):
    return None if states is None else tuple(s.detach() for s in states)
