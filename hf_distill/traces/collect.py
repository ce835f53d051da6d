"""Collect verified reasoning traces from a teacher: sample, check answers, de-duplicate, save; resumable.

    traces = collect_traces("./teacher", tokenizer, gsm8k_train, "traces/", TraceConfig(num_samples=4))
    SFTTrainer(student, args, train_dataset=traces, processing_class=tokenizer)       # or DistillationTrainer

Layout of ``output_dir``::

    manifest.json               sampling settings, teacher, dataset fingerprint, one entry (with sha256) per shard
    shards/shard-00000.parquet  every sample of ``shard_size`` problems: raw text, canonical trace, answer, verified
    dataset/                    the result (``datasets.load_from_disk``): kept traces with provenance columns

Each shard is sampled with seed ``seed + shard index``, written under a temporary name and renamed into place, then
recorded in the manifest (rewritten the same way). A rerun checks that settings, teacher and data are the ones in the
manifest (else an error naming the field), skips recorded shards and continues, so a crash costs at most one shard
and the result equals an uninterrupted run's. Filtering (``keep_only_verified``, ``dedupe``) happens when
``dataset/`` is assembled, so changing it reuses every shard.

Under ``accelerate launch --num_processes N`` (or ``torchrun``) rank ``r`` samples shards ``r, r + N, ...`` (its own
teacher on its own GPU, or its own requests to a served one) and records them in its own progress file; rank 0 then
writes the manifest and ``dataset/``, which equal a one-process run's (a shard's seed is its index, not the rank's),
and a run killed under ``N`` processes resumes under any number (:mod:`hf_distill.utils.manifest`)::

    accelerate launch --num_processes 4 -m hf_distill traces --teacher_model_name_or_path ./teacher ...
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from datasets import Dataset, concatenate_datasets, load_from_disk
from torch import nn
from transformers import PreTrainedTokenizerBase

from hf_distill.cache.writer import config_hash
from hf_distill.data.reasoning import has_chat_template, plain_prompt
from hf_distill.evaluation.answers import extract_answer
from hf_distill.evaluation.generate import generate
from hf_distill.evaluation.logic_match import arithmetic_errors
from hf_distill.served.journal import RequestJournal
from hf_distill.served.traces import ServedTraceTeacher, total_usage
from hf_distill.served.traces import usage_line as _usage_line
from hf_distill.teacher.live import load_teacher, load_teacher_tokenizer
from hf_distill.traces.config import TraceConfig
from hf_distill.traces.templates import get_template
from hf_distill.traces.verify import check_trace, dedupe_key
from hf_distill.utils.fingerprint import fingerprint_bytes
from hf_distill.utils.io import atomic_dir, atomic_path, sha256_file
from hf_distill.utils.manifest import ShardManifest, WorkShare

FORMAT_NAME, FORMAT_VERSION = "hf_distill.traces", 1
MANIFEST = "manifest.json"
PROVENANCE_COLUMNS = ("teacher", "prompt_template", "problem_id", "sample_index", "verified", "predicted_answer",
                      "arithmetic_errors")


class TraceManifestMismatch(ValueError):
    """``output_dir`` holds traces collected with other settings, another teacher or other data."""


def collect_traces(
    teacher: str | os.PathLike | nn.Module | None,
    tokenizer: PreTrainedTokenizerBase | None,
    dataset: Dataset,
    output_dir: str | os.PathLike,
    config: TraceConfig | None = None,
    log=print,
    share: WorkShare | None = None,
) -> Dataset:
    """Sample ``config.num_samples`` traces per problem from ``teacher`` and keep the verified, distinct ones.

    Args:
        teacher: a causal LM, or a local path / hub id (loaded frozen with its saved tokenizer); None with
            ``config.teacher_url``: a served teacher (an OpenAI-compatible server, :mod:`hf_distill.served`).
        tokenizer: the teacher's tokenizer (with its chat template); None to load it from ``teacher``'s directory.
            A served teacher needs none (its server applies the chat template); with ``teacher_endpoint=
            "completions"`` one is used, when given, to render the plain prompt as a local model would see it.
        dataset: GSM8K-format problems: a ``question`` column and an ``answer`` column ending in ``#### N``
            (:func:`~hf_distill.data.load_reasoning_dataset` renames other column names). Other columns (such as
            ``num_steps``) are carried over to every trace of the problem.
        output_dir: where shards, manifest and the final dataset go; an interrupted run there is resumed.
        share: this process's part of a collection over many processes (default: from ``RANK``/``WORLD_SIZE``,
            which ``torchrun`` and ``accelerate launch`` set). Every rank returns the whole dataset; rank 0 saves it.

    Returns:
        A prompt/completion dataset for `SFTTrainer`/`DistillationTrainer`: ``prompt`` is the bare question as a
        user turn (the student learns to reason without the scaffolding), ``completion`` the canonical trace
        (rationale + ``#### answer``) as an assistant turn (for a tokenizer without a chat template, plain text
        instead: ``"Question: ...\nAnswer:"`` and ``" " + trace``), plus ``question``, ``answer`` (gold), the
        input's other columns and the provenance columns ``teacher``, ``prompt_template``, ``problem_id``,
        ``sample_index``, ``verified`` (gold answer reached, and with ``verify_arithmetic`` every equation right),
        ``predicted_answer`` and ``arithmetic_errors``.
    """
    config = config or TraceConfig()
    golds = _gold_answers(dataset)
    template = get_template(config.template)
    if config.teacher_url is not None:
        if teacher is not None:
            raise ValueError("Pass a teacher model or set config.teacher_url (a served teacher), not both.")
        served = ServedTraceTeacher(config, tokenizer)
        teacher_fields, teacher_name, conversational = served.manifest_fields(), served.model, served.conversational
    else:
        served = None
        model, tokenizer, teacher_name = _teacher(teacher, tokenizer, config.device)
        teacher_fields, conversational = {"name": teacher_name, "config_sha256": config_hash(model)}, None
    out, share = Path(output_dir), share or WorkShare.from_env()
    (out / "shards").mkdir(parents=True, exist_ok=True)
    manifest = _start_manifest(out, share, {
        "format": FORMAT_NAME, "format_version": FORMAT_VERSION, "sampling": config.sampling_fields(),
        "teacher": teacher_fields,
        "dataset": {"fingerprint": _dataset_fingerprint(dataset), "num_problems": len(dataset)},
    })
    done = manifest.finished(lambda entry: _intact(out, entry, manifest.path))
    num_shards = -(-len(dataset) // config.shard_size)
    for index in range(num_shards):
        if index in done or not share.owns(index):
            continue
        start, stop = index * config.shard_size, min(len(dataset), (index + 1) * config.shard_size)
        began = time.perf_counter()
        if served is None:
            table = _sample_shard(model, tokenizer, dataset, golds, range(start, stop), config, template, seed=index)
            entry, rate = _write_shard(out, index, table), ""
        else:
            journal = RequestJournal(out / "requests" / f"shard-{index:05d}.jsonl")
            texts, usage = served.sample_shard(dataset, range(start, stop), template, journal)
            table = _checked_table(texts, golds, range(start, stop), config)
            entry = {**_write_shard(out, index, table), "usage": usage}
            rate = (f", {usage['requests']} requests ({usage['requests_per_s'] or 0:.2f}/s), "
                    f"{usage['completion_tokens']} completion tokens ({usage['completion_tokens_per_s'] or 0:.1f}/s)"
                    + (f", {len(journal.done) - usage['asked']} prompts from an interrupted run"
                       if len(journal.done) > usage["asked"] else ""))
        manifest.record(entry)
        if served is not None:
            journal.close(delete=True)  # the shard file supersedes it
        verified = sum(table.column("verified").to_pylist())
        log(f"traces: {share.prefix()}shard {index + 1}/{num_shards} (problems {start}-{stop - 1}): "
            f"{table.num_rows} samples, "
            f"{verified} verified ({verified / max(table.num_rows, 1):.1%}), {time.perf_counter() - began:.1f} s"
            + rate)
    merged = manifest.gather(num_shards, (lambda shards: {"usage": total_usage(shards)}) if served else None, log=log)
    if served is not None and share.rank == 0:
        log(f"traces: served teacher {served.model}: {_usage_line(merged['usage'])}")
    if conversational is None:
        conversational = has_chat_template(tokenizer)
    traces = _assemble(out, merged, dataset, teacher_name, template.name, config, conversational,
                       save=share.rank == 0)
    if share.rank == 0:
        problems = len(set(traces["problem_id"]))
        log(f"traces: kept {len(traces)} traces covering {problems}/{len(dataset)} problems in {out / 'dataset'}")
    return traces


def _gold_answers(dataset: Dataset) -> list[str]:
    missing = [c for c in ("question", "answer") if c not in dataset.column_names]
    if missing:
        raise ValueError(f"the dataset has no column {missing} (columns: {dataset.column_names}). Load it with "
                         "hf_distill.data.load_reasoning_dataset(..., question_column=..., answer_column=...).")
    if len(dataset) == 0:
        raise ValueError("the dataset is empty: there are no problems to collect traces for")
    golds = [extract_answer(text) for text in dataset["answer"]]
    if None in golds:
        row = golds.index(None)
        raise ValueError(f"row {row} has no final answer to verify against: {dataset[row]['answer']!r}. Gold answers "
                         "must end in '#### <answer>' (GSM8K format).")
    return golds


def _teacher(teacher, tokenizer, device: str | None) -> tuple[nn.Module, PreTrainedTokenizerBase, str]:
    if tokenizer is None:
        tokenizer = load_teacher_tokenizer(teacher)
        if tokenizer is None:
            raise ValueError("no tokenizer was passed and none is saved beside the teacher: pass `tokenizer=`")
    if isinstance(teacher, (str, os.PathLike)):
        name = str(teacher)
    else:
        name = getattr(teacher.config, "_name_or_path", "") or type(teacher).__name__
    model = load_teacher(teacher)
    if device is not None or torch.cuda.is_available():
        model = model.to(device or f"cuda:{os.environ.get('LOCAL_RANK', 0)}")  # under a launcher: a GPU a rank
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token, needed to batch prompts: set tokenizer.pad_token first")
    return model, tokenizer, name


def _dataset_fingerprint(dataset: Dataset) -> str:
    """Content hash of the problems in order (``Dataset._fingerprint`` is random for in-memory datasets)."""
    return fingerprint_bytes(json.dumps([question, answer]).encode()
                             for question, answer in zip(dataset["question"], dataset["answer"], strict=True))


def _start_manifest(out: Path, share: WorkShare, fields: dict) -> ShardManifest:
    def mismatch(key: str, old, new) -> TraceManifestMismatch:
        return TraceManifestMismatch(
            f"{out} holds traces collected with {key} = {old!r}; this run has {new!r}. Fix: use another output "
            "directory, or rerun with the original settings to resume this one."
        )

    return ShardManifest.open(out / MANIFEST, fields, mismatch=mismatch, shard_folders=[out / "shards"], share=share)


def _intact(out: Path, entry: dict, manifest: Path) -> bool:
    shard = out / entry["file"]
    if not shard.is_file() or sha256_file(shard) != entry["sha256"]:
        raise TraceManifestMismatch(f"shard {shard} is missing or corrupt (sha256 differs from {manifest}). Fix: "
                                    "delete it and remove its entry from the manifest, then rerun.")
    return True


def _sample_shard(model, tokenizer, dataset: Dataset, golds: list[str], rows: range, config: TraceConfig, template,
                  seed: int) -> pa.Table:
    prompts = [template.render(tokenizer, question) for question in dataset.select(rows)["question"]]
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):  # seeded here, caller's RNG untouched
        torch.manual_seed(config.seed + seed)
        texts, _ = generate(model, tokenizer, prompts, config.max_new_tokens, config.batch_size,
                            generation_kwargs=config.generation_kwargs())
    return _checked_table(texts, golds, rows, config)


def _checked_table(texts: list[str], golds: list[str], rows: range, config: TraceConfig) -> pa.Table:
    """One row per sample (``num_samples`` consecutive texts per problem of ``rows``), checked against the gold."""
    columns: dict[str, list] = {name: [] for name in
                                ("problem_id", "sample_index", "generation", "completion", "predicted_answer",
                                 "verified")}
    for position, text in enumerate(texts):
        problem = rows[position // config.num_samples]
        checked = check_trace(text, golds[problem])
        for name, value in (("problem_id", problem), ("sample_index", position % config.num_samples),
                            ("generation", text), ("completion", checked.completion),
                            ("predicted_answer", checked.answer), ("verified", checked.verified)):
            columns[name].append(value)
    return pa.table(columns, schema=_SAMPLE_SCHEMA)  # typed: a shard with no answer at all has the others' schema


_SAMPLE_SCHEMA = pa.schema([("problem_id", pa.int64()), ("sample_index", pa.int64()), ("generation", pa.string()),
                            ("completion", pa.string()), ("predicted_answer", pa.string()), ("verified", pa.bool_())])


def _write_shard(out: Path, index: int, table: pa.Table) -> dict:
    path = out / "shards" / f"shard-{index:05d}.parquet"
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return {"index": index, "file": f"shards/{path.name}", "num_samples": table.num_rows, "sha256": sha256_file(path)}


def _prompt_completion(questions: list[str], traces: list[str], conversational: bool) -> dict[str, list]:
    """Chat turns, or the plain format of :func:`~hf_distill.data.reasoning.to_prompt_completion` for a tokenizer
    without a chat template (a base model)."""
    if conversational:
        return {"prompt": [[{"role": "user", "content": q}] for q in questions],
                "completion": [[{"role": "assistant", "content": t}] for t in traces]}
    return {"prompt": [plain_prompt(q) for q in questions], "completion": [" " + t for t in traces]}


def _assemble(out: Path, manifest: dict, dataset: Dataset, teacher: str, template: str, config: TraceConfig,
              conversational: bool, save: bool = True) -> Dataset:
    """The kept traces; saved as ``out/dataset`` with ``save`` (rank 0's job under many processes)."""
    samples = Dataset(pa.concat_tables([pq.read_table(out / entry["file"]) for entry in manifest["shards"]]))
    errors = [arithmetic_errors(completion) for completion in samples["completion"]]
    if config.verify_arithmetic:
        verified = [ok and not wrong for ok, wrong in zip(samples["verified"], errors, strict=True)]
        samples = samples.remove_columns("verified").add_column("verified", verified)
    samples = samples.add_column("arithmetic_errors", errors)
    keep, seen = [], set()
    for row, (problem, completion, verified) in enumerate(
        zip(samples["problem_id"], samples["completion"], samples["verified"], strict=True)
    ):
        key = dedupe_key(problem, completion)
        if (verified or not config.keep_only_verified) and not (config.dedupe and key in seen):
            keep.append(row)
            seen.add(key)
    if not keep:
        raise ValueError(
            f"none of the {len(samples)} sampled traces in {out} was verified. Check that the teacher follows the "
            f"prompt template {template!r} (try another `template`), raise `max_new_tokens` if traces are cut off, or "
            "set keep_only_verified=False to inspect them; the samples are kept, so a rerun only reassembles."
        )
    samples = samples.select(keep)
    problems = dataset.select(samples["problem_id"])  # the input's columns, one row per kept trace
    extra = Dataset.from_dict({
        **_prompt_completion(problems["question"], samples["completion"], conversational),
        "teacher": [teacher] * len(samples), "prompt_template": [template] * len(samples),
        **{name: samples[name] for name in PROVENANCE_COLUMNS[2:]},
    })
    problems = problems.remove_columns([c for c in extra.column_names if c in problems.column_names])
    traces = concatenate_datasets([problems.flatten_indices(), extra], axis=1)
    if not save:
        return traces.flatten_indices()
    with atomic_dir(out / "dataset") as staging:
        traces.save_to_disk(str(staging))
    return load_from_disk(str(out / "dataset"))
