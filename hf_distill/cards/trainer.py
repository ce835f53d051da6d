"""The model card `DistillationTrainer` writes beside the weights (``save_model``) and pushes (``push_to_hub``).

TRL's card names the base model only when it is a hub id and prints ``[None](https://huggingface.co/None)``
otherwise; this one names the student's starting checkpoint and the teacher (hub ids linked, local folders by their
name, a teacher cache by the teacher its manifest records), the distillation settings and the last logged metrics.
:func:`render_trainer_card` is pure (plain data in, `ModelCard` out); :func:`trainer_card` gathers that data from a
trainer.
"""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

from hf_distill.cards import template_path
from hf_distill.cards.refs import folder_name, hub_id, model_ref
from hf_distill.utils.io import atomic_path

TEMPLATE = "trainer.md.j2"
BETA_LOSSES = ("jsd", "skew_forward_kl", "skew_reverse_kl")  # the losses `beta` changes
TRAIN_METRICS = ("loss", "kd_loss", "ce_loss", "top1_agreement", "feature_loss", "attention_loss",
                 "teacher_kd_loss", "teacher_ce_loss")
_NOT_METRICS = ("_runtime", "_samples_per_second", "_steps_per_second")
_LABELS = {"loss": "train loss (last logged step)", "train_loss": "train loss (mean over the run)",
           "train_runtime": "training wall time"}


def _number(key: str, value: float) -> str:
    if key.endswith("top1_agreement"):
        return f"{value:.1%}"
    if key.endswith("_runtime"):
        return f"{value:.1f} s"
    return f"{value:.4g}"


def final_metrics(log_history: list[dict]) -> list[tuple[str, str, int | None]]:
    """``(label, value, step)`` for the last logged value of each training and eval metric, then the run's
    summary (mean train loss, wall time). Learning rate, grad norm and throughput are left out."""
    last: dict[str, tuple[float, int | None]] = {}
    for entry in log_history:
        for key, value in entry.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                last[key] = (float(value), entry.get("step"))
    evals = [k for k in last if k.startswith("eval_") and not k.endswith(_NOT_METRICS)]
    evals.sort(key=lambda k: k != "eval_loss")  # eval_loss first, the rest as logged
    summary = [k for k in ("train_loss", "train_runtime") if k in last]
    keys = [*(k for k in TRAIN_METRICS if k in last), *evals, *summary]
    return [(_LABELS.get(k, k), _number(k, last[k][0]), last[k][1]) for k in keys]


def distillation_settings(args, teacher: dict, adapter: dict | None) -> list[tuple[str, str]]:
    """The settings that shaped the student, as ``(name, value)`` rows (defaults that do nothing are left out)."""
    rows = [("KD loss", f"`{args.kd_loss}`"), ("temperature", f"{args.temperature:g}"),
            ("alpha (weight of the hard-label CE)", f"{args.alpha:g}")]
    if args.kd_loss in BETA_LOSSES:
        rows.append(("beta", f"{args.beta:g}"))
    rows.append(("objective", f"alpha * CE + (1 - alpha) * T² * {args.kd_loss}(teacher ‖ student), per loss token"))
    if getattr(args, "cross_tokenizer", None):  # a teacher with another tokenizer: hf_distill.cross_tokenizer
        from hf_distill.cross_tokenizer.settings import card_settings

        rows = card_settings(args)
    cache, served = teacher.get("cache"), teacher.get("served")
    if served:
        rows += [("teacher signal", f"served teacher ({served['engine']}), scored over HTTP during training"),
                 ("teacher top-k (served)", f"{served['top_k']} log-probabilities per token + the tail mass")]
    elif cache:
        rows += [("teacher signal", f"teacher-logit cache `{cache['name']}` ({cache['num_examples']} examples)"),
                 ("teacher top-k (cache)", f"{cache['top_k']} log-probabilities per token + the tail mass")]
    else:
        rows.append(("teacher signal", "live model" + (f", run in {teacher['dtype']}" if teacher.get("dtype") else "")))
    if teacher.get("quantization"):
        rows.append(("teacher quantisation", f"bitsandbytes {teacher['quantization']}"))
    if args.feature_weight > 0 or args.attention_weight > 0:
        parts = []
        if args.feature_weight > 0:
            parts.append(f"hidden states: layers `{args.feature_layers}`, {args.feature_loss} loss, weight "
                         f"{args.feature_weight:g}, {args.feature_projector} projector")
        if args.attention_weight > 0:
            parts.append(f"attention maps: weight {args.attention_weight:g}")
        rows.append(("feature alignment", "; ".join(parts)))
    if args.co_distill:
        rows.append(("co-distillation", "on: the teacher was trained too"
                     + (f" (learning rate {args.teacher_learning_rate:g})" if args.teacher_learning_rate else "")))
    if adapter:
        text = f"{adapter['peft_type']} r={adapter.get('r')}, alpha={adapter.get('lora_alpha')}"
        if adapter.get("target_modules"):
            targets = adapter["target_modules"]
            text += f", targets {', '.join(targets) if isinstance(targets, list) else targets}"
        if adapter.get("base_quantization"):
            text += f", on a {adapter['base_quantization']} base (QLoRA)"
        if adapter.get("trainable_parameters"):
            text += f"; {_count(adapter['trainable_parameters'])} trainable parameters"
        rows.append(("PEFT adapter", text))
    if args.curriculum:
        rows.append(("curriculum", f"easy to hard by `{args.curriculum}` for {args.curriculum_epochs} epoch(s)"))
    return rows


