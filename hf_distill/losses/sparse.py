"""The per-chunk loss terms for a sparse teacher (top-k + tail, e.g. from a logit cache), fused by hand.

Computes exactly what the generic path of :mod:`hf_distill.losses.chunked` computes with
:meth:`~hf_distill.losses.targets.SparseTeacherSignal.align` (the naive version, and the reference in the tests)::

    student_logp, teacher_logp, top1 = signal.align(logits, rows, T)   # (C, K) buckets: top-k + rest
    kd = T**2 * divergence(student_logp, teacher_logp, beta).sum()
    ce = cross_entropy(logits, targets, reduction="sum")                 # over the student's full vocabulary
    agree = (logits[:, :V].argmax(-1) == top1).sum()                     # here: teacher's top-1 ties the max

Autograd over that costs about fifteen passes over the ``(C, V)`` logits (two logsumexps, a scatter, a division,
two gathers and their backward, the accumulation of five gradients), which made a training step several times
slower than plain cross-entropy (``benchmarks/kd_loss.py`` measures it). Here CE and KD share one exponential pass
(two when T != 1 or the student has padding rows), the divergence runs on the ``(C, K)`` buckets only, and the
backward writes the ``(C, V)`` gradient in one pass. With ``s = logits / T``, ``q = softmax(s[:V])``,
``r = sum of q outside the top-k`` and ``G_b = d kd / d student_logp_b``::

    d kd / d s_j = G_i [j = id_i] + G_rest [j not in top-k] q_j / r - q_j sum_b G_b
    d ce / d logits_j = softmax(logits)_j - [j = target]

When the student's rest mass underflows (r < 1e-30), those rows fall back to an exact masked logsumexp.
"""

from __future__ import annotations

import torch

from hf_distill.losses.divergences import get_divergence

_TINY = 1e-30  # a rest mass below this is recomputed exactly (float32 underflows near 1e-38)


class _SparseTerms(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, ids, teacher_logp, targets, vocab_size, spec):
        temperature, (rows, width), k = spec.temperature, logits.shape, ids.shape[1]
        index = torch.arange(rows, device=logits.device)
        m = logits.amax(-1)  # (C,)
        e = torch.sub(logits, m[:, None]).exp_()  # (C, Vs) exp(z - m)
        total = e.sum(-1)  # (C,)
        ce = (m + total.log() - logits[index, targets]).sum()

        shared = temperature == 1.0 and vocab_size == width  # CE and KD use the same softmax
        m_v = m if vocab_size == width else logits[:, :vocab_size].amax(-1)  # (C,)
        if shared:
            e_t, total_t = e, total
        else:
            e_t = torch.sub(logits[:, :vocab_size], m_v[:, None]).div_(temperature).exp_()  # (C, V)
            total_t = e_t.sum(-1)
        log_total_t = total_t.log()
        student = (logits.gather(1, ids) - m_v[:, None]) / temperature - log_total_t[:, None]  # (C, k)
        top_e = e_t.gather(1, ids)  # (C, k)
        rest = tiny = rest_weights = None
        if teacher_logp.shape[1] > k:  # the rest bucket
            rest = e_t.scatter_(1, ids, 0.0).sum(-1)  # (C,) a sum of the rest: no cancellation
            e_t.scatter_(1, ids, top_e)  # restore
            log_rest = rest.log() - log_total_t
            tiny = torch.nonzero(rest < _TINY).squeeze(1)
            if len(tiny):
                masked = (logits[tiny, :vocab_size] / temperature).scatter_(1, ids[tiny], float("-inf"))
                lse = masked.logsumexp(-1)  # (n,)
                log_rest[tiny] = lse - (m_v[tiny] / temperature + log_total_t[tiny])
                rest_weights = (masked - lse[:, None]).exp_()  # (n, V) q_j / r, exactly
            student = torch.cat([student, log_rest[:, None]], dim=1)  # (C, k + 1)

        needs_grad = ctx.needs_input_grad[0]
        with torch.enable_grad():
            leaf = student.detach().requires_grad_(needs_grad)
            kd = get_divergence(spec.divergence)(leaf, teacher_logp, spec.beta).sum() * temperature**2
            grad_buckets = torch.autograd.grad(kd, leaf)[0] if needs_grad else None  # (C, K)
        top1 = ids.gather(1, teacher_logp[:, :k].argmax(-1, keepdim=True)).squeeze(1)  # (C,)
        agree = (logits[index, top1] == m_v).sum()

        if needs_grad:
            ctx.save_for_backward(e, total, None if shared else e_t, total_t, top_e, rest, tiny, rest_weights,
                                  grad_buckets, ids, targets)
            ctx.shared, ctx.temperature, ctx.vocab_size = shared, temperature, vocab_size
        ctx.mark_non_differentiable(agree)
        return kd.detach(), ce, agree

    @staticmethod
    def backward(ctx, grad_kd, grad_ce, _grad_agree):
        e, total, e_t, total_t, top_e, rest, tiny, rest_weights, grad_buckets, ids, targets = ctx.saved_tensors
        k, scale = ids.shape[1], grad_kd / ctx.temperature
        sum_g = grad_buckets.sum(-1)  # (C,)
        coef_top = -sum_g / total_t  # (C,) on every entry of the vocabulary: - q_j sum_b G_b
        coef_rest = coef_top
        if rest is not None:
            per_rest = grad_buckets[:, k] / rest
            if len(tiny):
                per_rest[tiny] = 0.0  # handled with the exact weights below
            coef_rest = coef_top + per_rest  # (C,) ... + G_rest q_j / r outside the top-k
        if ctx.shared:
            grad = e.mul_((grad_ce / total + scale * coef_rest)[:, None])  # (C, V) in place of e
            kd_part = grad
        else:
            grad = e.mul_((grad_ce / total)[:, None])  # (C, Vs)
            kd_part = grad[:, : ctx.vocab_size]
            kd_part.add_(e_t.mul_((scale * coef_rest)[:, None]))
        # the top-k entries got coef_rest; they need coef_top plus G_i instead
        kd_part.scatter_add_(1, ids, scale * (top_e * (coef_top - coef_rest)[:, None] + grad_buckets[:, :k]))
        if rest_weights is not None:
            kd_part[tiny] += scale * grad_buckets[tiny, k, None] * rest_weights
        grad.index_put_((torch.arange(len(targets), device=grad.device), targets), -grad_ce.expand(len(targets)),
                        accumulate=True)
        return grad, None, None, None, None, None


def sparse_chunk_terms(student_logits, teacher, rows: slice, targets, spec):
    """KD sum (with ``T**2``), CE sum and top-1 agreement count over one chunk, for a ``SparseTeacherSignal``."""
    ids, teacher_logp = teacher.buckets(rows, student_logits.device, spec.temperature)  # (C, k), (C, K)
    return _SparseTerms.apply(student_logits, ids, teacher_logp, targets, teacher.vocab_size, spec)
