"""Distillation losses: pure per-token divergences and one chunked, fused objective built on them."""

from hf_distill.losses.chunked import (
    LossOutput,
    LossSpec,
    fused_distillation_loss,
    loss_normalizer,
)
from hf_distill.losses.divergences import DIVERGENCES, get_divergence

__all__ = ["DIVERGENCES", "LossOutput", "LossSpec", "fused_distillation_loss", "get_divergence", "loss_normalizer"]
