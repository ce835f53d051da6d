"""Teacher-logit cache: bytes per token, collection overhead, and the cost of a training step that reads it.

Setup (CPU, nothing downloaded): a random Llama teacher (hidden 256, 4 layers, ~20M parameters) and student (hidden
128, 4 layers, ~9M parameters), both with a 32000-token vocabulary and untied embeddings, on random pre-tokenized
sequences whose every position carries loss.

1. **Size**: bytes of the shard files per loss token, against dense float16 logits (2 x V bytes per token).
2. **Collection**: wall time of ``collect_teacher_cache`` (preparation, teacher, top-k, Arrow writing, fsync, sha256),
   against a bare ``teacher(**batch).logits`` pass over the same batches. The one-time preparation (SFTTrainer
   dataset preparation, keys) is also shown on its own.
3. **Training step**: median wall time of one optimizer step of ``DistillationTrainer(teacher_cache=...)``, against a
   plain SFT step on the same student, batches and collator: ``trl.SFTTrainer`` (what users run) and a bare
   ``transformers.Trainer`` (model's own cross-entropy, no extra metrics). For context, a step with the live teacher.

   The cached step is timed on a format-2 cache (what ``collect_teacher_cache`` writes) and on a format-1 copy of
   it (``hf_distill.cache.convert``), with the read of one batch (``TeacherCache.read``) timed alone as well.

Each timing is the median over ``--steps`` steps after two warm-up steps.

4. **Fidelity** (``--fidelity smollm2,gemma3``: real teachers, GSM8K answers): for format 1 (today's float16) and
   format 2 (both codecs) at each ``--fidelity-k``: bytes per loss token on disk, the storage error (KL from the exact
   k + 1 buckets to the stored ones), KL(p || p_hat) from the teacher's full distribution to the one the cache keeps
   (top-k exact, the tail spread evenly), and the cosine between the gradient of the cached forward-KL loss and the
   true full-vocabulary KD gradient, both with respect to the logits of a near-converged student (the teacher's
   logits plus N(0, ``--student-noise``^2) noise), over all tokens. DistillKit's rows are the numbers issue 22 reports
   (measured there on the same 64 SmolLM2 examples, DistillKit a61c2e7), not re-run here.

Not a test: run it by hand::

    OMP_NUM_THREADS=1 python benchmarks/cache.py                 # ~1.5 minutes on one core
    python benchmarks/cache.py --examples 32 --steps 2 --vocab 4000   # a few seconds
    python benchmarks/cache.py --fidelity smollm2,gemma3         # ~6 minutes on one core
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch
from _common import StepTimer  # noqa: E402 (benchmarks/ is on sys.path)
from _common import llama as _llama
from _common import word_tokenizer as _tokenizer
from datasets import Dataset
from transformers import Trainer, TrainingArguments
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.cache.convert import convert_cache
from hf_distill.cache.reader import TeacherCache
from hf_distill.cache.writer import collect_teacher_cache, prepare_like_trainer
from hf_distill.models.introspect import model_inputs
from hf_distill.teacher.live import load_teacher

SIZE_GOAL, COLLECTION_GOAL, STEP_GOAL = 100.0, 1.10, 1.10


def _common(out: Path, steps: int, batch: int) -> dict:
    return dict(output_dir=str(out), max_steps=steps + 2, per_device_train_batch_size=batch, report_to=[],
                save_strategy="no", logging_steps=10**6, disable_tqdm=True, activation_checkpointing=False, seed=0,
                dataloader_num_workers=0, learning_rate=1e-4, bf16=False)


def _median_step(trainer) -> float:
    timer = StepTimer()
    trainer.add_callback(timer)
    trainer.train()
    return statistics.median(timer.wall[2:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--top-k", type=int, default=32)
    parser.add_argument("--examples", type=int, default=48, help="sequences to collect the cache over")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--teachers", default="256x4,512x8", help="teacher sizes, hidden x layers; the first one is "
                        "also used for the training steps")
    parser.add_argument("--repeats", type=int, default=2, help="collection and bare passes each run this many times, "
                        "interleaved; the fastest counts (the machine is shared)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per trainer (after 2 warm-up)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--fidelity", default=None, help="instead: the format table on real teachers, e.g. "
                        "smollm2,gemma3 (hf_distill.models.real)")
    parser.add_argument("--fidelity-k", default="32,128", help="top-k values of the format table")
    parser.add_argument("--fidelity-examples", type=int, default=None, help="GSM8K examples (default: 64 for "
                        "SmolLM2, 16 for Gemma-3)")
    parser.add_argument("--student-noise", type=float, default=0.5, help="std of the noise added to the teacher's "
                        "logits to make the near-converged student of the gradient column")
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
                        / "train.jsonl", help="a GSM8K-format .jsonl file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="hfd-cache-bench-"))
    try:
        if args.fidelity:
            from _cache_fidelity import run_fidelity

            return run_fidelity(args, work)
        return _run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _bare_pass(teacher, dataset, collator, batch_size: int) -> float:
    with torch.no_grad():
        started = time.perf_counter()
        for start in range(0, len(dataset), batch_size):
            batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            teacher(**model_inputs(batch)).logits
        return time.perf_counter() - started


def _collection(args, work: Path, tokenizer, data, hidden: int, layers: int) -> tuple[dict, float, float, float]:
    """Fastest of ``--repeats`` interleaved runs of a bare forward pass and of a whole collection."""
    teacher = _llama(args.vocab, hidden, layers, seed=1)
    config = DistillationConfig(**_common(work / "prep", args.steps, args.batch))
    started = time.perf_counter()
    dataset, collator = prepare_like_trainer(load_teacher(teacher), config, data, tokenizer)
    prepare_s = time.perf_counter() - started
    _bare_pass(teacher, dataset.select(range(args.batch)), collator, args.batch)  # warm-up
    bare, collect = [], []
    for repeat in range(args.repeats):
        bare.append(_bare_pass(teacher, dataset, collator, args.batch))
        out = work / f"cache-{hidden}x{layers}-{repeat}"
        started = time.perf_counter()
        manifest = collect_teacher_cache(teacher, data, out, tokenizer, args=config, top_k=args.top_k,
                                         batch_size=args.batch, shard_size=64, log=lambda _: None)
        collect.append(time.perf_counter() - started)
    params = sum(p.numel() for p in teacher.parameters()) / 1e6
    return {"manifest": manifest, "path": out, "params": params, "teacher": teacher}, min(bare), min(collect), prepare_s


def _read_times(format2: Path, format1: Path, batch: int, rounds: int = 5) -> dict[int, float]:
    """Median wall time of ``TeacherCache.read`` on random batches, the two formats interleaved."""
    caches = {2: TeacherCache(format2), 1: TeacherCache(format1)}
    keys = np.sort(caches[2]._keys)
    rng = np.random.default_rng(0)
    times = {1: [], 2: []}
    for _ in range(rounds):
        for picked in np.array_split(rng.permutation(keys), max(1, len(keys) // batch)):
            for version, cache in caches.items():
                started = time.perf_counter()
                cache.read(picked)
                times[version].append(time.perf_counter() - started)
    return {version: statistics.median(values) for version, values in times.items()}


def _run(args, work: Path) -> int:
    tokenizer = _tokenizer(args.vocab)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, args.vocab, (args.examples, args.seq), generator=generator).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    student_params = sum(p.numel() for p in _llama(args.vocab, 128, 4, seed=2).parameters()) / 1e6
    print(f"vocab {args.vocab}, {args.examples} x {args.seq} tokens (all carry loss), batch {args.batch}, "
          f"k={args.top_k}, student 128x4 ({student_params:.1f}M params), {torch.get_num_threads()} thread(s)")

    rows, collections = [], []
    for size in args.teachers.split(","):
        hidden, layers = (int(n) for n in size.split("x"))
        run, bare_s, collect_s, prepare_s = _collection(args, work, tokenizer, data, hidden, layers)
        collections.append((f"{hidden}x{layers}", run, bare_s, collect_s))
        rows += [
            (f"teacher {hidden}x{layers} ({run['params']:.0f}M): bare forward", f"{bare_s:.2f} s", "1.00x"),
            (f"teacher {hidden}x{layers}: collection, whole call", f"{collect_s:.2f} s", f"{collect_s / bare_s:.2f}x"),
            (f"teacher {hidden}x{layers}:   of which preparation", f"{prepare_s:.2f} s", f"{prepare_s / bare_s:.2f}x"),
        ]
    first = collections[0][1]
    tokens = sum(shard["num_tokens"] for shard in first["manifest"]["shards"])
    per_token = sum(shard["bytes"] for shard in first["manifest"]["shards"]) / tokens
    dense = 2 * args.vocab
    rows = [("dense fp16 logits", f"{dense:,.0f} B/token", "1x"),
            (f"cache, k={args.top_k}", f"{per_token:,.0f} B/token", f"{dense / per_token:.0f}x smaller"), *rows]

    # The read of one batch alone (what format 2 adds: decompression and decoding), format 2 against a format-1 copy.
    format1 = work / "cache-format1"
    convert_cache(first["path"], format1, format_version=1)
    reads = _read_times(first["path"], format1, args.batch)
    rows += [(f"read a batch of {args.batch}: format {version}", f"{seconds * 1e3:.3f} ms",
              f"{seconds / reads[1]:.2f}x") for version, seconds in sorted(reads.items())]

    # Training steps on the same student init, data order and collator.
    common = _common(work / "train", args.steps, args.batch)
    student = lambda: _llama(args.vocab, 128, 4, seed=2)  # noqa: E731
    steps = {
        "Trainer (model's own CE)": _median_step(Trainer(
            student(), TrainingArguments(**common), train_dataset=data,
            data_collator=DataCollatorForLanguageModeling(pad_token_id=0))),
        "SFTTrainer": _median_step(SFTTrainer(student(), SFTConfig(**common), train_dataset=data,
                                              processing_class=tokenizer)),
        "DistillationTrainer, cache": _median_step(DistillationTrainer(
            student(), DistillationConfig(**common), train_dataset=data, processing_class=tokenizer,
            teacher_cache=first["path"])),
        "DistillationTrainer, cache in format 1": _median_step(DistillationTrainer(
            student(), DistillationConfig(**common), train_dataset=data, processing_class=tokenizer,
            teacher_cache=format1)),
        f"DistillationTrainer, live {collections[0][0]} teacher": _median_step(DistillationTrainer(
            student(), DistillationConfig(**common), train_dataset=data, processing_class=tokenizer,
            teacher_model=first["teacher"])),
    }
    plain = steps["Trainer (model's own CE)"]
    rows += [(f"step: {name}", f"{seconds:.3f} s", f"{seconds / plain:.2f}x") for name, seconds in steps.items()]

    width = max(len(row[0]) for row in rows)
    print(f"\n| {'what':<{width}} | {'measured':>14} | ratio |\n|{'-' * (width + 2)}|{'-' * 16}|-------|")
    for name, value, ratio in rows:
        print(f"| {name:<{width}} | {value:>14} | {ratio} |")

    size_ratio, step_ratio = dense / per_token, steps["DistillationTrainer, cache"] / plain
    versus_format1 = steps["DistillationTrainer, cache"] / steps["DistillationTrainer, cache in format 1"]
    print(f"\ncached step, format 2 vs format 1: {versus_format1:.3f}x (goal <= 1.05x): "
          f"{'meets' if versus_format1 <= 1.05 else 'misses'} the goal (a shared machine: compare the read rows too)")
    print(f"\nsize: {size_ratio:.0f}x smaller than dense fp16 (goal >= {SIZE_GOAL:.0f}x): "
          f"{'meets' if size_ratio >= SIZE_GOAL else 'misses'} the goal")
    for name, _, bare_s, collect_s in collections:
        print(f"collection, teacher {name}: {collect_s / bare_s:.2f}x a bare forward pass (goal <= "
              f"{COLLECTION_GOAL:.2f}x): {'meets' if collect_s / bare_s <= COLLECTION_GOAL else 'misses'} the goal")
    print(f"training step: {step_ratio:.2f}x a plain Trainer CE step, "
          f"{steps['DistillationTrainer, cache'] / steps['SFTTrainer']:.2f}x an SFTTrainer step (goal <= "
          f"{STEP_GOAL:.2f}x the plain step): {'meets' if step_ratio <= STEP_GOAL else 'misses'} the goal")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