def training_settings(args, state, world_size: int = 1) -> list[tuple[str, str]]:
    batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * world_size
    scheduler = getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)
    rows = [("optimiser steps", f"{state.global_step}" + (f" of {state.max_steps}" if state.max_steps else "")),
            ("epochs", f"{state.epoch:.3g}" if state.epoch is not None else "-"),
            ("learning rate", f"{args.learning_rate:g} ({scheduler})"),
            ("effective batch size", f"{batch} sequences"),
            ("max length", f"{args.max_length} tokens" if getattr(args, "max_length", None) else "-"),
            ("seed", f"{args.seed}")]
    return [row for row in rows if row[1] != "-"]


def _count(n: int | None) -> str | None:
    if not n:
        return None
    if n < 1e3:
        return str(n)
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def render_trainer_card(
    *,
    model_name: str,
    student: dict | None,
    teacher: dict,
    settings: list[tuple[str, str]],
    training: list[tuple[str, str]],
    metrics: list[tuple[str, str, int | None]],
    repo_or_path: str,
    adapter: dict | None = None,
    student_parameters: int | None = None,
    dataset: str | None = None,
    license: str | None = None,
    tags: list[str] | None = None,
    versions: dict[str, str] | None = None,
    template: str | Path | None = None,
) -> ModelCard:
    """A card from plain data (pure: no file is read but the template). ``student`` and ``teacher["model"]`` are
    :func:`~hf_distill.cards.refs.model_ref` dicts; only a hub id becomes ``base_model:`` metadata."""
    card_data = ModelCardData(
        model_name=model_name,
        base_model=(student or {}).get("hub_id"),  # None drops the key: a local folder is no Hub base model
        datasets=[dataset] if hub_id(dataset) else None,
        license=license,
        library_name="peft" if adapter and not adapter.get("merged") else "transformers",
        pipeline_tag="text-generation",
        tags=list(dict.fromkeys([*(tags or []), "hf-distill", "distillation", "knowledge-distillation"])),
    )
    return ModelCard.from_template(
        card_data, template_path=str(template or template_path(TEMPLATE)), model_name=model_name, student=student,
        teacher=teacher, settings=settings, training=training, metrics=metrics, repo_or_path=repo_or_path,
        adapter=adapter, student_parameters=_count(student_parameters),
        teacher_parameters=_count(teacher.get("parameters")),
        dataset=None if dataset is None else (hub_id(dataset) or folder_name(dataset)), versions=versions or {},
    )


def describe_teacher(trainer) -> dict:
    """The teacher as a card names it; for a cache, the teacher its manifest records and the cache's own folder."""
    cache = getattr(trainer.teacher, "cache", None)
    if cache is not None:
        recorded = cache.manifest.get("teacher", {})
        return {"model": model_ref(recorded.get("name_or_path")), "revision": recorded.get("revision"),
                "cache": {"name": folder_name(cache.path), "top_k": cache.top_k, "temperature": cache.temperature,
                          "num_examples": cache.manifest.get("dataset", {}).get("num_examples")}}
    client = getattr(trainer.teacher, "client", None)
    if client is not None:  # a served teacher (online KD): its served name and engine, never its URL or key
        teacher = trainer.teacher
        return {"model": model_ref(teacher.model), "served": {"engine": teacher.engine, "top_k": teacher.top_k}}
    model = trainer.teacher_model
    config = getattr(model, "config", None)
    return {"model": model_ref(getattr(config, "_name_or_path", None)),
            "revision": getattr(config, "_commit_hash", None), "model_type": getattr(config, "model_type", None),
            "dtype": str(getattr(model, "dtype", "")).removeprefix("torch.") or None,
            "parameters": sum(p.numel() for p in model.parameters()),
            "quantization": getattr(trainer.args, "teacher_quantization", None)}


def _versions() -> dict[str, str]:
    import torch
    import transformers
    import trl

    from hf_distill import __version__

    return {"hf_distill": __version__, "TRL": trl.__version__, "Transformers": transformers.__version__,
            "PyTorch": torch.__version__}


def trainer_card(trainer, model_name: str | None = None, dataset_name: str | None = None,
                 tags: str | list[str] | None = None, license: str | None = None,
                 output_dir: str | os.PathLike | None = None) -> ModelCard:
    """The card of ``trainer``'s student as it stands (settings from ``trainer.args``, metrics from
    ``trainer.state.log_history``)."""
    from hf_distill.models.adapters import describe_adapter

    args = trainer.args
    student = trainer.accelerator.unwrap_model(trainer.model)
    adapter = describe_adapter(student)
    repo = getattr(trainer, "hub_model_id", None) or args.hub_model_id  # set once `push_to_hub` created the repo
    folder = folder_name(output_dir or args.output_dir)
    config = getattr(student, "config", None)
    teacher = describe_teacher(trainer)
    tags = [tags] if isinstance(tags, str) else list(tags or [])
    return render_trainer_card(
        model_name=model_name or (repo.split("/")[-1] if repo else folder),
        student=model_ref(getattr(config, "_name_or_path", None)),
        teacher=teacher,
        settings=distillation_settings(args, teacher, adapter),
        training=training_settings(args, trainer.state, trainer.accelerator.num_processes),
        metrics=final_metrics(trainer.state.log_history),
        repo_or_path=repo or folder,
        adapter=adapter,
        student_parameters=sum(p.numel() for p in student.parameters()),
        dataset=dataset_name, license=license,
        tags=[*trainer._tag_names, *tags],
        versions=_versions(),
    )


def save_card(card: ModelCard, folder: str | os.PathLike) -> Path:
    """Write ``folder/README.md`` atomically (a crash leaves the old card or the new one, never half of one)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / "README.md") as tmp:
        card.save(tmp)
    return folder / "README.md"
