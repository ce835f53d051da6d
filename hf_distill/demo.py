"""`hf-distill demo`: distil a reasoning task end to end on a CPU, with nothing downloaded.

Stages, each written in Hugging Face format under the output directory and skipped when already complete:

1. ``data/``: arithmetic word problems in GSM8K format (generated, deterministic by seed).
2. ``tokenizer/``: a byte-level BPE trained on the task, with a chat template.
3. ``teacher/``: a small Llama trained by plain SFT.
4. ``student-kd/``: a >= 4x smaller Llama cut out of the teacher's weights (:mod:`hf_distill.models.shrink`: all layers,
   narrower) and distilled from the teacher with logit KD.
5. ``student-sft/``: the same student (same init, data and steps) trained by SFT only: the baseline.
6. ``results.json``: accuracy, agreement with the teacher, parameters and generation speed of all three.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from datasets import DatasetDict, load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from hf_distill.config import DistillationConfig
from hf_distill.data.arithmetic import make_arithmetic_dataset
from hf_distill.data.reasoning import to_prompt_completion
from hf_distill.data.tokenizer import train_tokenizer
from hf_distill.evaluation.generate import (
    ReasoningEval,
    answer_agreement,
    evaluate_reasoning,
)
from hf_distill.models.build import ModelSize, build_llama
from hf_distill.models.shrink import ShrinkSpec, shrink_model
from hf_distill.trainer import DistillationTrainer


@dataclass(frozen=True)
class DemoSettings:
    """Everything that determines the demo's results (hashed to decide whether a finished stage can be reused)."""

    seed: int = 0
    n_train: int = 6000
    n_test: int = 200
    max_value: int = 50
    min_steps: int = 1
    max_steps: int = 2
    vocab_size: int = 512
    teacher: ModelSize = ModelSize(hidden_size=192, num_layers=4, num_heads=4)
    # 4.1x fewer parameters than the teacher. Measured (600 steps): a shrink of the teacher reaches 54-56% where a
    # randomly initialised 128x2 student of the same size reaches 38-40%, with KD or SFT alike.
    student: ShrinkSpec = ShrinkSpec(hidden_size=96, intermediate_size=224, num_attention_heads=2,
                                     num_key_value_heads=2)
    teacher_steps: int = 1500
    student_steps: int = 600
    batch_size: int = 32
    teacher_lr: float = 3e-3
    student_lr: float = 3e-3
    kd_loss: str = "reverse_kl"  # measured 54.5% vs 42.0% for forward_kl on this student (alpha 0.8)
    temperature: float = 1.0
    alpha: float = 0.8
    max_new_tokens: int = 64

    @classmethod
    def fast(cls) -> "DemoSettings":
        """A seconds-long run for tests and smoke checks: same pipeline, toy sizes."""
        return cls(n_train=64, n_test=8, vocab_size=300, teacher=ModelSize(32, 1, 2),
                   student=ShrinkSpec(hidden_size=16, intermediate_size=32, num_attention_heads=1),
                   teacher_steps=3, student_steps=3, batch_size=8, max_new_tokens=24)

    def fingerprint(self, *fields: str) -> str:
        values = asdict(self)
        return hashlib.sha256(json.dumps({f: values[f] for f in fields}, sort_keys=True).encode()).hexdigest()[:12]


@dataclass
class DemoResult:
    rows: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


_DATA_FIELDS = ("seed", "n_train", "n_test", "max_value", "min_steps", "max_steps")
_TEACHER_FIELDS = (*_DATA_FIELDS, "vocab_size", "teacher", "teacher_steps", "batch_size", "teacher_lr")
_SFT_STUDENT_FIELDS = (*_TEACHER_FIELDS, "student", "student_steps", "student_lr")
_KD_STUDENT_FIELDS = (*_SFT_STUDENT_FIELDS, "kd_loss", "temperature", "alpha")


class _Stages:
    """A stage is complete when its directory holds a ``.complete`` marker with the fingerprint of its inputs.

    Outputs are written to a temporary sibling and renamed into place, so an interrupted stage never leaves a
    half-written directory that looks finished.
    """

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def done(self, name: str, fingerprint: str) -> bool:
        marker = self.root / name / ".complete"
        return marker.exists() and marker.read_text().strip() == fingerprint

    def commit(self, name: str, staging: Path, fingerprint: str) -> Path:
        (staging / ".complete").write_text(fingerprint)
        final = self.root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
        return final

    def staging(self, name: str) -> Path:
        path = self.root / f".{name}.partial"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        return path


