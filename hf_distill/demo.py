"""`hf-distill demo`: distil a reasoning task end to end on a CPU, with nothing downloaded.

The demo is a cascade recipe, ``hf_distill/recipes/demo.yaml`` (shipped in the package), run by
:class:`~hf_distill.cascade.runner.CascadeRunner`, in the setting where distillation pays ("Distilling step-by-step",
Hsieh et al. 2023): the student's owner has a few hundred labelled problems, and a teacher trained on many more.
Arithmetic word problems in GSM8K format and a byte-level BPE trained on them; a small Llama ``teacher`` trained by SFT
on ``teacher_examples`` labelled problems; ``student-kd`` (a >= 4x smaller Llama cut out of the teacher's weights,
:mod:`hf_distill.models.shrink`) trained on ``unlabelled`` questions the teacher never saw, answered by the teacher
(greedy traces, never checked against a gold answer) with logit KD on them; and ``student-sft``, the same student
trained by SFT on the ``labelled`` problems it has (a baseline branch of the cascade). :class:`DemoSettings` are the
demo's knobs; :func:`demo_recipe` writes them into the recipe. Finished stages are reused on a rerun from the
cascade's manifest. The table reports each accuracy's standard error over the ``n_test`` held-out problems and the
paired standard error of the two students' difference.

Under the output directory: the cascade's layout (``manifest.json``, ``tokenizer/``, ``stages/<name>/model/``, ...),
``results.json`` (the cascade's lineage plus the demo's table: ``rows``, ``seconds``), and, to reload the models by
name and for ``benchmarks/``: ``teacher/``, ``student-kd/``, ``student-sft/`` (links to ``stages/<name>/model``)
and ``data/`` (``dataset/``, ``tokenizer/``).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path

import torch
import yaml

from hf_distill.cascade.recipe import Recipe, parse_recipe
from hf_distill.cascade.runner import CascadeRunner
from hf_distill.evaluation.answers import answers_match
from hf_distill.evaluation.generate import answer_agreement
from hf_distill.models.build import ModelSize
from hf_distill.models.shrink import ShrinkSpec
from hf_distill.utils.device import fast_bf16_available
from hf_distill.utils.io import write_json_atomic

RECIPE = "recipes/demo.yaml"  # inside the hf_distill package (package data: found in a wheel install too)
STAGES = ("teacher", "student-kd", "student-sft")


@dataclass(frozen=True)
class DemoSettings:
    """Everything that determines the demo's results; the defaults are the shipped recipe's values."""

    seed: int = 0
    n_train: int = 6000  # generated training problems: the teacher's, then the unlabelled questions
    teacher_examples: int = 4000  # labelled problems the teacher trains on (the first ones)
    labelled: int = 300  # the student's labelled problems (the first ones: the teacher had them too)
    unlabelled: int = 2000  # questions after the teacher's, answered by the teacher for student-kd
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
    # 900 / 300 (was 1,500 / 600) so the demo fits in 10 minutes on 2 cores; measured: KD beats SFT-only by +2.9 s.e.
    # in 9 min 10 s; 300 more student steps give +4.2 s.e. in 11 min 40 s (README, "The embedded demo")
    teacher_steps: int = 900
    student_steps: int = 300
    batch_size: int = 32
    teacher_lr: float = 3e-3
    student_lr: float = 3e-3
    kd_loss: str = "forward_kl"
    temperature: float = 1.0
    alpha: float = 0.5  # CE on the teacher's trace tokens, plus KL to its distribution at each of them
    max_new_tokens: int = 64

    def __post_init__(self):
        if self.teacher_examples + self.unlabelled > self.n_train or self.labelled > self.teacher_examples:
            raise ValueError(f"demo: need labelled ({self.labelled}) <= teacher_examples ({self.teacher_examples}) "
                             f"and teacher_examples + unlabelled ({self.unlabelled}) <= n_train ({self.n_train})")

    @classmethod
    def fast(cls) -> "DemoSettings":
        """A seconds-long run for tests and smoke checks: same pipeline, toy sizes."""
        return cls(n_train=64, n_test=8, teacher_examples=32, labelled=8, unlabelled=32, vocab_size=300,
                   teacher=ModelSize(32, 1, 2),
                   student=ShrinkSpec(hidden_size=16, intermediate_size=32, num_attention_heads=1),
                   teacher_steps=3, student_steps=3, batch_size=8, max_new_tokens=24)


@dataclass
class DemoResult:
    rows: dict[str, dict[str, float]] = field(default_factory=dict)  # by stage: accuracy (+ s.e.), agreement, ...
    # student-kd minus student-sft on the same n problems, with the paired standard error of that difference
    comparison: dict[str, float] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # training time of the stages trained by this run


def settings_with(settings: DemoSettings, **overrides) -> DemoSettings:
    return replace(settings, **{k: v for k, v in overrides.items() if v is not None})


def _schedule(steps: int, lr: float, batch_size: int) -> dict:
    """A stage's optimisation in the recipe: cosine decay after a 5% warm-up."""
    return dict(max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=lr, lr_scheduler_type="cosine",
                warmup_steps=max(1, steps // 20), weight_decay=0.0, logging_steps=max(1, steps // 10))


def _llama_config(size: ModelSize) -> dict:
    """The teacher's ``config:`` values, sized as :func:`hf_distill.models.build.build_llama` sizes a Llama."""
    return dict(hidden_size=size.hidden_size,
                intermediate_size=size.intermediate_size or 32 * round(size.hidden_size * 8 / 3 / 32),
                num_hidden_layers=size.num_layers, num_attention_heads=size.num_heads,
                num_key_value_heads=size.num_kv_heads or size.num_heads)


def _shrink(spec: ShrinkSpec) -> dict:
    """``shrink:`` as a recipe writes it: the fields that differ from their defaults."""
    values = spec.to_dict()
    return {f.name: values[f.name] for f in fields(spec) if f.name in values and getattr(spec, f.name) != f.default}


def demo_recipe(settings: DemoSettings | None = None) -> Recipe:
    """The shipped recipe with ``settings`` written into it (the default settings change nothing in it)."""
    source = resources.files("hf_distill").joinpath(RECIPE)
    raw = yaml.safe_load(source.read_text())
    s = settings or DemoSettings()
    raw["seed"] = s.seed
    raw["data"]["generator"] = dict(n_train=s.n_train, n_test=s.n_test, max_value=s.max_value,
                                    min_steps=s.min_steps, max_steps=s.max_steps)
    raw["tokenizer"] = {"vocab_size": s.vocab_size}
    raw["evaluation"] = {"num_examples": s.n_test, "max_new_tokens": s.max_new_tokens}
    teacher, kd, sft = ({st["name"]: st for st in raw["stages"]}[name] for name in STAGES)
    teacher["student"]["config"].update(_llama_config(s.teacher))
    teacher["training"].update(_schedule(s.teacher_steps, s.teacher_lr, s.batch_size))
    teacher["data"] = {"train_split": f"train[:{s.teacher_examples}]"}
    kd["data"] = {"train_split": f"train[{s.teacher_examples}:{s.teacher_examples + s.unlabelled}]"}
    sft["data"] = {"train_split": f"train[:{s.labelled}]"}
    kd["traces"]["max_new_tokens"] = s.max_new_tokens
    for stage in (kd, sft):
        stage["student"]["shrink"] = _shrink(s.student)
        stage["training"].update(_schedule(s.student_steps, s.student_lr, s.batch_size))
    kd["training"].update(kd_loss=s.kd_loss, temperature=s.temperature, alpha=s.alpha)
    return parse_recipe(raw, Path(str(source)))


def _training_args(settings: DemoSettings, output_dir: Path, steps: int, lr: float) -> dict:
    """TrainingArguments for one more student arm outside the cascade, trained as the demo's stages are (the
    experiments in ``benchmarks/`` use them with SFTConfig or DistillationConfig)."""
    return dict(output_dir=str(output_dir), **_schedule(steps, lr, settings.batch_size), save_strategy="no",
                report_to=[], activation_checkpointing=False, seed=settings.seed,
                use_cpu=not torch.cuda.is_available(), bf16=fast_bf16_available(), dataloader_num_workers=0)


def run_demo(out_dir: str | Path, settings: DemoSettings | None = None, log=print) -> DemoResult:
    """Run the demo's recipe with the cascade runner (finished stages are reused) and tabulate its three models."""
    began = time.perf_counter()
    runner = CascadeRunner(demo_recipe(settings), out_dir, log=log)
    manifest = runner.run()
    _link_models(runner.root)
    if runner.trained or not (runner.root / "data").is_dir():  # new data retrains the teacher, so all stages
        _save_data(runner)
    result = DemoResult()
    test = runner.dataset(runner.recipe.stages[0])["test"]
    golds = list(test["answer"])
    correct = {}
    for name in STAGES:
        metrics = manifest["stages"][name]["metrics"]
        evaluated = json.loads((runner.root / "stages" / name / "eval.json").read_text())
        agreement = metrics.get("agreement_with_teacher")
        if agreement is None:  # the teacher, with itself: 1.0 unless it never gives a final answer
            agreement = answer_agreement(evaluated["answers"], evaluated["answers"])
        correct[name] = torch.tensor([float(answers_match(text, gold))  # as the stage's accuracy counts them
                                      for text, gold in zip(evaluated["generations"], golds)])
        n = len(correct[name])
        result.rows[name] = {"accuracy": metrics["accuracy"], "accuracy_se": _standard_error(correct[name]),
                             "n": n, "agreement_with_teacher": agreement, "parameters": metrics["parameters"],
                             "tokens_per_second": metrics["tokens_per_second"]}
        if name in runner.trained:
            result.seconds[name] = metrics["train_seconds"]
    difference = correct["student-kd"] - correct["student-sft"]  # paired: the same problems
    result.comparison = {"n": len(difference), "difference": float(difference.mean()),
                         "se": _standard_error(difference)}
    result.seconds["total"] = time.perf_counter() - began
    results = runner.root / "results.json"  # the cascade's lineage, and the demo's table beside it
    write_json_atomic(results, {**json.loads(results.read_text()), **asdict(result)})
    return result


def _standard_error(values: torch.Tensor) -> float:
    """Standard error of the mean of per-problem values (0/1 correct, or a paired difference of two of them)."""
    return float(values.std(unbiased=True) / len(values) ** 0.5) if len(values) > 1 else float("nan")


def _link_models(root: Path) -> None:
    """``teacher/``, ``student-kd/``, ``student-sft/``: the stages' models by name (a copy where links fail)."""
    for name in STAGES:
        link, target = root / name, Path("stages") / name / "model"
        if link.is_symlink() and Path(os.readlink(link)) == target:
            continue
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        try:
            link.symlink_to(target, target_is_directory=True)
        except OSError:
            shutil.copytree(root / target, link)


def _save_data(runner: CascadeRunner) -> None:
    """``data/dataset`` (train/test, as ``load_from_disk`` reads it) and ``data/tokenizer``, for ``benchmarks/``."""
    staging = runner.root / ".data.partial"
    shutil.rmtree(staging, ignore_errors=True)
    runner.dataset(runner.recipe.stages[0]).save_to_disk(str(staging / "dataset"))
    shutil.copytree(runner.root / "tokenizer", staging / "tokenizer")
    shutil.rmtree(runner.root / "data", ignore_errors=True)
    os.replace(staging, runner.root / "data")
