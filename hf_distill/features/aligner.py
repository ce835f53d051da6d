"""`FeatureAligner`: learned projectors plus the loss that pulls student hidden states towards the teacher's.

The aligner is an ``nn.Module`` of its own, never a submodule of the student: its parameters are optimised with the
student (an extra optimizer param group), saved in checkpoint directories by
:mod:`hf_distill.training.extra_modules`, and absent from ``trainer.model``, so ``save_model``/``push_to_hub`` publish
a clean student that loads with ``from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hf_distill.features.layers import LayerPair
from hf_distill.losses.features import attention_map_loss, get_feature_loss
from hf_distill.models.introspect import loss_rows

PROJECTORS = ("linear", "identity")


def build_projector(kind: str, student_width: int, teacher_width: int) -> nn.Module:
    """Maps student states ``(N, H_s)`` into the teacher's width ``H_t`` (FitNets' regressor)."""
    if kind == "linear":
        return nn.Linear(student_width, teacher_width)
    if kind == "identity":
        if student_width != teacher_width:
            raise ValueError(
                f"feature_projector='identity' needs equal widths, but the student's hidden size is {student_width} "
                f"and the teacher's {teacher_width}. Use feature_projector='linear'."
            )
        return nn.Identity()
    raise ValueError(f"Unknown feature_projector {kind!r}. Use one of: {', '.join(PROJECTORS)}.")


class FeatureAligner(nn.Module):
    """Hidden-state (and optionally attention-map) alignment over a fixed list of layer pairs.

    Args:
        pairs: ``(teacher_layer, student_layer)`` indices into ``output_hidden_states``.
        student_width, teacher_width: hidden sizes.
        loss: ``"mse"``, ``"cosine"`` or ``"nmse"`` (:mod:`hf_distill.losses.features`).
        pair_weights: one weight per pair.
        projector: ``"linear"`` (learned) or ``"identity"``.
        attention: also compare attention maps at the pairs whose layers are both >= 1 (0 is the embedding output,
            which has none).
        hidden: compare hidden states (False for attention-map transfer alone: no projectors are built).
    """

    def __init__(
        self,
        pairs: Sequence[LayerPair],
        student_width: int,
        teacher_width: int,
        loss: str = "mse",
        pair_weights: Sequence[float] | None = None,
        projector: str = "linear",
        attention: bool = False,
        hidden: bool = True,
    ):
        super().__init__()
        self.pairs = [tuple(pair) for pair in pairs]
        self.loss_fn = get_feature_loss(loss)
        self.pair_weights = list(pair_weights) if pair_weights is not None else [1.0] * len(self.pairs)
        self.projectors = nn.ModuleList(
            build_projector(projector, student_width, teacher_width) for _ in (self.pairs if hidden else ())
        )
        self.attention_pairs = [(t, s) for t, s in self.pairs if t >= 1 and s >= 1] if attention else []
        if attention and not self.attention_pairs:
            raise ValueError("attention_weight > 0 needs a feature_layers pair of two decoder layers (both >= 1); "
                             f"the pairs are {self.pairs}.")

    def forward(
        self,
        student_states: Sequence[torch.Tensor],
        teacher_states: Sequence[torch.Tensor],
        loss_mask: torch.Tensor,
        student_attentions: Sequence[torch.Tensor] | None = None,
        teacher_attentions: Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums over the loss tokens (divide by their count yourself): the weighted hidden-state loss and the
        attention-map loss (0 when attention transfer is off).

        ``student_states``/``teacher_states`` are the models' ``hidden_states`` tuples of ``(B, T, H)`` tensors,
        ``loss_mask`` is ``(B, T-1)``; attentions are ``(B, heads, T, T)`` per decoder layer. Teacher tensors should
        be detached: alignment moves the student (and the projectors), never the teacher.
        """
        hidden = loss_mask.new_zeros((), dtype=torch.float32)
        for (t, s), weight, projector in zip(self.pairs, self.pair_weights, self.projectors):
            student = loss_rows(student_states[s], loss_mask)  # (N, H_s)
            teacher = loss_rows(teacher_states[t], loss_mask).to(student.device)  # (N, H_t)
            projected = projector(student.to(_param_dtype(projector, student.dtype)))  # (N, H_t)
            hidden = hidden + weight * self.loss_fn(projected, teacher)
        attention = hidden.new_zeros(())
        for t, s in self.attention_pairs:
            student = loss_rows(student_attentions[s - 1].transpose(1, 2), loss_mask)  # (N, heads, T)
            teacher = loss_rows(teacher_attentions[t - 1].transpose(1, 2), loss_mask).to(student.device)
            attention = attention + attention_map_loss(student, teacher)
        return hidden, attention


def _param_dtype(module: nn.Module, default: torch.dtype) -> torch.dtype:
    param = next(module.parameters(), None)
    return default if param is None else param.dtype
