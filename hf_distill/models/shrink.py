"""Shrink a teacher into a student that starts from the teacher's own weights (Minitron-style pruning init).

A :class:`ShrinkSpec` keeps some of the teacher's decoder layers (chosen by a named strategy) and optionally narrows
the residual stream (``hidden_size``), the MLP (``intermediate_size``) and attention (``num_attention_heads``,
``num_key_value_heads``; ``head_dim`` is kept). Every student tensor is a slice of the matching teacher tensor, so
the student starts close to the teacher instead of from noise. Kept channels are chosen by their activations on
calibration batches (``width_strategy="activation"``: Minitron's width importance), by weight magnitude
(``"magnitude"``, a proxy that needs no data) or are the first ones (``"first"``). Kept layers are spread evenly
(``layer_strategy="uniform"``), the first/last ones, an explicit list, or the most important ones on calibration
batches (``"importance"``: :mod:`hf_distill.models.importance`, by ``layer_importance``: ``block_influence``, ShortGPT's
``1 - cos(input, output)``, or ``skip_kl``, the output's KL when that one layer is skipped). Measured on
SmolLM2-135M-Instruct (``benchmarks/prune_recover.py``): see the README's pruning table.

Which slice a tensor takes follows rules, not model families: the name of its module gives the kind of index of each
dimension (``q_proj.weight``: query rows x residual channels; Phi3's fused ``gate_up_proj.weight``: the kept MLP
neurons of the gate half, then of the up half, x residual channels) and its shape, against the teacher's and the
student's config, confirms the kind (``q_norm.weight`` spans one head in Qwen3/Gemma3, every query row in OLMo2). A
tensor that no rule fits is refused by name before any training (:func:`check_shrinkable`, on the meta device);
a shrink that only drops layers copies every tensor whole, whatever its name. Per-layer config lists
(``layer_types``, SmolLM3's ``no_rope_layers``, ...) follow the kept layers. Tested on Llama, Mistral, Qwen2,
Qwen3, Gemma, Gemma2, Gemma3, Phi3, Phi, OLMo2, OLMo3, SmolLM3, Starcoder2, Cohere, GLM4 and Granite; GPT-2,
GPT-NeoX, Falcon and mixtures of experts only drop layers (a width change is refused). Gemma scales its embeddings by
``sqrt(hidden_size)`` of the model's own width, so a narrower Gemma student's embeddings enter its residual stream
``sqrt(H_student / H_teacher)`` times as strongly as the teacher's; the weights are still copied unchanged (with tied
embeddings a rescale would sharpen the logits by the same factor) and distillation corrects the difference.

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

from hf_distill.models.importance import (
    LAYER_IMPORTANCE,
    activation_importance,
    layer_importance,
)

LAYER_STRATEGIES = ("uniform", "first", "last", "explicit", "importance")
WIDTH_STRATEGIES = ("magnitude", "first", "activation")
CALIBRATED = {"layer_strategy": "importance", "width_strategy": "activation"}  # the strategies that need data


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
    layer_importance: str = "block_influence"  # with layer_strategy="importance": block_influence or skip_kl
    calibration_examples: int = 256  # training examples the calibrated strategies score on (the cascade's choice)

    @property
    def needs_calibration(self) -> bool:
        return any(getattr(self, name) == value for name, value in CALIBRATED.items())

    def __post_init__(self):
        if self.layer_strategy not in LAYER_STRATEGIES:
            raise ValueError(f"shrink.layer_strategy={self.layer_strategy!r}: use one of {list(LAYER_STRATEGIES)}")
        if self.width_strategy not in WIDTH_STRATEGIES:
            raise ValueError(f"shrink.width_strategy={self.width_strategy!r}: use one of {list(WIDTH_STRATEGIES)}")
        if self.layer_importance not in LAYER_IMPORTANCE:
            raise ValueError(f"shrink.layer_importance={self.layer_importance!r}: use one of {list(LAYER_IMPORTANCE)}")
        if (self.layer_strategy == "explicit") != (self.layers is not None):
            raise ValueError("shrink: give `layers: [i, j, ...]` together with `layer_strategy: explicit` (and only then)")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(i) for i in self.layers))
        for name in ("num_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                     "calibration_examples"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"shrink.{name} must be a positive integer, got {value!r}")

    def to_dict(self) -> dict:
        """The spec's values; the calibration knobs only where a calibrated strategy uses them."""
        unused = set() if self.needs_calibration else {"calibration_examples"}
        if self.layer_strategy != "importance":
            unused.add("layer_importance")
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()
                if v is not None and k not in unused}


