"""Cascade recipes: a YAML file that lists distillation stages, validated on load.

Every mistake is reported with its place in the file, the bad key or value, and what is allowed, before anything is
downloaded or trained. A stage's ``training:`` mapping is passed to :class:`~hf_distill.DistillationConfig` as is, so
its keys are checked against that dataclass (fields other engineers add work without changes here).

Stages form a chain: each one's teacher is the last stage before it (the first one's, ``recipe.teacher``). Two keys
make side branches: ``teacher_stage: NAME`` takes an earlier stage as the teacher (and the model a ``shrink`` cuts),
and ``baseline: true`` marks a stage that teaches no later one (a comparison arm, e.g. the same shrunk student trained
by ``method: sft``): the chain skips over it.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from hf_distill.models.shrink import ShrinkSpec
from hf_distill.traces.config import TraceConfig
from hf_distill.utils.fingerprint import fingerprint

METHODS = ("sft", "logit", "features", "traces")
QUANTIZATION = (None, "8bit", "4bit")
# DistillationConfig fields the cascade sets itself: a recipe that sets them would be silently overridden.
RUNNER_OWNED = ("output_dir", "teacher_model_name_or_path", "teacher_cache", "resume_from_checkpoint", "hub_token",
                "push_to_hub", "hub_model_id")


class RecipeError(ValueError):
    """A recipe that cannot run; the message names the place in the file and the fix."""


def _check_keys(where: str, mapping: Any, allowed: tuple[str, ...] | list[str], required: tuple[str, ...] = ()) -> dict:
    if not isinstance(mapping, dict):
        raise RecipeError(f"{where}: expected a mapping with keys {sorted(allowed)}, got {type(mapping).__name__}")
    for key in mapping:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            listing = ", ".join(sorted(allowed)) if len(allowed) <= 20 else \
                "the DistillationConfig fields (`hf-distill train --help` lists them)"
            raise RecipeError(f"{where}: unknown key {key!r}{hint}; allowed keys: {listing}")
    for key in required:
        if key not in mapping:
            raise RecipeError(f"{where}: missing required key {key!r}")
    return mapping


def _check_choice(where: str, value: Any, allowed: tuple) -> Any:
    if value not in allowed:
        raise RecipeError(f"{where}: {value!r} is not allowed; use one of {list(allowed)}")
    return value


def _check_inline_config(where: str, raw: dict) -> None:
    config = raw.get("config")
    if config is not None and (not isinstance(config, dict) or "model_type" not in config):
        raise RecipeError(f"{where}.config: a mapping with `model_type` (e.g. llama, qwen2) and the config.json "
                          "values, to build the config offline")


@dataclass
class ModelRef:
    """A model by local path or hub id, optionally with its config inline (so dry runs need no download)."""

    model: str | None = None
    config: dict | None = None
    revision: str | None = None

    @classmethod
    def parse(cls, where: str, raw: Any) -> "ModelRef":
        if isinstance(raw, str):
            return cls(model=raw)
        _check_keys(where, raw, ("model", "config", "revision"))
        _check_inline_config(where, raw)
        return cls(**raw)


@dataclass
class StudentSpec(ModelRef):
    """Exactly one of: an existing checkpoint (``model``), a fresh model from ``config``, or a ``shrink`` of the
    stage's teacher."""

    shrink: ShrinkSpec | None = None

    @classmethod
    def parse(cls, where: str, raw: Any) -> "StudentSpec":
        if isinstance(raw, str):
            raw = {"model": raw}
        _check_keys(where, raw, ("model", "config", "shrink", "revision"))
        if "shrink" in raw:
            if "model" in raw or "config" in raw:
                raise RecipeError(f"{where}: `shrink` builds the student from its teacher; drop `model`/`config`")
            allowed = [f.name for f in fields(ShrinkSpec)]
            _check_keys(f"{where}.shrink", raw["shrink"], allowed)
            try:
                return cls(shrink=ShrinkSpec(**raw["shrink"]))
            except (ValueError, TypeError) as err:
                raise RecipeError(f"{where}.shrink: {err}") from None
        if "model" not in raw and "config" not in raw:
            raise RecipeError(f"{where}: give `model` (path or hub id), `config` (a fresh model) or `shrink`")
        _check_inline_config(where, raw)
        return cls(**raw)


