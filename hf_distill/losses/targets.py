"""What a teacher hands to the loss: its distribution at each token that carries loss.

A live teacher model and an offline logit cache both produce a :class:`TeacherSignal`, so the loss never knows where
the teacher came from. Signals are read one chunk of rows at a time, which lets a dense signal keep the teacher's
final hidden states and project them through its ``lm_head`` only when a chunk is needed: the ``(N, V)`` teacher
logits never exist at once.

A sparse signal (:class:`SparseTeacherSignal`, what an offline logit cache holds) knows only the teacher's top-k
log-probabilities and the total mass ``r_p = 1 - sum_topk p`` of the other tokens. Its ``align`` compares the two
models on k + 1 outcomes: the teacher's k tokens, and one "rest" bucket holding everything else::

    P = (p_1, ..., p_k, r_p)                       # teacher: cached, already at the collection temperature
    Q = (q_1, ..., q_k, r_q),  r_q = sum_{j not in topk} q_j
    log q_i = s_i - logsumexp(s)                   # s = student logits / T
    log r_q = logsumexp(s_j, j not in topk) - logsumexp(s)   # a masked logsumexp: no 1 - sum(q) cancellation

Every divergence in :mod:`hf_distill.losses.divergences` is an f-divergence ``D_f(p || q) = sum_x q(x) f(p(x)/q(x))``
(KL both ways, generalized JSD, TVD, both skew KLs), and (P, Q) are p and q pushed through the same map
"token -> its bucket". By the data-processing inequality, ``D_f(P || Q) <= D_f(p || q)``: the sparse loss is a lower
bound of the dense one, it grows towards it as k grows (a larger top-k refines the partition), and it equals it when
the bucket is empty (k = V). Its gradient matches the student's mass on each of the teacher's top-k tokens and its
total mass on the rest, but says nothing about how the student spreads that rest (the hard-label CE still acts).

An empty or zero-mass bucket has log-probability ``-inf``; such values are replaced by ``LOG_ZERO`` (-1e4), whose
``exp`` is exactly 0 in float32 and float64, so ``0 * log 0`` terms are 0 and no value or gradient is NaN. When
k >= V the bucket is dropped altogether.
"""

from __future__ import annotations

import math
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
    def __init__(self, message: str = "The teacher produced NaN/inf logits. Load the teacher in float32 or bfloat16 "
                 "instead of float16 (`teacher_dtype`), and check its weights with a plain forward pass."):
        super().__init__(message)


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

    def logits(self, rows: slice, check_finite: bool = True) -> torch.Tensor:
        chunk = self.hidden_or_logits[rows]
        if self.lm_head_weight is not None:
            weight = self.lm_head_weight[: self.vocab_size]
            bias = None if self.lm_head_bias is None else self.lm_head_bias[: self.vocab_size]
            chunk = F.linear(chunk.to(weight.dtype), weight, bias)  # (C, V)
        chunk = chunk[:, : self.vocab_size].to(self.output_device or chunk.device, torch.float32)
        if check_finite and not torch.isfinite(chunk.sum(-1)).all():  # NaN/inf anywhere makes a row's sum so
            raise NonFiniteTeacherError()
        return chunk

    def align(
        self, student_logits: torch.Tensor, rows: slice, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        teacher_logits = self.logits(rows)  # (C, V)
        student, teacher = student_logits[:, : self.vocab_size], teacher_logits
        if temperature != 1.0:  # dividing by 1.0 would still copy two (C, V) tensors
            student, teacher = student / temperature, teacher / temperature
        return F.log_softmax(student, dim=-1), F.log_softmax(teacher, dim=-1), teacher_logits.argmax(-1)


LOG_ZERO = -1e4
"""Stand-in for log 0: finite, and ``exp(LOG_ZERO) == 0`` in float32 and float64."""


@dataclass
class SparseTeacherSignal:
    """Teacher distribution as its top-k tokens plus the mass of all the others, e.g. read from a logit cache.

    Args:
        token_ids: ``(N, k)`` the teacher's k most likely token ids at each loss token (distinct, any integer dtype).
        logprobs: ``(N, k)`` their log-probabilities, computed at ``temperature`` (float16/float32).
        tail_logprob: ``(N,)`` log of the probability mass outside the top-k (``-inf`` when it is empty).
        vocab_size: width of the distributions; the student's logits past it (embedding padding) are dropped.
        temperature: the temperature the log-probabilities were computed at; ``align`` refuses any other, because
            the tempered mass of the unseen tail cannot be recovered from the top-k.
    """

    token_ids: torch.Tensor
    logprobs: torch.Tensor
    tail_logprob: torch.Tensor
    vocab_size: int
    temperature: float | None = None

    @property
    def num_tokens(self) -> int:
        return self.token_ids.shape[0]

    def buckets(self, rows: slice, device: torch.device, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The top-k ids ``(C, k)`` int64 and the teacher's bucket log-probabilities ``(C, K)``, K = k + 1 (the rest
        bucket last) or k when the top-k is the whole vocabulary; log 0 is replaced by ``LOG_ZERO``."""
        if self.temperature is not None and not math.isclose(temperature, self.temperature, rel_tol=1e-6):
            raise ValueError(
                f"These teacher log-probabilities were computed at temperature {self.temperature}, but the loss asks "
                f"for {temperature}. Re-collect the cache with `--temperature {temperature}`."
            )
        ids = self.token_ids[rows].to(device, torch.int64)  # (C, k)
        teacher = self.logprobs[rows].to(device, torch.float32)  # (C, k)
        if ids.shape[1] < self.vocab_size:  # append the rest bucket
            teacher = torch.cat([teacher, self.tail_logprob[rows].to(device, torch.float32)[:, None]], dim=1)
        return ids, teacher.masked_fill(teacher == float("-inf"), LOG_ZERO)

    def align(
        self, student_logits: torch.Tensor, rows: slice, temperature: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The reference implementation; :mod:`hf_distill.losses.sparse` computes the same loss faster."""
        ids, teacher = self.buckets(rows, student_logits.device, temperature)  # (C, k), (C, K)
        scaled = student_logits[:, : self.vocab_size] / temperature  # (C, V)
        log_z = scaled.logsumexp(-1, keepdim=True)  # (C, 1)
        student = scaled.gather(1, ids) - log_z  # (C, k)
        if teacher.shape[1] > ids.shape[1]:  # the rest bucket: a masked logsumexp, no 1 - sum(q) cancellation
            rest = scaled.scatter(1, ids, float("-inf")).logsumexp(-1, keepdim=True) - log_z  # (C, 1)
            student = torch.cat([student, rest], dim=1)  # (C, k + 1)
        top1 = ids.gather(1, teacher[:, : ids.shape[1]].argmax(-1, keepdim=True)).squeeze(1)  # (C,)
        return student, teacher, top1
