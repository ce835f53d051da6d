"""Pure losses between intermediate representations: hidden states and attention maps.

Each function takes the ``N`` loss tokens as rows and returns a **sum** over them (one value per row summed), so the
caller divides once by the loss tokens of the whole accumulated batch, exactly like the logit KD term
(:mod:`hf_distill.losses.chunked`). Naive equivalents, per token row ``s`` (student, already projected to the
teacher's width) and ``t`` (teacher)::

    mse    = ((s - t) ** 2).mean()
    cosine = 1 - dot(s, t) / (|s| |t|)
    nmse   = ((z(s) - z(t)) ** 2).mean(),   z(x) = (x - x.mean()) / x.std()     # scale-free MSE

``nmse`` standardises each token vector first (a layer norm without weights), so a teacher whose residual stream has
a large norm, or a different norm at each depth, does not dominate the objective; ``mse`` keeps magnitudes
(FitNets); ``cosine`` keeps only directions.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

_EPS = 1e-6


def mse_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Sum over rows of the mean squared error of ``(N, H)`` states."""
    return (student.float() - teacher.float()).pow(2).mean(-1).sum()


def cosine_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Sum over rows of ``1 - cosine similarity`` of ``(N, H)`` states (0 when they point the same way)."""
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=_EPS)).sum()


def normalized_mse_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Sum over rows of the MSE between per-row standardised ``(N, H)`` states (see the module docstring)."""
    width = student.shape[-1]
    standardize = lambda x: F.layer_norm(x.float(), (width,), eps=_EPS)  # noqa: E731
    return mse_loss(standardize(student), standardize(teacher))


FEATURE_LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mse": mse_loss,
    "cosine": cosine_loss,
    "nmse": normalized_mse_loss,
}


def get_feature_loss(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    try:
        return FEATURE_LOSSES[name]
    except KeyError:
        raise ValueError(f"Unknown feature loss {name!r}. Use one of: {', '.join(sorted(FEATURE_LOSSES))}.") from None


def attention_map_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) between attention distributions, averaged over heads and summed over query rows.

    Args:
        student, teacher: ``(N, heads, T)`` attention probabilities of N query tokens (each row sums to 1 over the
            T key positions; masked keys hold 0). Head counts must match: head ``h`` of one model is compared with
            head ``h`` of the other, as in MiniLM.

    Naive equivalent: ``sum_n mean_h sum_k t * (log t - log s)``. Keys where the teacher puts no mass contribute 0
    (``xlogy``); student probabilities are clamped away from 0 so the loss stays finite.
    """
    if student.shape != teacher.shape:
        raise ValueError(f"Attention maps must have the same shape (N, heads, T), got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}.")
    teacher = teacher.float()
    log_student = student.float().clamp_min(1e-12).log()  # (N, heads, T)
    kl = torch.xlogy(teacher, teacher) - teacher * log_student  # (N, heads, T)
    return kl.sum(-1).mean(-1).sum()