@dataclass
class ShrinkPlan:
    """The teacher indices each student dimension keeps (recorded in the model card and checked by tests)."""

    layers: list[int]
    hidden: list[int]
    intermediate: dict[int, list[int]] = field(default_factory=dict)  # student layer -> kept MLP neurons
    heads: dict[int, list[int]] = field(default_factory=dict)  # student layer -> kept query heads
    kv_heads: dict[int, list[int]] = field(default_factory=dict)  # student layer -> kept key/value heads
    # with calibrated strategies: the layer scores per teacher layer, their metric, and the share of the teacher's
    # activation mass the kept neurons/heads/channels carry (what the stage card shows)
    scores: dict = field(default_factory=dict)


def select_layers(num_teacher_layers: int, spec: ShrinkSpec, scores: torch.Tensor | None = None) -> list[int]:
    """Teacher layer indices to keep. ``uniform`` spreads them evenly and always keeps the first and the last;
    ``importance`` keeps the highest ``scores`` (without scores, as in a dry run that only needs the sizes: uniform)."""
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
    if spec.layer_strategy == "importance" and scores is not None:
        return sorted(scores.float().topk(keep).indices.tolist())
    if keep == 1:
        return [0]
    return sorted({round(i * (num_teacher_layers - 1) / (keep - 1)) for i in range(keep)})


def head_dim(config: PretrainedConfig) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _kv_heads(config: PretrainedConfig) -> int:
    return getattr(config, "num_key_value_heads", None) or config.num_attention_heads


# Config lists with one entry per decoder layer (sliced like the layers) and lists of layer indices (renumbered).
_PER_LAYER_LISTS = ("layer_types", "mlp_layer_types", "no_rope_layers", "layer_rope_theta", "layers_block_type")
_LAYER_INDEX_LISTS = ("mlp_only_layers", "moe_layers")


def _carry_layer_lists(config: PretrainedConfig, teacher_config: PretrainedConfig, layers: list[int]) -> None:
    n = teacher_config.num_hidden_layers
    for name, value in teacher_config.to_dict().items():
        if "layer" not in name or not isinstance(value, (list, tuple)) or not value:
            continue
        if name in _PER_LAYER_LISTS and len(value) == n:
            setattr(config, name, [value[i] for i in layers])
        elif name in _LAYER_INDEX_LISTS:
            setattr(config, name, [new for new, old in enumerate(layers) if old in value])
        elif layers != list(range(n)):
            raise ValueError(f"shrink: cannot carry the per-layer config list {name}={value!r} over to the kept "
                             f"layers {layers}")


