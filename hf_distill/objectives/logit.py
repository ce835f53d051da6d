"""The logit-KD objective over one batch, from the student's final states: the teacher's signal at the same loss
tokens and the fused chunked loss. `DistillationTrainer` uses it as is; `AlignedObjective` (feature alignment,
co-distillation) adds its terms to it, reusing the mask, rows and normaliser it returns. With ``alpha == 1`` (CE
only) the teacher is not asked for its signal at all."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hf_distill.losses import (
    LossOutput,
    LossSpec,
    fused_distillation_loss,
    loss_normalizer,
)
from hf_distill.losses.targets import SparseTeacherSignal
from hf_distill.models.introspect import loss_rows, output_head


@dataclass
class LogitKD:
    output: LossOutput
    loss_mask: torch.Tensor  # (B, T-1): True where the next-token label carries loss
    student_rows: torch.Tensor  # (N, H) final states, or (N, V) logits for a model without a plain head
    targets: torch.Tensor  # (N,) next-token ids at those rows
    normalizer: float  # the loss divisor (tokens of the whole accumulated batch)


def label_signal(targets: torch.Tensor, vocab_size: int) -> SparseTeacherSignal:
    """A one-hot "teacher" at the labels, for ``alpha == 1`` (plain SFT through the distillation trainer): the teacher
    is not run, the loss is the CE alone, and the logged ``kd_loss`` equals ``ce_loss`` (at temperature 1) and
    ``top1_agreement`` is the token accuracy on the labels (the KL to a one-hot target is its cross-entropy)."""
    return SparseTeacherSignal(token_ids=targets[:, None], logprobs=torch.zeros(targets.shape[0], 1,
                                                                                device=targets.device),
                               tail_logprob=torch.full((targets.shape[0],), float("-inf"), device=targets.device),
                               vocab_size=vocab_size)


def logit_distillation(
    student: nn.Module,
    states: torch.Tensor,
    use_head: bool,
    inputs: dict,
    teacher,
    vocab_size: int,
    spec: LossSpec,
    num_items_in_batch,
    teacher_states: torch.Tensor | None = None,
) -> LogitKD:
    """``states``: the student's ``(B, T, H)`` final hidden states (``use_head``) or ``(B, T, V)`` logits.
    ``teacher``: a live teacher or a cache; ``teacher_states``: a live teacher's final states when the caller has
    already run it (feature alignment needs its full outputs)."""
    targets = inputs["labels"][:, 1:].to(states.device)  # next-token labels, (B, T-1)
    loss_mask = targets != -100
    weight, bias = output_head(student) if use_head else (None, None)
    rows, targets = loss_rows(states, loss_mask), targets[loss_mask]
    if spec.alpha == 1.0:  # the KD term has no weight: ask the teacher for nothing
        signal = label_signal(targets, vocab_size)
    else:
        reuse = {} if teacher_states is None else {"states": teacher_states}
        signal = teacher.signal(inputs, loss_mask, vocab_size, states.device, **reuse)
    normalizer = loss_normalizer(num_items_in_batch, rows.shape[0])
    output = fused_distillation_loss(rows, weight, bias, signal, targets, spec, normalizer)
    return LogitKD(output, loss_mask, rows, targets, normalizer)
