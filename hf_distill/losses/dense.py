"""The per-chunk loss terms and their gradient for a dense teacher under the forward KL, written by hand.

Computes exactly what the generic path of :mod:`hf_distill.losses.chunked` computes through autograd (the naive
version, and the reference in the tests)::

    student_logp, teacher_logp, top1 = signal.align(logits, rows, T)    # (C, V) log_softmax(. / T) of both
    kd = T**2 * (teacher_logp.exp() * (teacher_logp - student_logp)).sum()
    ce = cross_entropy(logits, targets, reduction="sum")                 # over the student's full vocabulary, T = 1
    grad = d(alpha * ce + (1 - alpha) * kd) / d logits

Forward KL (and ``jsd`` with ``beta=0``, which is the same loss) is the default objective, so it gets this path.
Autograd keeps more ``(C, V)`` float32 tensors alive per chunk (student log-probs, teacher log-probs and probs, their
product, the incoming gradient); here the student logits are overwritten by their own gradient and the teacher
logits by the teacher's log-probabilities: four are alive at the peak (student logits, teacher logits, teacher
``exp``, and the product ``torch.linalg.vecdot`` materialises; the counts of every path are in
:mod:`hf_distill.losses.chunked`). With ``q_T = softmax(s[:V] / T)``,
``p = softmax(t / T)`` and ``y`` the one-hot target::

    d kd / d s[:V] = T (q_T - p)          d ce / d s = softmax(s) - y
"""

from __future__ import annotations

import torch

from hf_distill.losses.targets import DenseTeacherSignal


def is_forward_kl(divergence: str, beta: float) -> bool:
    return divergence == "forward_kl" or (divergence == "jsd" and beta == 0.0)


@torch.no_grad()
def dense_forward_kl_terms(
    logits: torch.Tensor, teacher: DenseTeacherSignal, rows: slice, targets: torch.Tensor, temperature: float,
    alpha: float, need_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """KD sum (with ``T**2``), CE sum, top-1 agreement count, and ``d(alpha ce + (1 - alpha) kd) / d logits``.

    ``logits`` ``(C, Vs)`` float32 is overwritten (by the gradient when ``need_grad``): pass a tensor you own.
    """
    T, V = temperature, teacher.vocab_size
    s = logits  # (C, Vs)
    index = torch.arange(s.shape[0], device=s.device)
    t = teacher.logits(rows)  # (C, V) float32
    if teacher.lm_head_weight is None:
        t = t.clone()  # may be a view of the caller's logits: not ours to overwrite
    if T != 1.0:
        t.div_(T)
    t_max, top1 = t.max(-1)  # (C,) x2; one max() gives both, faster than a separate argmax() on CPU
    e = t.sub_(t_max[:, None]).exp()  # (C, V) unnormalised teacher probabilities, p = e / z
    z = e.sum(-1)  # (C,)
    log_p = t.sub_(z.log()[:, None])  # (C, V) in place of t
    neg_entropy = torch.linalg.vecdot(e, log_p) / z  # (C,) sum p log p (vecdot allocates the (C, V) product)
    del log_p, t
    m_v = s[:, :V].amax(-1)  # (C,)
    agree = (s[index, top1] == m_v).sum()  # the student's max at the teacher's top-1 (ties count)
    if T == 1.0 and V == s.shape[1]:  # the default: CE and KD share one softmax, computed in place
        s.sub_(m_v[:, None])  # shifted logits s' = s - max: exp cannot overflow
        target = s[index, targets]  # (C,)
        cross = torch.linalg.vecdot(e, s) / z  # (C,) sum p s'
        q = s.exp_()  # (C, V) unnormalised student probabilities
        total = q.sum(-1)  # (C,)
        lse = total.log()  # (C,) logsumexp(s')
        ce = (lse - target).sum()
        kd = (neg_entropy - cross + lse).sum()  # sum p (log p - s' + lse)
        if not need_grad:
            return kd, ce, agree, None
        grad = q.mul_(total.reciprocal()[:, None])  # softmax(s): alpha (q - y) + (1 - alpha) (q - p), y below
        grad.addcmul_(e, ((alpha - 1.0) / z)[:, None])
        grad[index, targets] -= alpha
        return kd, ce, agree, grad

    p = e.div_(z[:, None])  # (C, V)
    lse = torch.logsumexp(s, -1)  # (C,) over the student's full vocabulary, T = 1
    ce = (lse - s[index, targets]).sum()
    s_t = s[:, :V] if T == 1.0 else s[:, :V] / T  # (C, V)
    lse_t = torch.logsumexp(s_t, -1)  # (C,)
    kd = (neg_entropy - torch.linalg.vecdot(p, s_t) + lse_t).sum() * (T * T)  # sum p (log p - s_t + lse_t)
    if not need_grad:
        return kd, ce, agree, None
    shift = s_t.sub_ if T != 1.0 else s_t.sub  # s_t is our own tensor when T != 1, a view of s otherwise
    q_t = shift(lse_t[:, None]).exp_()  # (C, V) softmax(s[:V] / T)
    q_t.sub_(p).mul_((1.0 - alpha) * T)  # (1 - alpha) T**2 * (q_T - p) / T
    del s_t
    grad = s.sub_(lse[:, None]).exp_().mul_(alpha)  # alpha softmax(s)
    grad[:, :V] += q_t
    grad[index, targets] -= alpha
    return kd, ce, agree, grad