def shrunk_config(teacher_config: PretrainedConfig, spec: ShrinkSpec, layers: list[int] | None = None
                  ) -> PretrainedConfig:
    """The student's config: the teacher's, with the shrunk sizes (no weights needed, so dry runs can use it).
    ``layers``: the kept teacher layers when already chosen (importance pruning chooses them on data)."""
    missing = [name for name in ("hidden_size", "num_attention_heads", "num_hidden_layers", "vocab_size")
               if not isinstance(getattr(teacher_config, name, None), int)]
    if missing:
        raise NotImplementedError(f"shrink needs a decoder's config; model_type {teacher_config.model_type!r} has no "
                                  f"{', '.join(missing)} (a multimodal model? shrink its text model)")
    config = teacher_config.__class__.from_dict(teacher_config.to_dict())
    heads = spec.num_attention_heads or teacher_config.num_attention_heads
    kv_teacher = _kv_heads(teacher_config)
    kv = spec.num_key_value_heads or min(kv_teacher, heads)
    if heads > teacher_config.num_attention_heads or kv > kv_teacher or heads % kv:
        raise ValueError(
            f"shrink: num_attention_heads={heads} / num_key_value_heads={kv} must not exceed the teacher's "
            f"{teacher_config.num_attention_heads}/{kv_teacher}, and heads must be a multiple of kv heads"
        )
    for name, value in (("hidden_size", spec.hidden_size), ("intermediate_size", spec.intermediate_size)):
        teacher_value = getattr(teacher_config, name, None)
        if value is not None and not (isinstance(teacher_value, int) and value <= teacher_value):
            raise ValueError(f"shrink.{name}={value} exceeds the teacher's {teacher_value}")
    layers = layers if layers is not None else select_layers(teacher_config.num_hidden_layers, spec)
    try:
        config.head_dim = head_dim(teacher_config)  # kept, so hidden_size need not equal heads * head_dim
    except AttributeError:  # a read-only hidden_size // heads (Falcon): check_shrinkable refuses a width change
        pass
    config.num_hidden_layers = len(layers)
    config.hidden_size = spec.hidden_size or teacher_config.hidden_size
    if spec.intermediate_size is not None:
        config.intermediate_size = spec.intermediate_size
    config.num_attention_heads, config.num_key_value_heads = heads, kv
    _carry_layer_lists(config, teacher_config, layers)
    return config


# The kinds of tensor dimension, by what indexes them: "v" vocabulary, "h" residual channels, "i" MLP neurons ("gu":
# gate and up fused), "q"/"kv" query/key-value rows (heads x head_dim; "qkv": the three fused), "d" one head's
# channels, "qh"/"kvh" heads, "1" a lone scalar. "v", "d" and "1" are never cut.
def _sizes(config: PretrainedConfig) -> dict[str, int | None]:
    d, heads, kv = head_dim(config), config.num_attention_heads, _kv_heads(config)
    inter = getattr(config, "intermediate_size", None)
    inter = inter if isinstance(inter, int) else None
    return {"v": config.vocab_size, "h": config.hidden_size, "i": inter, "gu": inter and 2 * inter, "q": heads * d,
            "kv": kv * d, "qkv": (heads + 2 * kv) * d, "d": d, "qh": heads, "kvh": kv, "1": 1}


# module name (with its parent's where the name alone is ambiguous) -> the kinds of its weight's (output, input)
# dimensions; a bias has the output's kind
_LINEAR = {
    "embed_tokens": ("v", "h"), "lm_head": ("v", "h"),
    "q_proj": ("q", "h"), "k_proj": ("kv", "h"), "v_proj": ("kv", "h"), "qkv_proj": ("qkv", "h"),
    "o_proj": ("h", "q"), "self_attn.dense": ("h", "q"),  # Phi
    "gate_proj": ("i", "h"), "up_proj": ("i", "h"), "gate_up_proj": ("gu", "h"), "down_proj": ("h", "i"),
    "mlp.fc1": ("i", "h"), "mlp.fc2": ("h", "i"), "mlp.c_fc": ("i", "h"), "mlp.c_proj": ("h", "i"),  # Phi, Starcoder2
}
_QK_NORM = re.compile(r"^([qk])_(norm|layernorm)$")  # per head (Qwen3, Gemma3), per row (OLMo2), (heads, d) (Cohere)
_NORM = re.compile(r"norm|^ln_")  # any other RMSNorm/LayerNorm: over the residual channels
_PER_LAYER_KINDS = {"i", "gu", "q", "kv", "qkv", "qh", "kvh"}


