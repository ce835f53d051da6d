"""The distillation objective, computed in chunks of tokens so that its memory is bounded by chunk x vocab.

Naive equivalent (what this module computes, for N loss tokens, student logits ``s`` and teacher logits ``t``)::

    kd = T**2 * divergence(log_softmax(s[:, :V] / T), log_softmax(t[:, :V] / T)).sum()
    ce = cross_entropy(s, labels, reduction="sum")            # hard labels, always at T = 1
    loss = (alpha * ce + (1 - alpha) * kd) / num_items_in_batch

``V`` is the vocabulary the two models share (padding rows of a larger embedding are sliced off), and
``num_items_in_batch`` is the number of loss tokens in the whole accumulated batch, so that one batch of 8 and four
micro-batches of 2 give the same gradient.

The naive version keeps several ``(N, V)`` float32 tensors alive until backward. Here the student may be given as
final hidden states plus its ``lm_head`` weight: each chunk is projected, its loss and its gradient with respect to
the chunk's logits are taken at once (as Liger-Kernel's fused linear losses do) and projected straight back into the
``(N, H)`` hidden-state gradient and one ``V x H`` weight gradient, accumulated in place (which the optimizer needs
anyway).

Peak extra memory of a training step, in ``chunk_size x V`` float32 tensors (counted from the code, and measured on
CPU as the resident-set growth of a one-chunk loss at V = 65536): with a dense (live) teacher, 4 for the default
forward KL (and ``jsd`` at ``beta=0``), whose gradient is written by hand (:mod:`hf_distill.losses.dense`), 7 for
``reverse_kl`` and ``tvd`` and 10 for ``jsd`` and the skew KLs (autograd); with a sparse teacher (a logit cache), 2
at ``T = 1`` and 3 otherwise, whatever the divergence (:mod:`hf_distill.losses.sparse`). Evaluation needs as much or
less. This is the one place that states it.

Mixed precision: under autocast (the trainer's ``bf16``/``fp16``), the student's head projections (its forward and the
hidden-state gradient) run in the autocast dtype, as ``lm_head`` does in ``SFTTrainer``; the logits are then cast to
float32 and the divergence, the CE and their gradient are computed with autocast off, in float32 (autocast would run
e.g. ``linalg.vecdot`` in bfloat16 on a CPU); the ``V x H`` weight gradient accumulates in float32. A teacher signal's
head projects in its weight's dtype: callers cast it with :func:`autocast_head` to follow the autocast.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from hf_distill.losses.dense import dense_forward_kl_terms, is_forward_kl
from hf_distill.losses.divergences import get_divergence
from hf_distill.losses.sparse import sparse_chunk_terms
from hf_distill.losses.targets import (
    DenseTeacherSignal,
    SparseTeacherSignal,
    TeacherSignal,
)


@dataclass(frozen=True)
class LossSpec:
    """What to compute: the knobs of :class:`~hf_distill.DistillationConfig` that the loss needs.

    ``chunk_size``: tokens per chunk; ``"auto"`` (the default) is :func:`default_chunk_size` of the teacher signal's
    vocabulary, as the trainer uses; None computes all tokens in one chunk.
    """

    divergence: str = "forward_kl"
    temperature: float = 1.0
    alpha: float = 0.5
    beta: float = 0.5
    chunk_size: int | Literal["auto"] | None = "auto"

    def __post_init__(self):
        get_divergence(self.divergence)  # fail early on an unknown name
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}. Fix: set a positive `temperature`; "
                             "1.0-2.0 is typical.")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha (weight of the hard-label CE) must be in [0, 1], got {self.alpha}. Fix: 0 is pure "
                             "distillation, 1 plain SFT; the default is 0.5.")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta (mixture weight of jsd/skew losses) must be in [0, 1], got {self.beta}. Fix: 0.5 "
                             "is usual for jsd, 0.1 for the skew losses.")
        if self.chunk_size not in ("auto", None) and (isinstance(self.chunk_size, str) or self.chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive number of tokens, 'auto' or None, got "
                             f"{self.chunk_size!r}.")


def default_chunk_size(vocab_size: int, sparse: bool = False) -> int:
    """Tokens per chunk of the KD loss when none is set (`DistillationConfig.kd_chunk_size`, ``LossSpec("auto")``).

    A dense teacher: 128 tokens, fewer when ``chunk x vocab`` would pass 2**25 values (never under 64). A sparse
    teacher (a logit cache): 2**22 / vocab tokens (at least 64). Chosen from the time and memory sweeps of
    ``benchmarks/kd_loss.py`` (results in ``benchmarks/RESULTS.md``).
    """
    per_vocab = 2**22 // max(vocab_size, 1) if sparse else min(128, 2**25 // max(vocab_size, 1))
    return max(64, per_vocab)


@dataclass
class LossOutput:
    """The normalised loss and the raw sums behind it (detached), for logging."""

    loss: torch.Tensor
    kd_sum: torch.Tensor
    ce_sum: torch.Tensor
    top1_agree: torch.Tensor
    num_tokens: int


def _autograd_terms(
    student_logits: torch.Tensor, teacher: TeacherSignal, rows: slice, targets: torch.Tensor, spec: LossSpec
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sums of the KD and CE terms and the top-1 agreement count over one chunk of rows, differentiable."""
    if isinstance(teacher, SparseTeacherSignal):  # the same terms, fused by hand (faster: see losses.sparse)
        return sparse_chunk_terms(student_logits, teacher, rows, targets, spec)
    student_logp, teacher_logp, teacher_top1 = teacher.align(student_logits, rows, spec.temperature)  # (C, K) x2
    kd = get_divergence(spec.divergence)(student_logp, teacher_logp, spec.beta).sum() * spec.temperature**2
    if spec.temperature == 1.0 and student_logp.shape[1] == student_logits.shape[1]:
        ce = F.nll_loss(student_logp, targets, reduction="sum")  # student_logp is log_softmax(student_logits) here
    else:
        ce = F.cross_entropy(student_logits, targets, reduction="sum")  # hard labels over the full vocab, T = 1
    agree = (student_logits[:, : teacher.vocab_size].argmax(-1) == teacher_top1).sum()
    return kd, ce, agree


