"""What a teacher hands to the loss: its distribution at each token that carries loss.

A live teacher model and an offline logit cache both produce a :class:`TeacherSignal`, so the loss never knows where
the teacher came from. Signals are read one chunk of rows at a time, which lets a dense signal keep the teacher's
final hidden states and project them through its ``lm_head`` only when a chunk is needed: the ``(N, V)`` teacher
logits never exist at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F


@runtime_checkable
class TeacherSignal(Protocol):
    """The teacher's distributions at N loss tokens, read one chunk of rows at a time."""

    num_tokens: int
    vocab_size: int

    def align(
        self, student_logits: torch.Tensor, rows: slice, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Put a chunk of student logits ``(C, V_student)`` and the teacher on one support.

        Returns temperature-scaled student and teacher log-probabilities ``(C, K)`` over the same K outcomes (the
        shared vocabulary for a dense teacher; the teacher's top-k tokens plus one "rest" bucket for a sparse one)
        and the teacher's top-1 token ids ``(C,)``. Differentiable in ``student_logits``.
        """


class NonFiniteTeacherError(FloatingPointError):
    pass


@dataclass
class DenseTeacherSignal:
    """Teacher distribution as final hidden states + output embedding (``lm_head_weight`` set) or as logits.

    Args:
        hidden_or_logits: ``(N, H_teacher)`` hidden states, or ``(N, V_teacher)`` logits when ``lm_head_weight`` is None.
        vocab_size: the vocabulary shared with the student; rows past it (embedding padding) are dropped.
        output_device: where the student's loss runs (the teacher may live on another device).
    """

    hidden_or_logits: torch.Tensor
    vocab_size: int
    lm_head_weight: torch.Tensor | None = None
    lm_head_bias: torch.Tensor | None = None
    output_device: torch.device | None = None

    @property
    def num_tokens(self) -> int:
        return self.hidden_or_logits.shape[0]

    def logits(self, rows: slice) -> torch.Tensor:
        chunk = self.hidden_or_logits[rows]
        if self.lm_head_weight is not None:
            weight = self.lm_head_weight[: self.vocab_size]
            bias = None if self.lm_head_bias is None else self.lm_head_bias[: self.vocab_size]
            chunk = F.linear(chunk.to(weight.dtype), weight, bias)  # (C, V)
        chunk = chunk[:, : self.vocab_size].to(self.output_device or chunk.device, torch.float32)
        if not torch.isfinite(chunk).all():
            raise NonFiniteTeacherError(
                "The teacher produced NaN/inf logits. Load the teacher in float32 or bfloat16 instead of float16 "
                "(`teacher_dtype`), and check its weights with a plain forward pass."
            )
        return chunk

    def align(
        self, student_logits: torch.Tensor, rows: slice, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        teacher_logits = self.logits(rows)  # (C, V)
        student_logp = F.log_softmax(student_logits[:, : self.vocab_size] / temperature, dim=-1)  # (C, V)
        return student_logp, F.log_softmax(teacher_logits / temperature, dim=-1), teacher_logits.argmax(-1)