def _kinds(name: str, shape: tuple[int, ...], sizes: dict) -> tuple[str, ...] | None:
    """The kind of each dimension of the tensor ``name`` of this shape, or None if no rule fits both."""
    path, _, param = name.rpartition(".")
    module, qualified = path.rpartition(".")[2], ".".join(path.split(".")[-2:])
    linear = _LINEAR.get(qualified) or _LINEAR.get(module)
    candidates = []
    if linear is not None and param in ("weight", "bias"):
        candidates.append(linear if param == "weight" else linear[:1])
    elif match := _QK_NORM.match(module):
        rows, heads = ("q", "qh") if match.group(1) == "q" else ("kv", "kvh")
        candidates += [("d",), (rows,), (heads, "d")]
    elif _NORM.search(module):
        candidates.append(("h",))
    if all(n == 1 for n in shape):
        candidates.append(("1",) * len(shape))
    return next((kinds for kinds in candidates if tuple(sizes[k] for k in kinds) == tuple(shape)), None)


def _layer_prefix(model: nn.Module) -> str | None:
    """The name of the decoder's list of layers ("model.layers"; GPT-2: "transformer.h")."""
    n = model.config.num_hidden_layers
    names = [name for name, module in model.named_modules() if isinstance(module, nn.ModuleList) and len(module) == n]
    return next((name for name in names if name.rpartition(".")[2] in ("layers", "h")), names[0] if names else None)


def _layout(teacher: nn.Module, student: nn.Module, layers: list[int]) -> dict[str, tuple[str, int | None, tuple]]:
    """For each student tensor: the teacher tensor it is cut from, its student layer (None outside the layers) and
    the kind of each dimension (``"="``: copied whole). Raises NotImplementedError naming a tensor no rule fits."""
    t_sizes, s_sizes = _sizes(teacher.config), _sizes(student.config)
    same_width = t_sizes == s_sizes
    source_shapes = {name: tuple(t.shape) for name, t in teacher.state_dict().items()}
    prefix = _layer_prefix(teacher)
    if prefix is None and layers != list(range(teacher.config.num_hidden_layers)):
        raise NotImplementedError(f"shrink cannot find the decoder layers of {type(teacher).__name__}")
    pattern = re.compile(rf"{re.escape(prefix)}\.(\d+)\.") if prefix else None
    layout = {}
    for name, tensor in student.state_dict().items():
        shape = tuple(tensor.shape)
        match = pattern.match(name) if pattern else None
        new = int(match.group(1)) if match else None
        source = f"{prefix}.{layers[new]}.{name[match.end():]}" if match else name
        kinds = _kinds(source, source_shapes[source], t_sizes) if source in source_shapes else None
        if kinds is not None and (tuple(s_sizes[k] for k in kinds) != shape or
                                  (new is None and _PER_LAYER_KINDS & set(kinds))):
            kinds = None
        if kinds is None and same_width and source_shapes.get(source) == shape:
            kinds = ("=",) * len(shape)  # no width changes: any tensor is its own slice
        if kinds is None:
            raise NotImplementedError(
                f"shrink does not know how to slice {name!r} ({type(teacher).__name__}): teacher "
                f"{source!r} {source_shapes.get(source, 'missing')}, student {shape}")
        layout[name] = (source, new, kinds)
    return layout


def check_shrinkable(teacher_config: PretrainedConfig, spec: ShrinkSpec) -> PretrainedConfig:
    """The student's config, once :func:`shrink_model` is known to cut every student tensor out of the teacher's.

    Checked on the meta device from the configs alone (no weights, no memory), so a recipe's plan refuses an
    architecture the rules do not cover before training: NotImplementedError names the tensor, ValueError a size."""
    student_config = shrunk_config(teacher_config, spec)
    with torch.device("meta"):
        teacher = AutoModelForCausalLM.from_config(teacher_config)
        student = AutoModelForCausalLM.from_config(student_config)
    _layout(teacher, student, select_layers(teacher_config.num_hidden_layers, spec))
    return student_config


def _top(scores: torch.Tensor | None, k: int, strategy: str) -> list[int]:
    if strategy == "first" or scores is None or k >= scores.numel():
        return list(range(k))
    return sorted(scores.float().topk(k).indices.tolist())


