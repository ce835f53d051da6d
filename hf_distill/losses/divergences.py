"""Per-token divergences between a teacher and a student distribution.

Every function here is pure: it takes temperature-scaled *log-probabilities* of shape ``(N, V)`` (one row per
token that carries loss) and returns one divergence per row, shape ``(N,)``, in nats. Summing, temperature
scaling, ``T**2`` and normalisation live in :mod:`hf_distill.losses.chunked`, so that each divergence is a few
lines of math and can be checked against its textbook formula.

Names follow the usual convention in the distillation literature: ``p`` is the teacher, ``q`` the student.

==================  =====================================================  ==========================
name                formula (per token, sums over the vocabulary)           notes
==================  =====================================================  ==========================
forward_kl          KL(p || q) = sum p (log p - log q)                      Hinton et al.; mean-seeking
reverse_kl          KL(q || p) = sum q (log q - log p)                      MiniLLM; mode-seeking
jsd                 beta KL(p || m) + (1 - beta) KL(q || m),                GKD (Agarwal et al.), TRL's
                    m = beta p + (1 - beta) q                               ``beta`` semantics
tvd                 1/2 sum |p - q|                                         bounded in [0, 1]
skew_forward_kl     KL(p || beta p + (1 - beta) q)                          DistiLLM (Ko et al.)
skew_reverse_kl     KL(q || beta q + (1 - beta) p)                          DistiLLM
==================  =====================================================  ==========================

For ``jsd`` the end points follow TRL's ``generalized_jsd_loss``: ``beta=0`` is forward KL and ``beta=1`` is
reverse KL (the mixture formula itself degenerates to 0 there), so configs ported from TRL's GKD mean the same.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


def _kl(logp_a: torch.Tensor, logp_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) per row from finite log-probabilities (log-softmax outputs; an underflowed p_a is an exact 0)."""
    return (logp_a.exp() * (logp_a - logp_b)).sum(-1)  # (N, V) -> (N,)


def _log_mixture(logp_a: torch.Tensor, logp_b: torch.Tensor, weight_a: float) -> torch.Tensor:
    """log(w a + (1 - w) b), computed in log space so that tiny probabilities do not underflow."""
    return torch.logaddexp(logp_a + math.log(weight_a), logp_b + math.log1p(-weight_a))


def forward_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    return _kl(teacher_logp, student_logp)


def reverse_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    return _kl(student_logp, teacher_logp)


def jsd(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    if beta == 0.0:
        return forward_kl(student_logp, teacher_logp)
    if beta == 1.0:
        return reverse_kl(student_logp, teacher_logp)
    log_m = _log_mixture(teacher_logp, student_logp, beta)  # (N, V)
    return beta * _kl(teacher_logp, log_m) + (1.0 - beta) * _kl(student_logp, log_m)


def tvd(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float = 0.5) -> torch.Tensor:
    return 0.5 * (teacher_logp.exp() - student_logp.exp()).abs().sum(-1)


def skew_forward_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    if beta == 1.0:
        return torch.zeros(student_logp.shape[:-1], dtype=student_logp.dtype, device=student_logp.device)
    return _kl(teacher_logp, _log_mixture(teacher_logp, student_logp, beta) if beta > 0 else student_logp)


def skew_reverse_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    if beta == 1.0:
        return torch.zeros(student_logp.shape[:-1], dtype=student_logp.dtype, device=student_logp.device)
    return _kl(student_logp, _log_mixture(student_logp, teacher_logp, beta) if beta > 0 else teacher_logp)


DIVERGENCES: dict[str, Callable[..., torch.Tensor]] = {
    "forward_kl": forward_kl,
    "reverse_kl": reverse_kl,
    "jsd": jsd,
    "tvd": tvd,
    "skew_forward_kl": skew_forward_kl,
    "skew_reverse_kl": skew_reverse_kl,
}


def get_divergence(name: str) -> Callable[..., torch.Tensor]:
    """Look a divergence up by name, with an error that lists the valid names."""
    try:
        return DIVERGENCES[name]
    except KeyError:
        raise ValueError(
            f"Unknown distillation loss {name!r}. Choose one of: {', '.join(sorted(DIVERGENCES))} "
            "(set `kd_loss` in DistillationConfig, `--kd_loss` on the command line)."
        ) from None