@dataclass
class DataSpec:
    """GSM8K-format data: the embedded ``arithmetic`` generator, a local jsonl file/directory, or a hub dataset."""

    dataset: str = "arithmetic"
    subset: str | None = None
    train_split: str = "train"  # a `datasets` slice works too: "train[:300]" (a stage with 300 labelled problems)
    test_split: str = "test"
    question_column: str = "question"
    answer_column: str = "answer"
    generator: dict = field(default_factory=dict)  # make_arithmetic_dataset kwargs (n_train, n_test, max_value, ...)

    @classmethod
    def parse(cls, where: str, raw: Any, base: "DataSpec | None" = None) -> "DataSpec":
        _check_keys(where, raw, [f.name for f in fields(cls)])
        values = {**(base.__dict__ if base else {}), **raw}
        generator_keys = ("n_train", "n_test", "seed", "max_value", "min_steps", "max_steps")
        _check_keys(f"{where}.generator", values.get("generator") or {}, generator_keys)
        return cls(**values)


@dataclass
class EvalSpec:
    enabled: bool = True
    num_examples: int | None = 200  # test problems (None: all)
    max_new_tokens: int = 128
    batch_size: int = 64

    @classmethod
    def parse(cls, where: str, raw: Any, base: "EvalSpec | None" = None) -> "EvalSpec":
        if raw is False:
            return cls(enabled=False)
        _check_keys(where, raw, [f.name for f in fields(cls)])
        return cls(**{**(base.__dict__ if base else {}), **raw})


@dataclass
class Stage:
    name: str
    student: StudentSpec
    methods: list[str]
    training: dict
    data: DataSpec
    evaluation: EvalSpec
    peft: dict | None = None
    student_quantization: str | None = None
    traces: dict = field(default_factory=dict)
    push_to_hub: dict | None = None
    # resolved on load: the stage whose model teaches this one (`teacher_stage:`, else the last non-baseline stage
    # before it); None: the root teacher (`recipe.teacher`, or nothing for a first `method: sft` stage)
    teacher_stage: str | None = None
    baseline: bool = False  # a side branch: no later stage learns from it
    raw: dict = field(default_factory=dict, repr=False)  # as written in the recipe (card excerpt, hashing)


@dataclass
class Recipe:
    name: str
    output_dir: str
    stages: list[Stage]
    teacher: ModelRef | None = None
    tokenizer: str | dict | None = None
    seed: int = 0
    license: str | None = None
    path: Path | None = None
    raw: dict = field(default_factory=dict, repr=False)

    def stage_hash(self, index: int, teacher_hash: str) -> str:
        """Fingerprint of what determines stage ``index``'s output: its recipe entry, shared inputs, its teacher."""
        stage = self.stages[index]
        payload = {"stage": stage.raw, "data": stage.data.__dict__, "evaluation": stage.evaluation.__dict__,
                   "tokenizer": self.tokenizer, "seed": self.seed, "teacher": teacher_hash,
                   "root": None if self.teacher is None else self.teacher.__dict__}
        return fingerprint(payload)


_TOP = ("name", "output_dir", "seed", "license", "teacher", "tokenizer", "data", "evaluation", "stages")
_STAGE = ("name", "student", "method", "training", "data", "evaluation", "peft", "student_quantization", "traces",
          "push_to_hub", "teacher_stage", "baseline")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _training_fields() -> tuple[str, ...]:
    from hf_distill.config import DistillationConfig

    return tuple(f.name for f in fields(DistillationConfig) if f.init)


