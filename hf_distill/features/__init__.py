"""Latent alignment: match the student's hidden states (and attention maps) to the teacher's, not only its outputs.

``layers`` chooses teacher->student layer pairs, ``aligner`` holds the learned projectors and turns states into a
loss (the math is in :mod:`hf_distill.losses.features`), ``settings`` checks the config fields. Elsewhere:
:mod:`hf_distill.objectives.aligned` runs both models and combines the loss with the logit KD (and with
co-distillation, :mod:`hf_distill.objectives.codistill`); :mod:`hf_distill.training.extra_modules` saves the projectors
beside the student's checkpoints and never inside the student.
"""

from hf_distill.features.aligner import FeatureAligner, build_projector
from hf_distill.features.layers import (
    parse_layer_pairs,
    resolve_layer_pairs,
    uniform_layer_pairs,
)

__all__ = ["FeatureAligner", "build_projector", "parse_layer_pairs", "resolve_layer_pairs", "uniform_layer_pairs"]
