"""The cascade's plan: every stage's teacher and student config, parameter counts and memory estimates.

Configs come from the recipe (inline ``config:``), a local directory (``AutoConfig``), or a shrink of the teacher's
config, so ``hf-distill cascade RECIPE --dry_run`` needs no weights and, with inline configs, no network. Parameter
counts come from instantiating the model on the ``meta`` device (exact, tied embeddings counted once, no memory).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from hf_distill.cascade.recipe import ModelRef, Recipe, RecipeError, Stage
from hf_distill.config import default_kd_chunk_size
from hf_distill.models.build import count_parameters
from hf_distill.models.gguf import gguf_reference
from hf_distill.models.shrink import check_shrinkable

_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "8bit": 1, "4bit": 0.5}


@dataclass
class ParameterLayout:
    """How a model's parameters split into FSDP units (hf_distill.training.fsdp shards one unit per decoder layer
    plus the root): what a rank must gather at once."""

    root: int  # outside the decoder layers: embeddings, final norm, lm_head (tied ones once)
    largest_layer: int
    num_layers: int


@dataclass
class StagePlan:
    name: str
    methods: list[str]
    teacher: str  # what teaches this stage (a path/hub id or "stage <name>"), "-" for an SFT stage
    student: str
    teacher_config: PretrainedConfig | None
    student_config: PretrainedConfig
    teacher_params: int | None
    student_params: int
    memory: dict[str, float]  # bytes by component
    baseline: bool = False  # a side branch (`baseline: true`): teaches no later stage
    student_layout: ParameterLayout | None = None
    teacher_layout: ParameterLayout | None = None
    student_gathered_bytes: float = 8.0  # per gathered student parameter under FSDP: fp32 weight + its gradient
    teacher_bytes: float = 2.0  # per teacher parameter (its dtype or quantisation)

    @property
    def total_memory(self) -> float:
        return sum(self.memory.values())

    def memory_per_rank(self, num_processes: int) -> dict[str, float]:
        """Bytes per rank under ``fully_shard`` with ``num_processes`` ranks (hf_distill.training.fsdp): weights,
        gradients, optimizer state and the teacher split N ways, plus what FSDP gathers at once (the root unit for
        the whole step, two decoder layers: the one running and the one prefetched), for the student with its
        gradients and for the teacher; activations and the KD loss's chunk stay per rank. ``num_processes=1``: the
        one-process estimate (``memory``)."""
        if num_processes <= 1:
            return dict(self.memory)
        memory = dict(self.memory)
        memory["student (train)"] = self.memory["student (train)"] / num_processes
        if self.student_layout is not None:
            gathered = self.student_layout.root + 2 * self.student_layout.largest_layer
            memory["student gathered"] = gathered * self.student_gathered_bytes
        if "teacher" in memory:
            memory["teacher"] = self.memory["teacher"] / num_processes
            if self.teacher_layout is not None:
                gathered = self.teacher_layout.root + 2 * self.teacher_layout.largest_layer
                memory["teacher gathered"] = gathered * self.teacher_bytes
        return memory


def config_of(ref: ModelRef, tokenizer_vocab: int | None = None) -> PretrainedConfig:
    """A model's config without its weights: inline, from a local directory, or from the Hub (network)."""
    if ref.config is not None:
        values = dict(ref.config)
        if "vocab_size" not in values and tokenizer_vocab:
            values["vocab_size"] = tokenizer_vocab
        return AutoConfig.for_model(values.pop("model_type"), **values)
    try:
        reference = gguf_reference(ref.model)
        if reference is not None:  # a .gguf file: transformers reads its config from the GGUF metadata
            return AutoConfig.from_pretrained(reference[0], gguf_file=reference[1])
        return AutoConfig.from_pretrained(ref.model, revision=ref.revision)
    except OSError as err:
        raise RecipeError(
            f"cannot read the config of {ref.model!r} ({err.__class__.__name__}); offline, give it inline as "
            "`config: {model_type: ..., hidden_size: ..., ...}` next to `model:`"
        ) from None


