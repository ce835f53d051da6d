"""Checks of the feature-alignment fields of `DistillationConfig` (run in its __post_init__); co-distillation's
are beside it, in :mod:`hf_distill.objectives.codistill`."""

from __future__ import annotations

from hf_distill.features.aligner import PROJECTORS
from hf_distill.features.layers import parse_layer_pairs, parse_pair_weights
from hf_distill.losses.features import get_feature_loss


def features_enabled(config) -> bool:
    """True when the run collects intermediate hidden states (hidden-state or attention-map transfer)."""
    return config.feature_weight > 0 or config.attention_weight > 0


def check_feature_settings(config) -> None:
    for name in ("feature_weight", "attention_weight"):
        if not getattr(config, name) >= 0:
            raise ValueError(f"{name} must be >= 0 (0 turns it off), got {getattr(config, name)}.")
    get_feature_loss(config.feature_loss)
    pairs = parse_layer_pairs(config.feature_layers)
    if pairs is not None:  # 'uniform' is resolved (and its weights counted) once the models' depths are known
        parse_pair_weights(config.feature_pair_weights, len(pairs))
    if config.feature_projector not in PROJECTORS:
        raise ValueError(f"feature_projector must be one of {list(PROJECTORS)}, got {config.feature_projector!r}.")
    require_live_teacher_for_features(config, config.teacher_cache is not None)


def require_live_teacher_for_features(config, uses_cache: bool) -> None:
    if uses_cache and features_enabled(config):
        raise ValueError("Feature/attention alignment (feature_weight, attention_weight > 0) need a live teacher (its "
                         "hidden states), not a teacher_cache of logits: pass teacher_model_name_or_path instead, or "
                         "set feature_weight=0, attention_weight=0.")