def _chunk_terms(
    logits: torch.Tensor, teacher: TeacherSignal, rows: slice, targets: torch.Tensor, spec: LossSpec, need_grad: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """kd, ce, agree over one chunk and, if ``need_grad``, ``d(alpha ce + (1 - alpha) kd) / d logits``.

    ``logits`` ``(C, Vs)`` is a float32 tensor owned by this call (the dense forward-KL path overwrites it).
    """
    if isinstance(teacher, DenseTeacherSignal) and is_forward_kl(spec.divergence, spec.beta):
        return dense_forward_kl_terms(logits, teacher, rows, targets, spec.temperature, spec.alpha, need_grad)
    leaf = logits.requires_grad_(need_grad)
    with torch.enable_grad():
        kd, ce, agree = _autograd_terms(leaf, teacher, rows, targets, spec)
        total = spec.alpha * ce + (1.0 - spec.alpha) * kd
    grad = torch.autograd.grad(total, leaf)[0] if need_grad else None
    return kd.detach(), ce.detach(), agree, grad


@torch.no_grad()
def _chunked_stats(
    hidden: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    teacher: TeacherSignal,
    targets: torch.Tensor,
    spec: LossSpec,
    grads: tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None] = (None, None, None),
) -> torch.Tensor:
    """Loops over chunks of rows; returns the float64 sums (kd, ce, agree) and adds the unnormalised gradients into
    ``grads`` = (hidden, weight, bias) buffers where they are not None.

    Each chunk's ``(C, V)`` logit gradient is projected back at once (``grad_weight += g.T @ h``, in place), so no
    ``(V, H)`` weight gradient is ever allocated per chunk and no logits outlive their chunk.
    """
    grad_hidden, grad_weight, grad_bias = grads
    need_grad = any(g is not None for g in grads)
    stats = torch.zeros(3, dtype=torch.float64, device=hidden.device)  # kd, ce, agree
    size = spec.chunk_size
    if size == "auto":
        size = default_chunk_size(teacher.vocab_size, isinstance(teacher, SparseTeacherSignal))
    chunk = size or max(hidden.shape[0], 1)
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        h = hidden[rows].detach()  # (C, H), or (C, Vs) logits
        if weight is None:
            logits = h.to(torch.float32, copy=True)  # the caller's logits: not ours to overwrite
        else:
            h = h.to(weight.dtype)
            logits = F.linear(h, weight, bias).float()  # (C, Vs), projected in the autocast dtype under autocast
        with _float32_math(hidden.device):
            kd, ce, agree, grad = _chunk_terms(logits, teacher, rows, targets[rows], spec, need_grad)
        del logits
        if grad is not None:
            if weight is None:
                grad_hidden[rows] = grad
            else:
                grad = grad.to(weight.dtype)
                if grad_hidden is not None:
                    grad_hidden[rows] = grad @ weight  # (C, H), in the autocast dtype as autograd's would be
                if grad_weight is not None:
                    grad_weight.addmm_(grad.T, h)  # (V, H); in place, so never autocast: float32 accumulation
                if grad_bias is not None:
                    grad_bias += grad.sum(0)
        stats += torch.stack([kd, ce, agree.to(kd.dtype)]).double()
    return stats


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The dtype autocast runs matmuls in on ``device``'s type here and now, or None outside autocast."""
    return torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else None


