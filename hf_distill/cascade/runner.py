"""Run a cascade: each stage trains a student from its teacher, and the trained student teaches the next stage.

Layout under the output directory::

    manifest.json            per stage: status, input hash, metrics, wall time (rewritten atomically)
    tokenizer/               when the recipe trains one
    stages/<name>/run/       Trainer checkpoints while the stage trains (an interrupted stage resumes from them)
    stages/<name>/model/     the finished student: safetensors, tokenizer, README.md (card), plots
    stages/<name>/eval.json  its generations' answers (the next stage's agreement is measured against them)
    stages/<name>/model/<name>.<quant>.gguf, deployment.json   with ``export:`` (GGUF files, their measurements)

A stage is skipped on a rerun when the manifest says it finished with the same input hash (its recipe entry, shared
inputs and its teacher's hash, so editing a stage redoes it and every stage that learns from it). A stage's teacher
is the previous stage unless the recipe branches (``teacher_stage:``, ``baseline: true``: see
:mod:`hf_distill.cascade.recipe`); ``results.json`` lists the chain as ``lineage`` and the stages off it (baselines,
other branches) as ``branches``.

A stage's ``export:`` runs after it finished (its own record in the manifest entry, ``export``): each GGUF file and
each benchmark is keyed by the stage's hash and its own settings, so a rerun (or a run killed while exporting) does
only what is missing, and adding ``export:`` to a finished stage exports it without retraining. A served root teacher
(``recipe.teacher.url``) is evaluated through its server (greedy chat requests), so the first stage's agreement and
accuracy kept are measured as for a local one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch
from datasets import DatasetDict
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from hf_distill.cards import served_speeds, write_stage_card
from hf_distill.cards.plots import cascade_plot
from hf_distill.cascade.recipe import Recipe, RecipeError, ServedTeacherRef, Stage
from hf_distill.cascade.stage import (
    build_student,
    export_stage,
    save_student,
    train_stage,
)
from hf_distill.data.reasoning import load_reasoning_dataset
from hf_distill.deploy.report import load_deployment
from hf_distill.evaluation.generate import answer_agreement, evaluate_reasoning
from hf_distill.evaluation.logic_match import mean_logic_match
from hf_distill.hub import push_folder
from hf_distill.models.gguf import convert_gguf, is_gguf, load_causal_lm, load_tokenizer
from hf_distill.models.moe import parameter_counts
from hf_distill.training.checkpoints import last_complete_checkpoint
from hf_distill.utils.fingerprint import fingerprint
from hf_distill.utils.io import write_json_atomic

MANIFEST = "manifest.json"


@dataclass
class Manifest:
    path: Path
    data: dict = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path) -> "Manifest":
        path = root / MANIFEST
        return cls(path, json.loads(path.read_text()) if path.exists() else {"stages": {}})

    def stage(self, name: str) -> dict:
        return self.data["stages"].setdefault(name, {})

    def update(self, name: str, **values) -> None:
        self.stage(name).update(values)
        write_json_atomic(self.path, self.data)


@dataclass
class StageContext:
    """What a stage's card needs from the ones before it."""

    recipe: Recipe
    root: Path
    lineage: list[dict]  # root teacher first, this stage's teacher last


def _fingerprint_model(ref: str) -> str:
    """A local teacher is fingerprinted by its config and weight files' sizes; a hub id by its name (its revision
    is part of the recipe, hashed separately)."""
    path = Path(ref)
    if path.is_file():  # a .gguf teacher: its name and size
        return hashlib.sha256(f"{path.name}:{path.stat().st_size}".encode()).hexdigest()[:16]
    if not path.is_dir():
        return ref
    digest = hashlib.sha256()
    for file in sorted(path.glob("*.json")) + sorted(path.glob("*.safetensors")):
        digest.update(file.name.encode() + str(file.stat().st_size).encode())
        if file.suffix == ".json":
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


