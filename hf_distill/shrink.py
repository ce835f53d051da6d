"""Shrink a teacher into a student that starts from the teacher's own weights (Minitron-style pruning init).

A :class:`ShrinkSpec` keeps some of the teacher's decoder layers (chosen by a named strategy) and optionally narrows
the residual stream (``hidden_size``), the MLP (``intermediate_size``) and attention (``num_attention_heads``,
``num_key_value_heads``; ``head_dim`` is kept). Every student tensor is a slice of the matching teacher tensor, so
the student starts close to the teacher instead of from noise. Kept channels are chosen by weight magnitude
(``width_strategy="magnitude"``, the cheap proxy for Minitron's activation importance) or are the first ones
(``"first"``). Works for Llama-layout decoders (Llama, Mistral, Qwen2/3, ...): the parameter names below.

Naive equivalent for one MLP layer with ``intermediate_size=k``::

    keep = (gate.weight.norm(dim=1) * up.weight.norm(dim=1) * down.weight.norm(dim=0)).topk(k).indices.sort().values
    student.gate.weight = teacher.gate.weight[keep];  student.down.weight = teacher.down.weight[:, keep]
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from transformers import AutoModelForCausalLM, PretrainedConfig

LAYER_STRATEGIES = ("uniform", "first", "last", "explicit")
WIDTH_STRATEGIES = ("magnitude", "first")


@dataclass(frozen=True)
class ShrinkSpec:
    """How to cut a student out of its teacher. Fields left as ``None`` keep the teacher's value."""

    num_layers: int | None = None
    layer_strategy: str = "uniform"
    layers: tuple[int, ...] | None = None  # with layer_strategy="explicit": teacher layer indices, in order
    hidden_size: int | None = None
    intermediate_size: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    width_strategy: str = "magnitude"

    def __post_init__(self):
        if self.layer_strategy not in LAYER_STRATEGIES:
            raise ValueError(f"shrink.layer_strategy={self.layer_strategy!r}: use one of {list(LAYER_STRATEGIES)}")
        if self.width_strategy not in WIDTH_STRATEGIES:
            raise ValueError(f"shrink.width_strategy={self.width_strategy!r}: use one of {list(WIDTH_STRATEGIES)}")
        if (self.layer_strategy == "explicit") != (self.layers is not None):
            raise ValueError("shrink: give `layers: [i, j, ...]` together with `layer_strategy: explicit` (and only then)")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        for name in ("num_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"shrink.{name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}


@dataclass
class ShrinkPlan:
    """The teacher indices each student dimension keeps (recorded in the model card and checked by tests)."""

    layers: list[int]
    hidden: list[int]
    intermediate: dict[int, list[int]] = field(default_factory=dict)  # student layer -> kept MLP neurons
    heads: dict[int, list[int]] = field(default_factory=dict)  # student layer -> kept query heads
    kv_heads: dict[int, list[int]] = field(default_factory=dict)  # student layer -> kept key/value heads


def select_layers(num_teacher_layers: int, spec: ShrinkSpec) -> list[int]:
    """Teacher layer indices to keep. ``uniform`` spreads them evenly and always keeps the first and the last."""
    if spec.layer_strategy == "explicit":
        bad = [i for i in spec.layers if not 0 <= i < num_teacher_layers]
        if bad or len(set(spec.layers)) != len(spec.layers):
            raise ValueError(f"shrink.layers={list(spec.layers)}: need distinct indices in [0, {num_teacher_layers})")
        return list(spec.layers)
    keep = spec.num_layers or num_teacher_layers
    if keep > num_teacher_layers:
        raise ValueError(f"shrink.num_layers={keep} exceeds the teacher's {num_teacher_layers} layers")
    if spec.layer_strategy == "first":
        return list(range(keep))
    if spec.layer_strategy == "last":
        return list(range(num_teacher_layers - keep, num_teacher_layers))
    if keep == 1:
        return [0]
    return sorted({round(i * (num_teacher_layers - 1) / (keep - 1)) for i in range(keep)})


def head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def shrunk_config(teacher_config: PretrainedConfig, spec: ShrinkSpec) -> PretrainedConfig:
    """The student's config: the teacher's, with the shrunk sizes (no weights needed, so dry runs can use it)."""
    config = teacher_config.__class__.from_dict(teacher_config.to_dict())
    heads = spec.num_attention_heads or teacher_config.num_attention_heads
    kv_teacher = getattr(teacher_config, "num_key_value_heads", None) or teacher_config.num_attention_heads
    kv = spec.num_key_value_heads or min(kv_teacher, heads)
    if heads > teacher_config.num_attention_heads or kv > kv_teacher or heads % kv:
        raise ValueError(
            f"shrink: num_attention_heads={heads} / num_key_value_heads={kv} must not exceed the teacher's "
            f"{teacher_config.num_attention_heads}/{kv_teacher}, and heads must be a multiple of kv heads"
        )
    for name, value in (("hidden_size", spec.hidden_size), ("intermediate_size", spec.intermediate_size)):
        if value is not None and value > getattr(teacher_config, name):
            raise ValueError(f"shrink.{name}={value} exceeds the teacher's {getattr(teacher_config, name)}")
    config.head_dim = head_dim(teacher_config)  # kept, so hidden_size need not equal heads * head_dim
    config.num_hidden_layers = len(select_layers(teacher_config.num_hidden_layers, spec))
    config.hidden_size = spec.hidden_size or teacher_config.hidden_size
    config.intermediate_size = spec.intermediate_size or teacher_config.intermediate_size
    config.num_attention_heads, config.num_key_value_heads = heads, kv
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [teacher_config.layer_types[i] for i in select_layers(teacher_config.num_hidden_layers,
                                                                                 spec)]
    return config


def _top(scores: torch.Tensor, k: int, strategy: str) -> list[int]:
    if strategy == "first" or k >= scores.numel():
        return list(range(k))
    return sorted(scores.float().topk(k).indices.tolist())


def plan_shrink(teacher: nn.Module, spec: ShrinkSpec) -> ShrinkPlan:
    """Choose the kept layers, residual channels, MLP neurons and heads from the teacher's weights."""
    config, base = teacher.config, teacher.get_decoder()
    student_config = shrunk_config(config, spec)
    layers = select_layers(config.num_hidden_layers, spec)
    embed = teacher.get_input_embeddings().weight  # (V, H)
    plan = ShrinkPlan(layers, _top(embed.detach().norm(dim=0), student_config.hidden_size, spec.width_strategy))
    d = head_dim(config)
    kv_teacher = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    group = config.num_attention_heads // kv_teacher
    for new, old in enumerate(layers):
        layer = base.layers[old]
        mlp, attn = layer.mlp, layer.self_attn
        with torch.no_grad():
            neurons = mlp.gate_proj.weight.norm(dim=1) * mlp.up_proj.weight.norm(dim=1) * mlp.down_proj.weight.norm(dim=0)
            o = attn.o_proj.weight.reshape(config.hidden_size, config.num_attention_heads, d)  # (H, heads, d)
            head_scores = o.norm(dim=(0, 2))  # (heads,)
        plan.intermediate[new] = _top(neurons, student_config.intermediate_size, spec.width_strategy)
        kv_scores = head_scores.reshape(kv_teacher, group).sum(1)
        kv_keep = _top(kv_scores, student_config.num_key_value_heads, spec.width_strategy)
        per_group = student_config.num_attention_heads // student_config.num_key_value_heads
        plan.kv_heads[new] = kv_keep
        plan.heads[new] = [g * group + h for g in kv_keep
                           for h in _top(head_scores[g * group:(g + 1) * group], per_group, spec.width_strategy)]
    return plan


def _rows(heads: list[int], d: int) -> torch.Tensor:
    return torch.tensor([h * d + i for h in heads for i in range(d)], dtype=torch.long)


# parameter-name suffix -> the index set of each dimension ("v" = vocabulary, kept whole)
_LAYOUT = {
    "embed_tokens.weight": ("v", "h"), "lm_head.weight": ("v", "h"), "norm.weight": ("h",),
    "input_layernorm.weight": ("h",), "post_attention_layernorm.weight": ("h",),
    "q_proj.weight": ("q", "h"), "q_proj.bias": ("q",), "k_proj.weight": ("kv", "h"), "k_proj.bias": ("kv",),
    "v_proj.weight": ("kv", "h"), "v_proj.bias": ("kv",), "o_proj.weight": ("h", "q"), "o_proj.bias": ("h",),
    "q_norm.weight": ("d",), "k_norm.weight": ("d",),
    "gate_proj.weight": ("i", "h"), "up_proj.weight": ("i", "h"), "down_proj.weight": ("h", "i"),
}
_LAYER = re.compile(r"\.layers\.(\d+)\.")


def shrink_model(teacher: nn.Module, spec: ShrinkSpec, dtype: torch.dtype | None = None) -> tuple[nn.Module, ShrinkPlan]:
    """A student whose every parameter is the slice of the teacher's that :func:`plan_shrink` chose."""
    plan = plan_shrink(teacher, spec)
    config = shrunk_config(teacher.config, spec)
    student = AutoModelForCausalLM.from_config(config, dtype=dtype or teacher.dtype)
    source = teacher.state_dict()
    d = head_dim(teacher.config)
    hidden = torch.tensor(plan.hidden, dtype=torch.long)
    with torch.no_grad():
        for name, param in student.state_dict().items():
            # the exact last two name parts ("q_norm.weight"): a suffix match would let "norm.weight" shadow
            # "input_layernorm.weight" or Qwen3's "q_norm.weight"
            suffix = ".".join(name.rsplit(".", 2)[-2:])
            if suffix not in _LAYOUT:
                raise NotImplementedError(f"shrink does not know how to slice {name!r} ({type(teacher).__name__})")
            match = _LAYER.search(name)
            new = int(match.group(1)) if match else None
            old_name = _LAYER.sub(f".layers.{plan.layers[new]}.", name) if match else name
            index = {"h": hidden, "v": None, "d": None,
                     "i": torch.tensor(plan.intermediate.get(new, []), dtype=torch.long),
                     "q": _rows(plan.heads.get(new, []), d), "kv": _rows(plan.kv_heads.get(new, []), d)}
            value = source[old_name]
            for dim, kind in enumerate(_LAYOUT[suffix]):
                if index[kind] is not None:
                    value = value.index_select(dim, index[kind])
            param.copy_(value)
    student.generation_config = teacher.generation_config
    return student, plan
