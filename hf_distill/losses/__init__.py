"""Distillation losses: pure per-token divergences and one chunked, fused objective built on them."""

from hf_distill.losses.chunked import (
    LossOutput,
    LossSpec,
    default_chunk_size,
    fused_distillation_loss,
    loss_normalizer,
)
from hf_distill.losses.divergences import DIVERGENCES, get_divergence

__all__ = [
    "DIVERGENCES", "LossOutput", "LossSpec", "default_chunk_size", "fused_distillation_loss", "get_divergence",
    "loss_normalizer",
]
