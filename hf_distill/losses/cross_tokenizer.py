"""Distillation losses between two models whose vocabularies differ (a Gemma teacher, a SmolLM2 student).

The two next-token distributions compared at one aligned position (both models have read the same text, see
:mod:`hf_distill.cross_tokenizer.alignment`) live on different supports: ``q`` over the student's ``Vs`` tokens,
``p`` over the teacher's ``Vt``. Two distances, per position, in probability units:

``uld`` (Universal Logit Distillation, Boizard et al. 2024): the Wasserstein-1 distance between the two distributions
once each is sorted, i.e. as distributions over *ranks* (tokenizer-agnostic, but token identity is lost: a student
that puts the teacher's probabilities on the wrong tokens scores 0)::

    V = max(Vs, Vt);  q_, p_ = pad(q, V), pad(p, V)                 # zeros
    uld = (sort(q_, descending) - sort(p_, descending)).abs().sum(-1)

``align`` (span alignment, GOLD-like): the tokens both vocabularies spell the same way (``shared``: student id ->
teacher id, :mod:`hf_distill.cross_tokenizer.vocabulary`) are compared exactly, by the generalised KL divergence of
the two sub-distributions (>= 0 termwise, and the plain forward KL when the whole vocabulary is shared), the rest by
the ULD distance of the unshared parts::

    exact = T**2 * (p[t_shared] * (log p[t_shared] - log q[s_shared]) - p[t_shared] + q[s_shared]).sum(-1)
    rest = uld(q[s_only], p[t_only])

Sorting 262k probabilities per position is slow on a CPU (2.6 s for 32 rows here), so ``top_k`` (default in the
trainer: 256) compares the k largest of each side exactly and what is left of each as one bin:
``|tail(q) - tail(p)|``, a lower bound of the exact tail term (the triangle inequality) that is exact when k covers
both vocabularies. ``top_k=None`` sorts everything.

:func:`cross_tokenizer_loss` runs either one, with the student's hard-label CE, over chunks of positions: student and
teacher logits exist for one chunk at a time (``chunk x (Vs + Vt)``, never ``B x T x V``), the student's are projected
from its final hidden states inside the chunk, and their gradient is projected straight back into the hidden-state
and head-weight gradients, as :mod:`hf_distill.losses.chunked` does. The loss is
``(alpha * ce_sum + (1 - alpha) * kd_sum) / num_items_in_batch``: CE over every loss token, the distance over the
loss tokens that have a teacher position; one normaliser for the whole accumulated batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from hf_distill.losses.chunked import (  # _combine: alpha mix
    LossOutput,
    _combine,
    _float32_math,
    loss_normalizer,
)

CROSS_TOKENIZER_LOSSES = ("uld", "align")


def sorted_probability_distance(
    student_probs: torch.Tensor, teacher_probs: torch.Tensor, top_k: int | None = None
) -> torch.Tensor:
    """ULD: Wasserstein-1 between ``(C, Vs)`` and ``(C, Vt)`` probability rows as sorted vectors, ``(C,)``.

    Rows may be sub-distributions (``align`` passes the unshared parts). With ``top_k``, the k largest of each row
    are compared rank by rank and the remaining masses as one bin each.
    """
    k_s = student_probs.shape[-1] if top_k is None else min(top_k, student_probs.shape[-1])
    k_t = teacher_probs.shape[-1] if top_k is None else min(top_k, teacher_probs.shape[-1])
    student_top = student_probs.topk(k_s, dim=-1, sorted=True).values  # (C, ks), descending
    teacher_top = teacher_probs.topk(k_t, dim=-1, sorted=True).values  # (C, kt)
    width = max(k_s, k_t)
    distance = (F.pad(student_top, (0, width - k_s)) - F.pad(teacher_top, (0, width - k_t))).abs().sum(-1)
    if k_s == student_probs.shape[-1] and k_t == teacher_probs.shape[-1]:
        return distance
    student_tail = student_probs.sum(-1) - student_top.sum(-1)
    teacher_tail = teacher_probs.sum(-1) - teacher_top.sum(-1)
    return distance + (student_tail - teacher_tail).abs()


def shared_token_kl(
    student_logp: torch.Tensor, teacher_logp: torch.Tensor, student_shared: torch.Tensor, teacher_shared: torch.Tensor
) -> torch.Tensor:
    """Generalised KL ``sum p (log p - log q) - p + q`` over the tokens both vocabularies share, ``(C,)``.

    ``student_shared[i]`` and ``teacher_shared[i]`` are the ids of one spelling in each vocabulary. Each term is
    >= 0 and is 0 where ``p == q``, so the sum is a divergence of the two sub-distributions whatever mass they hold;
    when every token is shared it is the forward KL ``KL(p || q)``.
    """
    s_logp = student_logp[:, student_shared]  # (C, M)
    t_logp = teacher_logp[:, teacher_shared]  # (C, M)
    t_p = t_logp.exp()
    return (t_p * (t_logp - s_logp) - t_p + s_logp.exp()).sum(-1)


@dataclass(frozen=True)
class SharedVocabulary:
    """Tokens spelled the same way in both vocabularies: ``student_ids[i]`` <-> ``teacher_ids[i]`` (1-D, long), and
    the complements (the ids of each side that have no counterpart). ``student_to_teacher`` ``(Vs,)``: the teacher
    id of each student id, or -1 (used for the top-1 agreement)."""

    student_ids: torch.Tensor
    teacher_ids: torch.Tensor
    student_only: torch.Tensor
    teacher_only: torch.Tensor
    student_to_teacher: torch.Tensor

    @classmethod
    def from_pairs(cls, pairs: dict[int, int], student_size: int, teacher_size: int) -> "SharedVocabulary":
        student_ids = torch.tensor(sorted(pairs), dtype=torch.long)
        teacher_ids = torch.tensor([pairs[i] for i in sorted(pairs)], dtype=torch.long)
        student_to_teacher = torch.full((student_size,), -1, dtype=torch.long)
        student_to_teacher[student_ids] = teacher_ids
        return cls(student_ids, teacher_ids, _complement(student_ids, student_size),
                   _complement(teacher_ids, teacher_size), student_to_teacher)

    @property
    def size(self) -> int:
        return int(self.student_ids.numel())

    def to(self, device: torch.device) -> "SharedVocabulary":
        return SharedVocabulary(*(getattr(self, name).to(device) for name in self.__dataclass_fields__))


def _complement(ids: torch.Tensor, size: int) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    keep[ids] = False
    return keep.nonzero().squeeze(1)


@dataclass(frozen=True)
class CrossTokenizerSpec:
    """What to compute: the method, the softmax temperature (both models; CE at T = 1), the CE weight ``alpha``,
    ``top_k`` of the sorted comparison (None: all) and the positions per chunk."""

    method: Literal["uld", "align"] = "align"
    temperature: float = 1.0
    alpha: float = 0.5
    top_k: int | None = 256
    chunk_size: int | None = None

    def __post_init__(self):
        if self.method not in CROSS_TOKENIZER_LOSSES:
            raise ValueError(f"Cross-tokenizer loss {self.method!r}: use one of {CROSS_TOKENIZER_LOSSES}.")
        if not self.temperature > 0 or not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"temperature must be > 0 and alpha in [0, 1]; got {self.temperature}, {self.alpha}.")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be a positive number of ranks or None (sort everything), got {self.top_k}.")


def default_cross_chunk_size(student_vocab: int, teacher_vocab: int) -> int:
    """Positions per chunk: 128, fewer when ``chunk x (Vs + Vt)`` would pass 2**23 values (32 at Gemma's 262k +
    SmolLM2's 49k), never under 16."""
    return max(16, min(128, 2**23 // max(student_vocab + teacher_vocab, 1)))


def position_distance(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, vocab: SharedVocabulary, spec: CrossTokenizerSpec
) -> torch.Tensor:
    """The per-position distance ``(C,)`` of ``spec.method`` between student ``(C, Vs)`` and teacher ``(C, Vt)``
    logits (float32), differentiable in the student's."""
    student_logp = F.log_softmax(student_logits / spec.temperature, dim=-1)
    teacher_logp = F.log_softmax(teacher_logits / spec.temperature, dim=-1)
    if spec.method == "uld":
        return sorted_probability_distance(student_logp.exp(), teacher_logp.exp(), spec.top_k)
    exact = shared_token_kl(student_logp, teacher_logp, vocab.student_ids, vocab.teacher_ids) * spec.temperature**2
    if vocab.student_only.numel() == 0 and vocab.teacher_only.numel() == 0:
        return exact
    rest = sorted_probability_distance(student_logp[:, vocab.student_only].exp(),
                                       teacher_logp[:, vocab.teacher_only].exp(), spec.top_k)
    return exact + rest


@dataclass
class TeacherRows:
    """The teacher at the student's loss tokens: ``index`` ``(N,)`` gives, for each student loss token, its row in
    ``hidden`` ``(Na, Ht)`` (final states, projected by ``weight``/``bias`` chunk by chunk; or ``(Na, Vt)`` logits
    when ``weight`` is None), or -1 where no teacher position is aligned with it."""

    index: torch.Tensor
    hidden: torch.Tensor
    weight: torch.Tensor | None
    bias: torch.Tensor | None

    def logits(self, rows: torch.Tensor) -> torch.Tensor:
        states = self.hidden[rows.to(self.hidden.device)]
        if self.weight is None:
            return states.float()
        return F.linear(states.to(self.weight.dtype), self.weight, self.bias).float()  # (C, Vt)


@torch.no_grad()
def _chunked_stats(hidden, weight, bias, teacher: TeacherRows, targets, vocab, spec, grads=(None, None, None)):
    """Loops over chunks of student loss tokens; returns float64 sums (kd, ce, agree) and adds the unnormalised
    gradients into ``grads`` = (hidden, weight, bias) buffers where they are not None."""
    grad_hidden, grad_weight, grad_bias = grads
    need_grad = any(g is not None for g in grads)
    stats = torch.zeros(3, dtype=torch.float64, device=hidden.device)
    vocab_size = hidden.shape[1] if weight is None else weight.shape[0]
    chunk = spec.chunk_size or default_cross_chunk_size(vocab_size, vocab.teacher_only.numel() + vocab.size)
    for start in range(0, hidden.shape[0], chunk):
        rows = slice(start, start + chunk)
        h = hidden[rows].detach()  # (C, H), or (C, Vs) logits
        if weight is None:
            logits = h.to(torch.float32, copy=True)
        else:
            h = h.to(weight.dtype)
            logits = F.linear(h, weight, bias).float()  # (C, Vs)
        teacher_index = teacher.index[rows]
        aligned = teacher_index >= 0  # (C,)
        teacher_logits = teacher.logits(teacher_index[aligned]).to(logits.device)  # (Ca, Vt)
        with _float32_math(hidden.device), torch.enable_grad():
            leaf = logits.requires_grad_(need_grad)
            ce = F.cross_entropy(leaf, targets[rows], reduction="sum")
            kd = position_distance(leaf[aligned], teacher_logits, vocab, spec).sum()
            total = spec.alpha * ce + (1.0 - spec.alpha) * kd
            grad = torch.autograd.grad(total, leaf)[0] if need_grad else None
        mapped = vocab.student_to_teacher[logits[aligned].argmax(-1)]
        agree = (mapped == teacher_logits.argmax(-1)).sum()
        del logits, teacher_logits
        if grad is not None:
            if weight is None:
                grad_hidden[rows] = grad
            else:
                grad = grad.to(weight.dtype)
                if grad_hidden is not None:
                    grad_hidden[rows] = grad @ weight  # (C, H)
                if grad_weight is not None:
                    grad_weight.addmm_(grad.T, h)  # (Vs, H), accumulated in place
                if grad_bias is not None:
                    grad_bias += grad.sum(0)
        stats += torch.stack([kd.detach().double(), ce.detach().double(), agree.double()])
    return stats


class _FusedCrossTokenizerLoss(torch.autograd.Function):
    """Forward computes the loss and, chunk by chunk, its gradients; backward only rescales them (in place)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, teacher, targets, vocab, spec, normalizer):
        needs = ctx.needs_input_grad[:3]
        grads = tuple(torch.zeros_like(x) if need else None for x, need in zip((hidden, weight, bias), needs))
        stats = _chunked_stats(hidden, weight, bias, teacher, targets, vocab, spec, grads)
        ctx.grads, ctx.normalizer = grads, normalizer
        ctx.mark_non_differentiable(stats)
        return _combine(stats, spec, normalizer), stats

    @staticmethod
    def backward(ctx, grad_loss, _grad_stats):
        if ctx.grads is None:
            raise RuntimeError("The cross-tokenizer loss scales its precomputed gradients in place, so it supports one "
                               "backward pass. Compute the loss again instead of backward(retain_graph=True) twice.")
        scale = grad_loss / ctx.normalizer
        grads = [None if g is None else g.mul_(scale.to(g.dtype)) for g in ctx.grads]
        ctx.grads = None
        return (*grads, None, None, None, None, None)


def cross_tokenizer_loss(
    student_hidden: torch.Tensor,
    student_head_weight: torch.Tensor | None,
    student_head_bias: torch.Tensor | None,
    teacher: TeacherRows,
    targets: torch.Tensor,
    vocab: SharedVocabulary,
    spec: CrossTokenizerSpec,
    num_items_in_batch: int | float | torch.Tensor | None = None,
) -> LossOutput:
    """Cross-tokenizer distillation loss over the student's N loss tokens.

    Args:
        student_hidden: ``(N, H)`` final states of the student at its loss tokens, or ``(N, Vs)`` logits when
            ``student_head_weight`` is None.
        teacher: the teacher's rows aligned with those tokens (:class:`TeacherRows`).
        targets: ``(N,)`` the student's next-token ids.
        vocab: the shared vocabulary, on the student's device.
        num_items_in_batch: loss tokens of the whole accumulated batch; defaults to N.

    ``kd_sum`` sums the distance over the aligned tokens only, ``top1_agree`` counts aligned tokens where the student's
    top token is spelled like the teacher's.
    """
    num_tokens = student_hidden.shape[0]
    if teacher.index.shape[0] != num_tokens or targets.shape[0] != num_tokens:
        raise ValueError(f"Student ({num_tokens}), teacher index ({teacher.index.shape[0]}) and targets "
                         f"({targets.shape[0]}) must cover the same loss tokens.")
    normalizer = loss_normalizer(num_items_in_batch, num_tokens)
    args = (student_hidden, student_head_weight, student_head_bias, teacher, targets, vocab, spec)
    if torch.is_grad_enabled():
        loss, stats = _FusedCrossTokenizerLoss.apply(*args, normalizer)
    else:
        stats = _chunked_stats(*args)
        loss = _combine(stats, spec, normalizer)
    return LossOutput(loss=loss, kd_sum=stats[0], ce_sum=stats[1], top1_agree=stats[2], num_tokens=num_tokens)