class CascadeRunner:
    def __init__(self, recipe: Recipe, output_dir: str | Path, log: Callable[[str], None] = print,
                 callbacks: list | None = None, token: str | None = None):
        self.recipe, self.root, self.log = recipe, Path(output_dir), log
        self.callbacks = callbacks or []  # extra TrainerCallbacks for every stage (progress bars, tests)
        self.token = token  # for push_to_hub; kept in memory only
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest = Manifest.load(self.root)
        self._datasets: dict[str, DatasetDict] = {}
        self.trained: list[str] = []  # stages (re)trained by the last run(), not skipped
        self.exported: list[str] = []  # stages whose `export:` did something in the last run()

    # ---- inputs -------------------------------------------------------------------------------------------------
    def tokenizer(self) -> PreTrainedTokenizerBase:
        spec = self.recipe.tokenizer
        if isinstance(spec, dict):
            path = self.root / "tokenizer"
            if not (path / "tokenizer_config.json").exists():
                from hf_distill.data.tokenizer import train_tokenizer

                data = self.dataset(self.recipe.stages[0])["train"]
                staging = self.root / ".tokenizer.partial"
                shutil.rmtree(staging, ignore_errors=True)
                train_tokenizer(list(data["question"]) + list(data["answer"]), spec["vocab_size"], save_dir=staging)
                os.replace(staging, path)
            return AutoTokenizer.from_pretrained(path)
        teacher = self.recipe.teacher
        if teacher is not None and teacher.served:  # its served name is a hub id at best: the student's first
            source = spec or self.recipe.stages[0].student.model or teacher.model
        else:
            source = spec or (teacher.model if teacher else self.recipe.stages[0].student.model)
        if source is None:
            raise RecipeError("recipe: set `tokenizer:` (a path/hub id, or {vocab_size: N} to train one on the data)")
        try:
            return load_tokenizer(source)
        except OSError as err:
            if teacher is None or not teacher.served or spec:
                raise
            raise RecipeError(f"recipe: no tokenizer at {source!r} ({err.__class__.__name__}); the teacher is served, "
                              "so set `tokenizer:` to its tokenizer (a path or hub id; logit stages need the "
                              "teacher's token ids)") from None

    def dataset(self, stage: Stage) -> DatasetDict:
        spec = stage.data
        key = json.dumps(spec.__dict__, sort_keys=True)
        if key not in self._datasets:
            generator = {"seed": self.recipe.seed, **spec.generator} if spec.dataset == "arithmetic" else {}
            if spec.dataset == "arithmetic" or Path(spec.dataset).exists():
                source = spec.dataset
            else:
                from datasets import load_dataset

                source = load_dataset(spec.dataset, spec.subset)
            data = load_reasoning_dataset(source, question_column=spec.question_column,
                                          answer_column=spec.answer_column, **generator)
            from hf_distill.cli.arguments import (
                take_split,  # the CLI's split syntax: "train", "train[:300]"
            )

            try:  # "train[:300]": a stage that has only 300 labelled problems
                train = take_split(data, spec.train_split, spec.dataset)
            except ValueError as err:
                raise RecipeError(f"stage {stage.name}.data.train_split: {err}") from None
            self._datasets[key] = DatasetDict({"train": train, "test": data[spec.test_split]})
        return self._datasets[key]

    # ---- the loop -----------------------------------------------------------------------------------------------
    def run(self, from_stage: str | None = None) -> dict:
        names = [s.name for s in self.recipe.stages]
        if from_stage is not None and from_stage not in names:
            raise RecipeError(f"--from_stage {from_stage!r}: no such stage; stages are {names}")
        self.trained, self.exported = [], []
        tokenizer = self.tokenizer()
        ref = self.recipe.teacher
        if ref is not None and ref.served:  # stages get the reference, never weights
            root, root_hash = ref, "served:" + fingerprint(ref.hash_fields())
        else:
            root = ref.model if ref else None
            root_hash = _fingerprint_model(root) if root else "none"
            root = self._converted(root, root_hash)
        # by teacher (a stage name, None: the root): its model, its hash, its lineage (root teacher first, it last)
        teachers: dict[str | None, tuple] = {None: (root, root_hash,
                                                    [self._root_entry(tokenizer, root)] if root else [])}
        force = False
        for index, stage in enumerate(self.recipe.stages):
            force = force or stage.name == from_stage
            teacher, teacher_hash, lineage = teachers[stage.teacher_stage]
            digest = self.recipe.stage_hash(index, teacher_hash)
            entry = self.manifest.stage(stage.name)
            model_dir = self.root / "stages" / stage.name / "model"
            if not force and entry.get("status") == "done" and entry.get("hash") == digest and model_dir.is_dir():
                self.log(f"stage {stage.name}: finished earlier with the same inputs, skipped")
            elif from_stage is not None and not force:
                raise RecipeError(f"--from_stage {from_stage}: stage {stage.name} before it has not finished "
                                  "with the current recipe; run without --from_stage first")
            else:
                self._run_stage(index, stage, teacher, digest, tokenizer, StageContext(self.recipe, self.root,
                                                                                      list(lineage)))
                self.trained.append(stage.name)
            exported = self._export(stage, digest, tokenizer)
            if exported:  # the card's Deployment table and speed plot
                self.exported.append(stage.name)
                self._write_card(index, stage, StageContext(self.recipe, self.root, list(lineage)))
            if stage.push_to_hub and (stage.name in self.trained or exported):
                self._push(stage)
            entry = self.manifest.stage(stage.name)
            row = {"name": stage.name, "model": str(model_dir), **entry.get("metrics", {}), "methods": stage.methods,
                   "shrink": entry.get("shrink")}
            served = served_speeds(load_deployment(model_dir)) if stage.export and model_dir.is_dir() else None
            if served:
                row["served_tokens_per_second"] = served
            teachers[stage.name] = (str(model_dir), digest, [*lineage, row])
        self._summarise(teachers)
        return self.manifest.data

    def _converted(self, teacher: str | None, teacher_hash: str) -> str | None:
        """A GGUF root teacher is dequantised once into ``root_teacher/`` (every stage that loads it, and every rerun,
        then reads safetensors); other teachers are used where they are."""
        if teacher is None or not is_gguf(teacher):
            return teacher
        folder = self.root / "root_teacher"
        marker = folder / "source_fingerprint"
        if not (marker.is_file() and marker.read_text() == teacher_hash):
            self.log(f"root teacher {teacher}: converting the GGUF file once into {folder}")
            convert_gguf(teacher, folder)
            marker.write_text(teacher_hash)  # last: a folder without it is converted again
        return str(folder)

    def _root_entry(self, tokenizer, teacher: str) -> dict:
        """The root teacher, evaluated once (its accuracy is what the first stage keeps a share of)."""
        ref = self.recipe.teacher
        entry = self.manifest.data.setdefault("root", {})
        stage = self.recipe.stages[0]
        if stage.evaluation.enabled and "metrics" not in entry:
            self.log(f"root teacher {ref.model}: evaluating on the test problems (once; kept in the manifest)")
            began = time.perf_counter()
            if ref.served:
                metrics, answers = self._evaluate_served(ref, stage)
            else:
                model = load_causal_lm(teacher, revision=None if teacher != ref.model else ref.revision)
                metrics, answers = self._evaluate(model, tokenizer, stage, None)
            self.log(f"root teacher: accuracy {metrics['accuracy']:.1%} on {metrics['eval_examples']} problems "
                     f"({time.perf_counter() - began:.0f} s)")
            write_json_atomic(self.root / "root_eval.json", answers)
            entry.update(metrics=metrics, model=ref.model)
            write_json_atomic(self.manifest.path, self.manifest.data)
        return {"name": "root teacher", "model": ref.model, **entry.get("metrics", {})}

    def _evaluate_served(self, ref: ServedTeacherRef, stage: Stage) -> tuple[dict, dict]:
        """The served teacher's greedy answers to the test problems (one chat request each, the server's template),
        scored as a local model's are."""
        from hf_distill.data.reasoning import plain_prompt
        from hf_distill.evaluation.answers import exact_match_accuracy, extract_answer
        from hf_distill.served.sampling import sample
        from hf_distill.traces.config import TraceConfig

        test = self._test_set(stage)
        config = TraceConfig(**ref.trace_fields(), temperature=0.0, num_samples=1)
        client = config.served_client()
        endpoint = ref.endpoint

        def ask(question: str) -> str:
            prompt = [{"role": "user", "content": question}] if endpoint == "chat" else plain_prompt(question)
            return sample(client, endpoint, ref.model, prompt, n=1, temperature=0.0, top_p=1.0,
                          max_tokens=stage.evaluation.max_new_tokens, seed=self.recipe.seed)[0]

        try:
            generations = client.map(ask, list(test["question"]))
        finally:
            client.close()  # its request threads
        metrics = {"accuracy": exact_match_accuracy(generations, list(test["answer"])), "eval_examples": len(test),
                   "served": True}
        return metrics, {"answers": [extract_answer(text) for text in generations], "generations": generations}

    def _run_stage(self, index: int, stage: Stage, teacher: str | None, digest: str, tokenizer,
                   context: StageContext) -> None:
        stage_dir = self.root / "stages" / stage.name
        run_dir = stage_dir / "run"
        entry = self.manifest.stage(stage.name)
        resume = None
        if entry.get("hash") == digest and entry.get("status") == "running" and run_dir.is_dir():
            resume = last_complete_checkpoint(run_dir)  # not one a kill left half-written
        if resume is None:
            shutil.rmtree(stage_dir, ignore_errors=True)
        stage_dir.mkdir(parents=True, exist_ok=True)
        sft = stage.methods == ["sft"]
        name = _label(teacher)
        self.log(f"stage {index + 1}/{len(self.recipe.stages)} {stage.name}: {'+'.join(stage.methods)}"
                 + (" (baseline)" if stage.baseline else "")
                 + (f", teacher {name}" if teacher and not sft else "")
                 + (f", a shrink of {name}" if teacher and sft and stage.student.shrink else "")
                 + (f", upcycled to {stage.student.moe.num_experts} experts" if stage.student.moe else "")
                 + (f", resuming from {Path(resume).name}" if resume else ""))
        self.manifest.update(stage.name, status="running", hash=digest, teacher=name, metrics={},
                             model_dir=str(stage_dir / "model"), export=None)  # a new model: export it anew
        began = time.perf_counter()
        data = self.dataset(stage)
        student, shrink_plan = build_student(stage, teacher, tokenizer, self.recipe.seed, data["train"])
        trainer = train_stage(stage, student, teacher, tokenizer, data["train"], run_dir, self.recipe.seed,
                              self.callbacks, resume, log=self.log)
        staging = stage_dir / ".model.partial"
        shutil.rmtree(staging, ignore_errors=True)
        adapter = save_student(trainer, tokenizer, staging)
        write_json_atomic(staging / "log_history.json", trainer.state.log_history)
        train_seconds = time.perf_counter() - began
        model_dir = stage_dir / "model"
        shutil.rmtree(model_dir, ignore_errors=True)
        os.replace(staging, model_dir)

        metrics: dict[str, Any] = {}
        if stage.evaluation.enabled:
            self.log(f"stage {stage.name}: evaluating the student")
            model = AutoModelForCausalLM.from_pretrained(model_dir)
            teacher_answers = self._answers(stage, teacher)
            metrics, answers = self._evaluate(model, tokenizer, stage, teacher_answers)
            write_json_atomic(stage_dir / "eval.json", answers)
            teacher_metrics = context.lineage[-1] if context.lineage else {}
            if teacher_metrics.get("accuracy"):
                metrics["accuracy_kept"] = metrics["accuracy"] / teacher_metrics["accuracy"]
            if teacher_metrics.get("parameters"):
                metrics["size_vs_teacher"] = metrics["parameters"] / teacher_metrics["parameters"]
        metrics["train_seconds"] = train_seconds
        if stage.student.moe is not None:  # a mixture of experts: what a token uses, beside what is stored
            counts = parameter_counts(trainer.accelerator.unwrap_model(trainer.model))
            metrics.update(parameters=counts["total"], active_parameters=counts["active"],
                           experts={"num_experts": stage.student.moe.num_experts, "top_k": stage.student.moe.top_k})
        shrink = None
        if shrink_plan is not None:
            shrink = {"spec": stage.student.shrink.to_dict(), "teacher_layers_kept": shrink_plan.layers}
            if shrink_plan.scores:  # importance/activation pruning: the layer scores and the activation kept
                shrink["scores"] = shrink_plan.scores
        self.manifest.update(stage.name, metrics=metrics, shrink=shrink, adapter=adapter)
        self._write_card(index, stage, context)
        shutil.rmtree(run_dir, ignore_errors=True)  # checkpoints are only for resuming
        self.manifest.update(stage.name, status="done", seconds=time.perf_counter() - began)

    def _write_card(self, index: int, stage: Stage, context: StageContext) -> None:
        entry = self.manifest.stage(stage.name)
        write_stage_card(self.root / "stages" / stage.name / "model", stage, self._card_context(index, stage, context),
                         entry.get("metrics", {}), entry.get("shrink"), entry.get("adapter"), self.manifest.data)

    def _push(self, stage: Stage) -> None:
        model_dir = self.root / "stages" / stage.name / "model"
        url = push_folder(model_dir, stage.push_to_hub["repo_id"], token=self.token,
                          private=stage.push_to_hub.get("private"), revision=stage.push_to_hub.get("revision"),
                          commit_message=f"hf-distill cascade {self.recipe.name}: stage {stage.name}")
        self.manifest.update(stage.name, pushed=str(url))
        self.log(f"stage {stage.name}: pushed to {url}")

    def _export(self, stage: Stage, digest: str, tokenizer) -> bool:
        """The stage's ``export:`` (GGUF files, their agreement with the float student, server benchmarks), doing
        only what its manifest record lacks; True when something was (re)done."""
        if stage.export is None:
            return False
        record = self.manifest.stage(stage.name).get("export") or {}

        def save(updated: dict) -> None:
            self.manifest.update(stage.name, export=updated)

        return export_stage(stage, self.root / "stages" / stage.name / "model", digest, record, save,
                            self._test_set(stage), tokenizer, self.log)

    def _card_context(self, index: int, stage: Stage, context: StageContext) -> StageContext:
        """The card names the stage before this one in the recipe as its teacher: for a branch (``teacher_stage:``
        other than the previous stage), give it the recipe as this stage's own line, its teacher stages then it."""
        previous = self.recipe.stages[index - 1].name if index else None
        if stage.teacher_stage == previous:
            return context
        line, name = [stage], stage.teacher_stage
        while name is not None:
            teacher_stage = next(s for s in self.recipe.stages if s.name == name)
            line.insert(0, teacher_stage)
            name = teacher_stage.teacher_stage
        return replace(context, recipe=replace(self.recipe, stages=line))

    def _answers(self, stage: Stage, teacher: str | None) -> dict | None:
        """The teacher's answers and generations on the test problems (agreement and Logic-Match compare to them);
        for an SFT stage, those of the stage it branches or is shrunk from. None for a stage with no teacher."""
        if teacher is None:
            return None
        path = self.root / "root_eval.json" if stage.teacher_stage is None else \
            self.root / "stages" / stage.teacher_stage / "eval.json"
        return json.loads(path.read_text()) if path.exists() else None

    def _test_set(self, stage: Stage):
        test = self.dataset(stage)["test"]
        if stage.evaluation.num_examples:
            test = test.select(range(min(stage.evaluation.num_examples, len(test))))
        return test

    def _evaluate(self, model, tokenizer, stage: Stage, teacher_answers) -> tuple[dict, dict]:
        test = self._test_set(stage)
        if torch.cuda.is_available():
            model = model.to("cuda")
        ev = evaluate_reasoning(model, tokenizer, list(test["question"]), list(test["answer"]),
                                stage.evaluation.max_new_tokens, stage.evaluation.batch_size)
        metrics = {"accuracy": ev.accuracy, "parameters": ev.num_parameters, "tokens_per_second": ev.tokens_per_second,
                   "eval_examples": len(test)}
        if teacher_answers is not None:
            metrics["agreement_with_teacher"] = answer_agreement(ev.answers, teacher_answers["answers"])
            metrics["logic_match"] = mean_logic_match(ev.generations, teacher_answers["generations"])
        return metrics, {"answers": ev.answers, "generations": ev.generations}

    def _summarise(self, teachers: dict) -> None:
        """``results.json``: the chain (root teacher to the last non-baseline stage) and the stages off it."""
        chain_end = next((s.name for s in reversed(self.recipe.stages) if not s.baseline), None)
        lineage = teachers[chain_end][2]
        on_chain = {row["name"] for row in lineage}
        branches = [{**teachers[s.name][2][-1], "teacher_stage": s.teacher_stage, "baseline": s.baseline}
                    for s in self.recipe.stages if s.name not in on_chain]
        rows = [row for row in lineage if "accuracy" in row]
        changed = self.trained or self.exported or not (self.root / "cascade.png").is_file()
        if rows and changed:  # a rerun that did nothing leaves the plot as it is (matplotlib is slow to draw)
            cascade_plot(rows, self.root / "cascade.png", title=self.recipe.name)
        write_json_atomic(self.root / "results.json", {"recipe": self.recipe.name, "lineage": lineage,
                                                       "branches": branches})


def _label(teacher) -> str | None:
    """A teacher as the log and the manifest name it: its path, or a served teacher's name (never its key)."""
    return teacher.label() if isinstance(teacher, ServedTeacherRef) else teacher


def run_cascade(recipe: Recipe, output_dir: str | Path | None = None, from_stage: str | None = None,
                log=print, callbacks=None, token=None) -> dict:
    return CascadeRunner(recipe, output_dir or recipe.output_dir, log, callbacks, token).run(from_stage)

