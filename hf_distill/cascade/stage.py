"""One cascade stage: build its student, train it by the stage's method(s), save it as a plain safetensors model.

Methods: ``sft`` (no teacher: trains the root, or a baseline beside a distilled stage), ``logit`` (live-teacher KD
with :class:`DistillationTrainer`), ``features`` (logit KD plus hidden-state alignment: ``feature_weight`` defaults
to 1.0), ``traces`` (generate the teacher's verified reasoning traces with :func:`hf_distill.traces.collect_traces`
and train on them; plain SFT on the traces alone, KD on them when mixed with ``logit``/``features``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM
from trl import SFTTrainer

from hf_distill.cascade.plan import config_of
from hf_distill.cascade.recipe import RecipeError, Stage
from hf_distill.config import DistillationConfig
from hf_distill.data.reasoning import to_prompt_completion
from hf_distill.models.adapters import describe_adapter, merge_adapters
from hf_distill.models.calibration import calibration_data
from hf_distill.models.gguf import load_causal_lm
from hf_distill.models.quantization import load_quantized
from hf_distill.models.shrink import shrink_model
from hf_distill.traces import TraceConfig, collect_traces
from hf_distill.trainer import DistillationTrainer
from hf_distill.utils.device import fast_bf16_available


def build_student(stage: Stage, teacher: str | None, tokenizer, seed: int, train: Dataset | None = None):
    """The stage's initial student and, for a shrink, which teacher layers/channels it kept. A shrink by importance
    or activation scores the teacher on the first ``shrink.calibration_examples`` rows of ``train``."""
    spec = stage.student
    if spec.shrink is not None:
        teacher_model = load_causal_lm(teacher)
        calibration = None
        if spec.shrink.needs_calibration:
            if train is None:
                raise RecipeError(f"stage {stage.name}: shrink.layer_strategy/width_strategy score the teacher on "
                                  "the stage's training set, and none was given")
            calibration = calibration_data(train, tokenizer, spec.shrink.calibration_examples)
        return shrink_model(teacher_model, spec.shrink, calibration=calibration)
    if spec.model is not None:
        if stage.student_quantization:  # QLoRA: a quantised base under the stage's LoRA adapter
            return load_quantized(spec.model, stage.student_quantization, revision=spec.revision), None
        return load_causal_lm(spec.model, revision=spec.revision), None
    config = config_of(spec, len(tokenizer))  # a fresh model sized to the tokenizer
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if name not in spec.config:
            setattr(config, name, getattr(tokenizer, name))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, None


def training_config(stage: Stage, output_dir: Path, seed: int) -> DistillationConfig:
    """The recipe's ``training:`` over cascade defaults: checkpoints every 200 steps (so a killed stage resumes) and
    bf16 autocast where the hardware runs it natively (2-3.5x faster on CPUs with avx512_bf16)."""
    defaults = dict(report_to=[], save_strategy="steps", save_steps=200, save_total_limit=1, seed=seed,
                    logging_steps=10, dataloader_num_workers=0,
                    # off unless asked for, under either name (TRL turns it on by default)
                    activation_checkpointing=stage.training.get("gradient_checkpointing", False),
                    use_cpu=not torch.cuda.is_available(), bf16=fast_bf16_available())
    values = {**defaults, **stage.training, "output_dir": str(output_dir)}
    if "features" in stage.methods:
        values.setdefault("feature_weight", 1.0)
    try:
        return DistillationConfig(**values)
    except (ValueError, TypeError) as err:
        raise RecipeError(f"stage {stage.name}.training: {err}") from None


def lora_config(stage: Stage) -> LoraConfig | None:
    if stage.peft is None:
        return None
    try:
        return LoraConfig(**{"task_type": "CAUSAL_LM", **stage.peft})
    except (TypeError, ValueError) as err:
        raise RecipeError(f"stage {stage.name}.peft: {err}") from None


def _traces(stage: Stage, teacher: str, tokenizer, train: Dataset, output_dir: Path, log) -> Dataset:
    try:
        config = TraceConfig(**stage.traces)
    except (TypeError, ValueError) as err:
        raise RecipeError(f"stage {stage.name}.traces: {err}") from None
    traces = collect_traces(teacher, tokenizer, train, str(output_dir), config, log=log)
    return traces.select_columns(["prompt", "completion"])


def train_stage(stage: Stage, student, teacher: str | None, tokenizer, train: Dataset, run_dir: Path, seed: int,
                callbacks: list, resume: str | None, log=print):
    """Train ``student`` in ``run_dir`` (resuming from checkpoint ``resume``) and return the trainer."""
    args = training_config(stage, run_dir, seed)
    if "traces" in stage.methods:
        data = _traces(stage, teacher, tokenizer, train, run_dir.parent / "traces", log)
    else:
        data = to_prompt_completion(train, tokenizer=tokenizer)
    common = dict(train_dataset=data, processing_class=tokenizer, peft_config=lora_config(stage),
                  callbacks=list(callbacks))
    if any(m in ("logit", "features") for m in stage.methods):
        trainer = DistillationTrainer(student, args, teacher_model=teacher, **common)
    else:
        trainer = SFTTrainer(student, args, **common)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def save_student(trainer, tokenizer, directory: Path) -> dict | None:
    """Save a plain safetensors model, a LoRA adapter merged into its base first (the next stage's teacher must
    load with ``from_pretrained``); return the adapter's description (r, alpha, targets, base quantisation)."""
    model = merge_adapters(trainer.accelerator.unwrap_model(trainer.model))
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return describe_adapter(model)