def autocast_head(
    weight: torch.Tensor | None, bias: torch.Tensor | None
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """A frozen output head for a :class:`DenseTeacherSignal`, cast to the autocast dtype of its device, as autocast
    would cast it for ``F.linear`` (unchanged outside autocast). Done once per batch: the chunks do not re-cast it."""
    dtype = None if weight is None else autocast_dtype(weight.device)
    if dtype is None or not weight.dtype.is_floating_point:
        return weight, bias
    return weight.to(dtype), None if bias is None else bias.to(dtype)


def _float32_math(device: torch.device) -> contextlib.AbstractContextManager:
    """Autocast off on ``device``'s type, where it is on: the per-chunk loss math runs in float32."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device.type, enabled=False)
    return contextlib.nullcontext()


class _FusedChunkedLoss(torch.autograd.Function):
    """Forward computes the loss and, chunk by chunk, its gradients; backward only rescales them (in place)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher, targets, spec, normalizer):
        needs = ctx.needs_input_grad[:3]
        grads = tuple(torch.zeros_like(x) if need else None for x, need in zip((hidden, weight, bias), needs))
        stats = _chunked_stats(hidden, weight, bias, teacher, targets, spec, grads)
        ctx.grads = grads  # not save_for_backward: they are ours alone, and scaling them in place saves a V x H copy
        ctx.normalizer = normalizer
        ctx.mark_non_differentiable(stats)
        return _combine(stats, spec, normalizer), stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):
        if ctx.grads is None:
            raise RuntimeError(
                "The distillation loss scales its precomputed gradients in place, so it supports one backward pass. "
                "Compute the loss again instead of calling backward(retain_graph=True) twice."
            )
        scale = grad_loss / ctx.normalizer  # 0-dim
        grads = [None if g is None else g.mul_(scale.to(g.dtype)) for g in ctx.grads]
        ctx.grads = None
        return (*grads, None, None, None, None)


def loss_normalizer(num_items_in_batch: int | float | torch.Tensor | None, num_tokens: int) -> float:
    """The loss divisor: the loss tokens of the whole accumulated batch (``num_items_in_batch``; a device tensor is
    read once here, which costs a host sync), else this batch's ``num_tokens``; at least 1, so a batch without loss
    tokens gives a finite zero, not 0 / 0. Callers that add terms to the loss compute it once and pass the float."""
    value = num_tokens if num_items_in_batch is None else num_items_in_batch
    return max(float(value.item() if torch.is_tensor(value) else value), 1.0)


def _combine(stats: torch.Tensor, spec, normalizer: float) -> torch.Tensor:
    """``(alpha * CE + (1 - alpha) * distance) / normalizer`` from ``stats = [distance_sum, ce_sum, ...]``; ``spec``
    is any spec with an ``alpha`` (LossSpec, the cross-tokenizer one)."""
    return ((spec.alpha * stats[1] + (1.0 - spec.alpha) * stats[0]) / normalizer).float()


def fused_distillation_loss(
    student_hidden: torch.Tensor,
    student_head_weight: torch.Tensor | None,
    student_head_bias: torch.Tensor | None,
    teacher: TeacherSignal,
    targets: torch.Tensor,
    spec: LossSpec,
    num_items_in_batch: int | torch.Tensor | None = None,
) -> LossOutput:
    """Distillation loss over the N tokens that carry loss.

    Args:
        student_hidden: ``(N, H)`` final hidden states of the student at the loss tokens, or ``(N, V)`` logits when
            ``student_head_weight`` is None.
        student_head_weight / student_head_bias: the student's output embedding, applied chunk by chunk.
        teacher: the teacher's signal at the same N tokens.
        targets: ``(N,)`` next-token ids (no ``-100`` left: callers select the loss tokens first).
        num_items_in_batch: loss tokens of the whole accumulated (and gathered) batch; defaults to N.
    """
    num_tokens = student_hidden.shape[0]
    if teacher.num_tokens != num_tokens or targets.shape[0] != num_tokens:
        raise ValueError(
            f"Student ({num_tokens}), teacher ({teacher.num_tokens}) and targets ({targets.shape[0]}) must cover the "
            "same loss tokens."
        )
    normalizer = loss_normalizer(num_items_in_batch, num_tokens)
    if torch.is_grad_enabled():
        loss, stats = _FusedChunkedLoss.apply(
            student_hidden, student_head_weight, student_head_bias, teacher, targets, spec, normalizer
        )
    else:
        stats = _chunked_stats(student_hidden, student_head_weight, student_head_bias, teacher, targets, spec)
        loss = _combine(stats, spec, normalizer)
    return LossOutput(loss=loss, kd_sum=stats[0], ce_sum=stats[1], top1_agree=stats[2], num_tokens=num_tokens)