def parameter_count(config: PretrainedConfig) -> int:
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return count_parameters(model)


def parameter_layout(config: PretrainedConfig) -> ParameterLayout | None:
    """The FSDP units of the model ``config`` describes (on the meta device), or None for a model that names no
    decoder-layer class (``_no_split_modules``), which fully_shard refuses."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [module for module in model.modules() if type(module).__name__ in names]
    if not layers:
        return None
    sizes = [count_parameters(layer) for layer in layers]
    return ParameterLayout(count_parameters(model) - sum(sizes), max(sizes), len(layers))


def _tokenizer_vocab(recipe: Recipe) -> int | None:
    return recipe.tokenizer.get("vocab_size") if isinstance(recipe.tokenizer, dict) else None


def _training_bytes(stage: Stage) -> float:
    """Bytes per student parameter while training: weights + gradients + AdamW's two moments (mixed precision keeps
    fp32 master weights), or, with LoRA, the frozen base in its dtype (adapters are ~1% and ignored)."""
    if stage.peft is None:
        return 16.0
    if stage.student_quantization:
        return _BYTES[stage.student_quantization]
    return 2.0 if stage.training.get("bf16") or stage.training.get("fp16") else 4.0


def _activation_bytes(stage: Stage, config: PretrainedConfig) -> float:
    """Korthikanti et al. (2022): ~34·s·b·h bytes per layer in 16-bit with fused attention; with gradient
    checkpointing only each layer's input (2·s·b·h) is kept plus one layer's worth being recomputed."""
    t = stage.training
    batch, seq = t.get("per_device_train_batch_size", 8), t.get("max_length", 1024) or 1024
    per_layer = 34 * seq * batch * config.hidden_size
    if t.get("gradient_checkpointing") or t.get("activation_checkpointing"):
        return 2 * seq * batch * config.hidden_size * config.num_hidden_layers + per_layer
    return per_layer * config.num_hidden_layers


def _kd_bytes(stage: Stage, vocab: int) -> float:
    """The fused KD loss materialises chunk x vocab float32 tensors: teacher probs, student log-probs, grads."""
    chunk = stage.training.get("kd_chunk_size") or default_kd_chunk_size(vocab)  # as DistillationConfig.loss_spec
    return 4 * chunk * vocab * 4


def build_plan(recipe: Recipe) -> list[StagePlan]:
    vocab = _tokenizer_vocab(recipe)
    root_config = config_of(recipe.teacher, vocab) if recipe.teacher else None
    root_name = (recipe.teacher.model or "inline config") if recipe.teacher else None
    configs: dict[str | None, tuple] = {None: (root_config, root_name)}  # teacher by stage name (None: the root)
    plans = []
    for stage in recipe.stages:
        teacher_config, teacher_name = configs[stage.teacher_stage]
        spec = stage.student
        if spec.shrink is not None:
            try:
                # on the meta device: refuses, naming the tensor, an architecture shrink cannot slice
                student_config = check_shrinkable(teacher_config, spec.shrink)
            except (ValueError, NotImplementedError) as err:
                raise RecipeError(f"stage {stage.name}: {err}") from None
            student_name = f"shrink of {teacher_name}"
        else:
            student_config = config_of(spec, vocab)
            student_name = spec.model or f"new {student_config.model_type}"
        if getattr(spec, "moe", None) is not None:
            student_config, student_name = _upcycled(stage, student_config, student_name)
        sft = stage.methods == ["sft"]
        student_params = parameter_count(student_config)
        teacher_params = None if sft or teacher_config is None else parameter_count(teacher_config)
        memory = {"student (train)": student_params * _training_bytes(stage),
                  "activations": _activation_bytes(stage, student_config)}
        served_root = stage.teacher_stage is None and getattr(recipe.teacher, "served", False)
        if served_root:  # its weights live in the inference server, not in this process
            teacher_name = recipe.teacher.label()
        if not sft and not served_root:
            dtype = stage.training.get("teacher_quantization") or stage.training.get("teacher_dtype") or "bfloat16"
            memory["teacher"] = teacher_params * _BYTES.get(dtype, 4)
        if not sft:
            memory["kd loss"] = _kd_bytes(stage, student_config.vocab_size)
        plan = StagePlan(stage.name, stage.methods, "-" if sft else teacher_name, student_name,
                         None if sft else teacher_config, student_config, teacher_params, student_params,
                         memory, stage.baseline)
        plan.student_layout = parameter_layout(student_config)
        plan.student_gathered_bytes = 8.0 if stage.peft is None else _training_bytes(stage)  # LoRA: frozen base
        if not sft and not served_root:
            plan.teacher_layout, plan.teacher_bytes = parameter_layout(teacher_config), _BYTES.get(dtype, 4)
        plans.append(plan)
        configs[stage.name] = (student_config, f"stage {stage.name}")
    return plans


def _upcycled(stage: Stage, dense_config: PretrainedConfig, dense_name: str) -> tuple[PretrainedConfig, str]:
    """The Mixtral config ``student: {moe: ...}`` makes of the dense student (hf_distill.models.moe), refused in the
    dry run, before any training, where the dense model cannot be upcycled."""
    from hf_distill.models.moe import mixtral_config

    moe = stage.student.moe
    try:
        config = mixtral_config(dense_config, moe.num_experts, moe.top_k, moe.expert_intermediate_size,
                                moe.router_aux_loss_coef, moe.router_jitter_noise)
    except ValueError as err:
        raise RecipeError(f"stage {stage.name}.student.moe: {err}") from None
    return config, f"{moe.num_experts}-expert upcycle of {dense_name}"


GPU_SIZES_GIB = (24, 40, 48, 80, 96, 141)  # common accelerator memories, for "fits on"


def smallest_gpu(nbytes: float, headroom: float = 0.9) -> str:
    """The smallest of :data:`GPU_SIZES_GIB` whose ``headroom`` share holds ``nbytes`` (the rest: CUDA context,
    allocator fragmentation), or "> 141 GiB"."""
    for size in GPU_SIZES_GIB:
        if nbytes <= headroom * size * 2**30:
            return f"{size} GiB"
    return f"> {GPU_SIZES_GIB[-1]} GiB"


def plan_table(recipe: Recipe, plans: list[StagePlan], num_processes: int = 1):
    """The plan; with ``num_processes > 1`` also each stage's memory per rank under ``fully_shard`` (FSDP2) and the
    smallest GPU that holds it."""
    from rich.table import Table

    title = (f"cascade {recipe.name}: plan (memory: weights + grads + AdamW + activations + teacher + KD loss; "
             "estimates)")
    if num_processes > 1:
        title += f"; per rank: fully_shard (FSDP2) over {num_processes} ranks, gathered units included"
    table = Table(title=title)
    numeric = ["params", "vs teacher", "vs root", "est. memory"]
    if num_processes > 1:
        numeric += [f"per rank x{num_processes}", "fits on"]
    for column in ("stage", "method", "teacher", "student", *numeric):
        table.add_column(column, justify="right" if column in numeric else "left")
    root = plans[0].teacher_params or plans[0].student_params
    for p in plans:
        ratio = f"1/{p.teacher_params / p.student_params:.1f}" if p.teacher_params else "-"
        method = "+".join(p.methods) + (" (baseline)" if p.baseline else "")
        row = [p.name, method, p.teacher, p.student, _human(p.student_params), ratio,
               f"1/{root / p.student_params:.1f}", f"{p.total_memory / 2**30:.1f} GiB"]
        if num_processes > 1:
            per_rank = sum(p.memory_per_rank(num_processes).values())
            row += [f"{per_rank / 2**30:.1f} GiB", f"{num_processes} x {smallest_gpu(per_rank)}"]
        table.add_row(*row)
    return table


def _human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))
