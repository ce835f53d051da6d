"""One cascade stage: build its student, train it by the stage's method(s), save it as a plain safetensors model,
and, with ``export:``, write it as GGUF files and measure them (:func:`export_stage`).

Methods: ``sft`` (no teacher: trains the root, or a baseline beside a distilled stage), ``logit`` (live-teacher KD
with :class:`DistillationTrainer`), ``features`` (logit KD plus hidden-state alignment: ``feature_weight`` defaults
to 1.0), ``traces`` (generate the teacher's verified reasoning traces with :func:`hf_distill.traces.collect_traces`
and train on them; plain SFT on the traces alone, KD on them when mixed with ``logit``/``features``).

A served root teacher (:class:`~hf_distill.cascade.recipe.ServedTeacherRef`) is passed instead of a path: traces are
sampled over HTTP and ``logit`` is online KD from its prompt log-probabilities (:mod:`hf_distill.served`). A ``moe``
student is the dense one (the teacher, or its shrink) upcycled to a Mixtral, with the load-balancing loss attached.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM
from trl import SFTTrainer

from hf_distill.cascade.plan import config_of
from hf_distill.cascade.recipe import RecipeError, ServedTeacherRef, Stage
from hf_distill.config import DistillationConfig
from hf_distill.data.reasoning import to_prompt_completion
from hf_distill.models.adapters import describe_adapter, merge_adapters
from hf_distill.models.calibration import calibration_data
from hf_distill.models.gguf import load_causal_lm
from hf_distill.models.moe import attach_load_balancing_loss, upcycle_to_mixtral
from hf_distill.models.quantization import load_quantized
from hf_distill.models.shrink import ShrinkSpec, shrink_model
from hf_distill.traces import TraceConfig, collect_traces
from hf_distill.trainer import DistillationTrainer
from hf_distill.utils.device import fast_bf16_available
from hf_distill.utils.fingerprint import fingerprint
from hf_distill.utils.io import write_json_atomic


def build_student(stage: Stage, teacher: str | None, tokenizer, seed: int, train: Dataset | None = None):
    """The stage's initial student and, for a shrink, which teacher layers/channels it kept. A shrink by importance
    or activation scores the teacher on the first ``shrink.calibration_examples`` rows of ``train``. With ``moe``,
    that dense student (the teacher itself when ``moe`` is alone) upcycled to a mixture of experts."""
    student, plan = _dense_student(stage, teacher, tokenizer, seed, train)
    moe = stage.student.moe
    if moe is None:
        return student, plan
    try:
        student = upcycle_to_mixtral(student, moe.num_experts, moe.top_k, moe.expert_intermediate_size,
                                     moe.router_aux_loss_coef, moe.router_jitter_noise, seed=seed)
    except ValueError as err:
        raise RecipeError(f"stage {stage.name}.student.moe: {err}") from None
    if moe.router_aux_loss_coef > 0 and stage.methods != ["sft"]:
        # DistillationTrainer computes its loss from hidden states and never sees router logits; SFTTrainer adds
        # Mixtral's own aux loss (router_aux_loss_coef, see training_config), so it needs no hook
        attach_load_balancing_loss(student)
    return student, plan


def _dense_student(stage: Stage, teacher: str | None, tokenizer, seed: int, train: Dataset | None):
    spec = stage.student
    if spec.shrink is not None and spec.shrink == ShrinkSpec() and spec.moe is not None:
        return load_causal_lm(teacher), None  # `moe` alone: the teacher as it is
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


def training_config(stage: Stage, output_dir: Path, seed: int,
                    served: ServedTeacherRef | None = None) -> DistillationConfig:
    """The recipe's ``training:`` over cascade defaults: checkpoints every 200 steps (so a killed stage resumes) and
    bf16 autocast where the hardware runs it natively (2-3.5x faster on CPUs with avx512_bf16). ``served``: the
    served root teacher, for online KD (its connection fields under the stage's own)."""
    defaults = dict(report_to=[], save_strategy="steps", save_steps=200, save_total_limit=1, seed=seed,
                    logging_steps=10, dataloader_num_workers=0,
                    # off unless asked for, under either name (TRL turns it on by default)
                    activation_checkpointing=stage.training.get("gradient_checkpointing", False),
                    use_cpu=not torch.cuda.is_available(), bf16=fast_bf16_available())
    if served is not None and any(m in ("logit", "features") for m in stage.methods):
        defaults.update(served.training_fields())
    values = {**defaults, **stage.training, "output_dir": str(output_dir)}
    if "features" in stage.methods:
        values.setdefault("feature_weight", 1.0)
    if stage.student.moe is not None:  # the load-balancing loss, once: TRL's own for SFT, else the hook's
        values["router_aux_loss_coef"] = stage.student.moe.router_aux_loss_coef if stage.methods == ["sft"] else 0.0
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


def _traces(stage: Stage, teacher, tokenizer, train: Dataset, output_dir: Path, log) -> Dataset:
    served = teacher if isinstance(teacher, ServedTeacherRef) else None
    try:
        config = TraceConfig(**{**(served.trace_fields() if served else {}), **stage.traces})
    except (TypeError, ValueError) as err:
        raise RecipeError(f"stage {stage.name}.traces: {err}") from None
    traces = collect_traces(None if served else teacher, tokenizer, train, str(output_dir), config, log=log)
    return traces.select_columns(["prompt", "completion"])


def train_stage(stage: Stage, student, teacher: str | None, tokenizer, train: Dataset, run_dir: Path, seed: int,
                callbacks: list, resume: str | None, log=print):
    """Train ``student`` in ``run_dir`` (resuming from checkpoint ``resume``) and return the trainer. ``teacher``:
    a model path, or a :class:`ServedTeacherRef` (traces over HTTP, online KD)."""
    served = teacher if isinstance(teacher, ServedTeacherRef) else None
    args = training_config(stage, run_dir, seed, served)
    if "traces" in stage.methods:
        data = _traces(stage, teacher, tokenizer, train, run_dir.parent / "traces", log)
    else:
        data = to_prompt_completion(train, tokenizer=tokenizer)
    common = dict(train_dataset=data, processing_class=tokenizer, peft_config=lora_config(stage),
                  callbacks=list(callbacks))
    if any(m in ("logit", "features") for m in stage.methods):
        trainer = DistillationTrainer(student, args, teacher_model=None if served else teacher, **common)
    else:
        trainer = SFTTrainer(student, args, **common)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def save_student(trainer, tokenizer, directory: Path) -> dict | None:
    """Save a plain safetensors model, a LoRA adapter merged into its base first (the next stage's teacher must
    load with ``from_pretrained``); return the adapter's description (r, alpha, targets, base quantisation)."""
    model = merge_adapters(trainer.accelerator.unwrap_model(trainer.model))
    if getattr(model.config, "output_router_logits", False):
        # TRL turns it on to train with Mixtral's aux loss; left on, batched generate with padding fails in
        # load_balancing_loss_func (the cached step's router logits vs the whole attention mask)
        model.config.output_router_logits = False
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return describe_adapter(model)


def export_stage(stage: Stage, model_dir: Path, digest: str, record: dict, save, test: Dataset, tokenizer,
                 log=print) -> bool:
    """The stage's ``export:`` on its saved student in ``model_dir``: each GGUF type in ``export.gguf`` (then its
    greedy answers to ``export.check`` test problems against the float student's), then, with ``export.bench``, each
    file behind llama.cpp's server at the bench's concurrency levels. ``record`` is what the manifest holds from
    earlier runs: an item whose key (the stage's hash ``digest`` and the item's settings) is there is not redone.
    ``save(record)`` is called after each item, so a killed export resumes. True when something was done."""
    from hf_distill.deploy.gguf_export import export_gguf
    from hf_distill.deploy.report import DEPLOYMENT_FILE, record_export, record_serving

    spec = stage.export
    gguf, bench = dict(record.get("gguf") or {}), dict(record.get("bench") or {})
    did = False
    for quant in spec.gguf:
        key = fingerprint({"stage": digest, **spec.hash_fields(quant)})
        path = model_dir / f"{stage.name}.{quant}.gguf"
        if gguf.get(quant, {}).get("hash") == key and path.is_file():
            continue
        log(f"stage {stage.name}: exporting GGUF {quant}")
        began = time.perf_counter()
        export_gguf(model_dir, path, quant, pre_tokenizer=spec.pre_tokenizer)
        result = {"hash": key, "file": path.name, "bytes": path.stat().st_size,
                  "seconds": round(time.perf_counter() - began, 2)}
        deployment = record_export(model_dir, path, quant)
        if spec.check:
            result["agreement"] = gguf_check(model_dir, path, tokenizer, list(test["question"])[: spec.check],
                                             stage.evaluation.max_new_tokens)
            deployment["exports"][quant]["agreement"] = result["agreement"]
            write_json_atomic(model_dir / DEPLOYMENT_FILE, deployment)
            log(f"stage {stage.name}: {quant} {agreement_text(result['agreement'])}")
        gguf[quant] = result
        save({"gguf": gguf, "bench": bench})
        did = True
    if spec.bench is None:
        return did
    from hf_distill.deploy.bench import bench_serve
    from hf_distill.deploy.server import serving

    settings = {k: v for k, v in asdict(spec.bench).items() if k != "quants"}
    prompts = list(test["question"])[: spec.bench.prompts]
    n_ctx = min(2048, json.loads((model_dir / "config.json").read_text()).get("max_position_embeddings") or 2048)
    for quant in spec.bench.quants or spec.gguf:
        key = fingerprint({"gguf": gguf[quant]["hash"], **settings})
        if bench.get(quant, {}).get("hash") == key:
            continue
        log(f"stage {stage.name}: measuring GGUF {quant} behind llama.cpp's server at "
            f"{', '.join(map(str, spec.bench.concurrency))} concurrent requests")
        with serving(model_dir / gguf[quant]["file"], n_ctx=n_ctx, n_threads=spec.bench.n_threads,
                     log_path=model_dir.parent / f"server.{quant}.log") as server:
            levels = bench_serve(server.url, prompts, spec.bench.concurrency, spec.bench.max_tokens,
                                 spec.bench.requests, model=server.model)
        rows = [level.as_dict() for level in levels]
        record_serving(model_dir, rows, quant, engine="llama.cpp (llama-cpp-python)",
                       max_tokens=spec.bench.max_tokens)
        bench[quant] = {"hash": key, "levels": rows}
        save({"gguf": gguf, "bench": bench})
        did = True
    return did


def gguf_check(model_dir: Path, gguf_path: Path, tokenizer, questions: list[str], max_new_tokens: int) -> dict:
    """Greedy agreement of the GGUF file (reloaded by transformers' ``gguf_file=`` loader) with the float student
    on ``questions`` as chat prompts (:func:`hf_distill.deploy.roundtrip.gguf_agreement`)."""
    from hf_distill.deploy.roundtrip import gguf_agreement
    from hf_distill.evaluation.generate import chat_prompts

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    if getattr(model.config, "num_local_experts", None):
        # transformers' GGUF loader reads dense architectures only: a Mixtral file loads in llama.cpp (`bench`)
        return {"skipped": "transformers cannot reload a mixture-of-experts GGUF file to compare with"}
    result = gguf_agreement(model, tokenizer, gguf_path, chat_prompts(tokenizer, questions), max_new_tokens)
    return {"exact": result.exact, "token": result.token, "prompts": result.prompts, "max_new_tokens": max_new_tokens}


def agreement_text(agreement: dict) -> str:
    if "skipped" in agreement:
        return f"agreement not checked: {agreement['skipped']}"
    return (f"greedy answers vs the float student on {agreement['prompts']} test problems: {agreement['exact']:.0%} "
            f"identical, {agreement['token']:.0%} of tokens before the first difference")