def _training_args(settings: DemoSettings, output_dir: Path, steps: int, lr: float) -> dict:
    cuda = torch.cuda.is_available()
    return dict(
        output_dir=str(output_dir), max_steps=steps, per_device_train_batch_size=settings.batch_size,
        learning_rate=lr, lr_scheduler_type="cosine", warmup_steps=max(1, steps // 20), weight_decay=0.0,
        logging_steps=max(1, steps // 10), save_strategy="no", report_to=[], activation_checkpointing=False,
        seed=settings.seed, use_cpu=not cuda, bf16=_fast_bf16_available(), dataloader_num_workers=0,
    )


def _fast_bf16_available() -> bool:
    """bf16 autocast is 2-3.5x faster on CPUs with native bf16 (avx512_bf16/AMX), and much slower on others."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def run_demo(out_dir: str | Path, settings: DemoSettings | None = None, log=print) -> DemoResult:
    settings = settings or DemoSettings()
    stages = _Stages(Path(out_dir))
    result = DemoResult()
    torch.manual_seed(settings.seed)

    # 1-2. data and tokenizer
    began = time.perf_counter()
    data_fp = settings.fingerprint(*_DATA_FIELDS)
    if not stages.done("data", data_fp):
        data = make_arithmetic_dataset(settings.n_train, settings.n_test, seed=settings.seed,
                                       max_value=settings.max_value, min_steps=settings.min_steps,
                                       max_steps=settings.max_steps)
        staging = stages.staging("data")
        data.save_to_disk(staging / "dataset")
        train_tokenizer(list(data["train"]["question"]) + list(data["train"]["answer"]),
                        vocab_size=settings.vocab_size, save_dir=staging / "tokenizer")
        stages.commit("data", staging, data_fp)
    data: DatasetDict = load_from_disk(str(stages.root / "data" / "dataset"))
    tokenizer = AutoTokenizer.from_pretrained(stages.root / "data" / "tokenizer")
    train = to_prompt_completion(data["train"])
    questions, golds = list(data["test"]["question"]), list(data["test"]["answer"])
    result.seconds["data"] = time.perf_counter() - began

    # 3. teacher by plain SFT
    teacher_fp = settings.fingerprint(*_TEACHER_FIELDS)
    if not stages.done("teacher", teacher_fp):
        log(f"stage 3/6 teacher: SFT for {settings.teacher_steps} steps")
        began = time.perf_counter()
        model = build_llama(tokenizer, settings.teacher, seed=settings.seed)
        staging = stages.staging("teacher")
        args = SFTConfig(**_training_args(settings, staging / "run", settings.teacher_steps, settings.teacher_lr))
        trainer = SFTTrainer(model, args, train_dataset=train, processing_class=tokenizer)
        trainer.train()
        _save(trainer, tokenizer, staging)
        stages.commit("teacher", staging, teacher_fp)
        result.seconds["teacher"] = time.perf_counter() - began
    teacher = AutoModelForCausalLM.from_pretrained(stages.root / "teacher")

    # 4-5. the same student init, distilled vs SFT only
    for name, fields in (("student-kd", _KD_STUDENT_FIELDS), ("student-sft", _SFT_STUDENT_FIELDS)):
        student_fp = settings.fingerprint(*fields)
        if stages.done(name, student_fp):
            continue
        log(f"stage {4 if name == 'student-kd' else 5}/6 {name}: {settings.student_steps} steps")
        began = time.perf_counter()
        student, _ = shrink_model(teacher, settings.student)
        staging = stages.staging(name)
        common = _training_args(settings, staging / "run", settings.student_steps, settings.student_lr)
        if name == "student-kd":
            args = DistillationConfig(**common, kd_loss=settings.kd_loss, temperature=settings.temperature,
                                      alpha=settings.alpha)
            trainer = DistillationTrainer(student, args, train_dataset=train, processing_class=tokenizer,
                                          teacher_model=teacher)
        else:
            trainer = SFTTrainer(student, SFTConfig(**common), train_dataset=train, processing_class=tokenizer)
        trainer.train()
        _save(trainer, tokenizer, staging)
        stages.commit(name, staging, student_fp)
        result.seconds[name] = time.perf_counter() - began

    # 6. evaluation
    log("stage 6/6 evaluation: greedy generation on the test split")
    began = time.perf_counter()
    evals: dict[str, ReasoningEval] = {}
    for name in ("teacher", "student-kd", "student-sft"):
        model = teacher if name == "teacher" else AutoModelForCausalLM.from_pretrained(stages.root / name)
        evals[name] = evaluate_reasoning(model, tokenizer, questions, golds, settings.max_new_tokens)
    for name, ev in evals.items():
        result.rows[name] = {
            "accuracy": ev.accuracy,
            "agreement_with_teacher": answer_agreement(ev.answers, evals["teacher"].answers),
            "parameters": ev.num_parameters,
            "tokens_per_second": ev.tokens_per_second,
        }
    result.seconds["evaluation"] = time.perf_counter() - began
    (stages.root / "results.json").write_text(json.dumps(asdict(result), indent=2))
    return result


def _save(trainer, tokenizer, directory: Path) -> None:
    trainer.save_model(str(directory))
    tokenizer.save_pretrained(directory)
    shutil.rmtree(directory / "run", ignore_errors=True)


def settings_with(settings: DemoSettings, **overrides) -> DemoSettings:
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})