def parse_recipe(raw: Any, path: Path | None = None) -> Recipe:
    """Validate a recipe mapping (as loaded from YAML) and return it typed."""
    _check_keys("recipe", raw, _TOP, required=("name", "stages"))
    stages_raw = raw["stages"]
    if not isinstance(stages_raw, list) or not stages_raw:
        raise RecipeError("recipe.stages: a non-empty list of stages is required")
    data = DataSpec.parse("recipe.data", raw.get("data") or {})
    evaluation = EvalSpec.parse("recipe.evaluation", {} if raw.get("evaluation") is None else raw["evaluation"])
    teacher = ModelRef.parse("recipe.teacher", raw["teacher"]) if raw.get("teacher") is not None else None
    tokenizer = raw.get("tokenizer")
    if isinstance(tokenizer, dict):
        _check_keys("recipe.tokenizer", tokenizer, ("vocab_size",), required=("vocab_size",))
    training_fields = _training_fields()
    stages, names, baselines = [], set(), set()
    chain_end = None  # the last non-baseline stage so far: the next stage's default teacher
    for i, entry in enumerate(stages_raw):
        where = f"recipe.stages[{i}]"
        _check_keys(where, entry, _STAGE, required=("name", "student", "method"))
        name = str(entry["name"])
        if not _NAME.match(name) or name in names:
            raise RecipeError(f"{where}.name: {name!r} must be unique and made of letters, digits, '_', '-', '.'")
        names.add(name)
        where = f"recipe.stages[{i}] ({name})"
        methods = entry["method"] if isinstance(entry["method"], list) else [entry["method"]]
        for method in methods:
            _check_choice(f"{where}.method", method, METHODS)
        if "sft" in methods and len(methods) > 1:
            raise RecipeError(f"{where}.method: 'sft' trains without a teacher and cannot be mixed; use one of "
                              f"{list(METHODS[1:])} or a list of them")
        student = StudentSpec.parse(f"{where}.student", entry["student"])
        teacher_stage = _teacher_stage(where, entry, names - {name}, baselines, chain_end)
        baseline = entry.get("baseline", False)
        if not isinstance(baseline, bool):
            raise RecipeError(f"{where}.baseline: true (a side branch no later stage learns from) or false, "
                              f"got {baseline!r}")
        rootless = teacher_stage is None and teacher is None
        if rootless and baseline:
            raise RecipeError(f"{where}.baseline: a baseline is compared with its teacher, and this stage has none; "
                              "put it after the stage it branches from (or name it in `teacher_stage`)")
        if rootless and methods != ["sft"]:
            raise RecipeError(f"{where}: the first stage needs a teacher: set `recipe.teacher` (path or hub id) or "
                              "make this stage `method: sft` (it then trains the root teacher)")
        if rootless and student.shrink is not None:
            raise RecipeError(f"{where}.student.shrink: there is no teacher to shrink; set `recipe.teacher`")
        training = entry.get("training") or {}
        _check_keys(f"{where}.training", training, training_fields)
        owned = sorted(set(training) & set(RUNNER_OWNED))
        if owned:
            raise RecipeError(f"{where}.training: {owned} are set by the cascade (stage directories, the previous "
                              "stage as teacher, push_to_hub:); remove them")
        quant = _check_choice(f"{where}.student_quantization", entry.get("student_quantization"), QUANTIZATION)
        if quant is not None and (not entry.get("peft") or student.model is None):
            raise RecipeError(f"{where}: student_quantization={quant!r} (QLoRA) needs a `peft:` LoRA config and a "
                              "`student: {model: ...}` checkpoint to load quantised")
        _check_keys(f"{where}.traces", entry.get("traces") or {}, [f.name for f in fields(TraceConfig)])
        if entry.get("traces") and "traces" not in methods:
            raise RecipeError(f"{where}.traces: trace settings without `traces` in `method`; add it or drop them")
        if entry.get("peft") is not None and not isinstance(entry["peft"], dict):
            raise RecipeError(f"{where}.peft: a mapping of peft.LoraConfig arguments (r, lora_alpha, ...)")
        push = entry.get("push_to_hub")
        if push is not None:
            push = {"repo_id": push} if isinstance(push, str) else push
            _check_keys(f"{where}.push_to_hub", push, ("repo_id", "private", "revision"), required=("repo_id",))
        stage_data = DataSpec.parse(f"{where}.data", entry.get("data") or {}, data)
        stage_eval = EvalSpec.parse(f"{where}.evaluation", entry.get("evaluation", {}) or {}, evaluation) \
            if entry.get("evaluation") is not False else EvalSpec(enabled=False)
        stages.append(Stage(name, student, methods, dict(training), stage_data, stage_eval, entry.get("peft"), quant,
                            dict(entry.get("traces") or {}), push, teacher_stage, baseline, raw=entry))
        if baseline:
            baselines.add(name)
        else:
            chain_end = name
    return Recipe(name=str(raw["name"]), output_dir=str(raw.get("output_dir") or f"cascade-{raw['name']}"),
                  stages=stages, teacher=teacher, tokenizer=tokenizer, seed=int(raw.get("seed", 0)),
                  license=raw.get("license"), path=path, raw=raw)


def _teacher_stage(where: str, entry: dict, earlier: set[str], baselines: set[str], chain_end: str | None):
    """``teacher_stage:`` checked (an earlier stage that is not a baseline), else the chain's last stage."""
    if "teacher_stage" not in entry:
        return chain_end
    named = entry["teacher_stage"]
    if named not in earlier:
        close = difflib.get_close_matches(str(named), sorted(earlier), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(f"{where}.teacher_stage: {named!r} is not a stage before this one{hint}; earlier stages: "
                          f"{sorted(earlier)} (the first stage's teacher is `recipe.teacher`)")
    if named in baselines:
        raise RecipeError(f"{where}.teacher_stage: {named!r} is a baseline, which teaches no stage; name a stage "
                          "of the chain or drop `baseline: true` there")
    return named


def load_recipe(path: str | Path) -> Recipe:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"no recipe at {path}; shipped ones are in the repository's recipes/ folder")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from None
    return parse_recipe(raw, path)