def _share(scores: torch.Tensor, keep: list[int]) -> float:
    """The share of the total score the kept indices carry."""
    total = float(scores.float().sum())
    return float(scores.float()[keep].sum()) / total if total > 0 else 1.0


def plan_shrink(teacher: nn.Module, spec: ShrinkSpec, calibration: list[dict] | None = None) -> ShrinkPlan:
    """Choose the kept layers, residual channels, MLP neurons and heads.

    ``magnitude``: a neuron scores the product of its weight norms in every MLP matrix (gate, up, down; fc1, fc2); a
    head the norm of its columns of the attention output projection; a residual channel the norm of its embedding
    column. ``activation`` and ``importance`` score on ``calibration`` batches (dicts of ``input_ids`` and
    ``attention_mask``, a few hundred training examples) with the teacher as it is: every score comes from the full
    teacher, so the width and depth choices do not depend on each other's order."""
    config = teacher.config
    if spec.needs_calibration and not calibration:
        raise ValueError(f"shrink: layer_strategy={spec.layer_strategy!r} / width_strategy={spec.width_strategy!r} "
                         "score the teacher on calibration data: pass `calibration` batches (the cascade uses "
                         f"{spec.calibration_examples} training examples), or use layer_strategy: uniform and "
                         "width_strategy: magnitude")
    layer_scores = None
    scores: dict = {}
    if spec.layer_strategy == "importance":
        was_training = teacher.training
        teacher.eval()
        layer_scores = layer_importance(teacher, calibration, spec.layer_importance)
        teacher.train(was_training)
        scores.update(layer_importance=spec.layer_importance, layer_scores=[round(float(v), 6) for v in layer_scores])
    layers = select_layers(config.num_hidden_layers, spec, layer_scores)
    student_config = shrunk_config(config, spec, layers)
    width = None
    narrower = (student_config.hidden_size < config.hidden_size
                or student_config.num_attention_heads < config.num_attention_heads
                or student_config.num_key_value_heads < _kv_heads(config)
                or getattr(student_config, "intermediate_size", None) != getattr(config, "intermediate_size", None))
    if spec.width_strategy == "activation" and narrower:
        was_training = teacher.training
        teacher.eval()
        width = activation_importance(teacher, calibration)
        teacher.train(was_training)
    embed = teacher.get_input_embeddings().weight.detach()  # (V, H)
    hidden_scores = None
    if spec.width_strategy == "magnitude" and student_config.hidden_size < config.hidden_size:
        # the norm of each column, 15x faster than embed.norm(dim=0) (a strided reduction) on a 262k vocabulary
        hidden_scores = sum(rows.float().square().sum(0) for rows in embed.split(4096)).sqrt()  # (H,)
    elif width is not None:
        hidden_scores = width.hidden
    plan = ShrinkPlan(layers, _top(hidden_scores, student_config.hidden_size, spec.width_strategy), scores=scores)
    sizes, prefix, tensors = _sizes(config), _layer_prefix(teacher), teacher.state_dict()
    heads, inter, kv_teacher, d = sizes["qh"], sizes["i"], sizes["kvh"], sizes["d"]
    group = heads // kv_teacher
    per_group = student_config.num_attention_heads // student_config.num_key_value_heads
    shares: dict[str, list[float]] = {"neurons": [], "heads": []}
    for new, old in enumerate(layers):
        neurons, head_scores = torch.ones(inter or 0), torch.zeros(heads)
        if width is not None:
            neurons = width.neurons.get(old, neurons)
            head_scores = width.heads.get(old, head_scores)
        else:
            with torch.no_grad():
                for name, w in tensors.items():
                    if not name.startswith(f"{prefix}.{old}.") or w.ndim != 2:
                        continue
                    kinds = _kinds(name, tuple(w.shape), sizes)
                    if kinds == ("i", "h"):
                        neurons = neurons * w.norm(dim=1)
                    elif kinds == ("h", "i"):
                        neurons = neurons * w.norm(dim=0)
                    elif kinds == ("gu", "h"):  # gate rows, then up rows
                        neurons = neurons * w[:inter].norm(dim=1) * w[inter:].norm(dim=1)
                    elif kinds == ("h", "q"):
                        head_scores = head_scores + w.reshape(sizes["h"], heads, d).norm(dim=(0, 2))  # (heads,)
        if inter:
            plan.intermediate[new] = _top(neurons, student_config.intermediate_size, spec.width_strategy)
            if width is not None and old in width.neurons:
                shares["neurons"].append(_share(neurons, plan.intermediate[new]))
        kv_scores = head_scores.reshape(kv_teacher, group).sum(1)
        kv_keep = _top(kv_scores, student_config.num_key_value_heads, spec.width_strategy)
        plan.kv_heads[new] = kv_keep
        plan.heads[new] = [g * group + h for g in kv_keep
                           for h in _top(head_scores[g * group:(g + 1) * group], per_group, spec.width_strategy)]
        if width is not None and old in width.heads:
            shares["heads"].append(_share(head_scores, plan.heads[new]))
    if width is not None:
        kept = {"hidden": _share(width.hidden, plan.hidden)}
        kept.update({kind: sum(values) / len(values) for kind, values in shares.items() if values})
        plan.scores["activation_kept"] = {k: round(v, 4) for k, v in kept.items()}
    return plan


def _rows(heads: list[int], d: int, offset: int = 0) -> torch.Tensor:
    return torch.tensor([offset + h * d + i for h in heads for i in range(d)], dtype=torch.long)


def _index(kind: str, plan: ShrinkPlan, layer: int | None, sizes: dict) -> torch.Tensor | None:
    """The teacher indices a student dimension of this kind keeps (None: all of them)."""
    d, q, kv = sizes["d"], sizes["q"], sizes["kv"]
    if kind == "h":
        return torch.tensor(plan.hidden, dtype=torch.long)
    if kind in ("i", "gu"):
        keep = torch.tensor(plan.intermediate[layer], dtype=torch.long)
        return keep if kind == "i" else torch.cat([keep, sizes["i"] + keep])
    if kind == "q":
        return _rows(plan.heads[layer], d)
    if kind == "kv":
        return _rows(plan.kv_heads[layer], d)
    if kind == "qkv":
        return torch.cat([_rows(plan.heads[layer], d), _rows(plan.kv_heads[layer], d, q),
                          _rows(plan.kv_heads[layer], d, q + kv)])
    if kind in ("qh", "kvh"):
        return torch.tensor(plan.heads[layer] if kind == "qh" else plan.kv_heads[layer], dtype=torch.long)
    return None  # "v", "d", "1", "="


def shrink_model(teacher: nn.Module, spec: ShrinkSpec, dtype: torch.dtype | None = None,
                 calibration: list[dict] | None = None) -> tuple[nn.Module, ShrinkPlan]:
    """A student whose every parameter is the slice of the teacher's that :func:`plan_shrink` chose
    (``calibration``: the batches the ``importance``/``activation`` strategies score on)."""
    plan = plan_shrink(teacher, spec, calibration)
    config = shrunk_config(teacher.config, spec, plan.layers)
    student = AutoModelForCausalLM.from_config(config, dtype=dtype or teacher.dtype)
    layout = _layout(teacher, student, plan.layers)
    source, sizes = teacher.state_dict(), _sizes(teacher.config)
    with torch.no_grad():
        for name, param in student.state_dict().items():
            old_name, layer, kinds = layout[name]
            value = source[old_name]
            for dim, kind in enumerate(kinds):
                index = _index(kind, plan, layer, sizes)
                if index is not None and not torch.equal(index, torch.arange(value.shape[dim])):  # not all, in order
                    value = value.index_select(dim, index)
            param.copy_(value)
    student.generation_config = teacher.generation_config
    return student, plan
