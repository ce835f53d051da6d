"""Training-step cost on one student/teacher pair: plain SFT, our online KD, our cached KD and TRL's GKD trainer.

Setup (CPU, nothing downloaded): random Llamas built from configs with untied embeddings and a shared vocabulary
(default: a ~30M-parameter student 320x8 and a ~116M teacher 704x12 at vocab 32000), random pre-tokenized sequences
whose every position carries loss, one collator (TRL's ``DataCollatorForLanguageModeling``), fp32 everywhere, the
same student initialisation and data order in every arm. Arms:

``sft``              ``trl.SFTTrainer``: cross-entropy only, what the student would cost without a teacher.
``trainer_ce``       a bare ``transformers.Trainer`` (the model's own loss, none of SFTTrainer's token metrics): the
                     stricter SFT baseline; the goals use the faster of the two.
``teacher_forward``  ``teacher(**batch).logits`` under ``no_grad`` over the same batches: the least any live-teacher
                     method must add to an SFT step.
``ours_live``        ``DistillationTrainer(teacher_model=...)``, defaults: forward KL + CE (alpha 0.5), T = 1.
``ours_cached``      ``DistillationTrainer(teacher_cache=...)`` on a top-k cache collected once, before the arms run
                     (``collect_teacher_cache``; its time and size are reported beside the table).
``trl_gkd``          ``trl.experimental.gkd.GKDTrainer`` with ``lmbda=0`` (never generates: the same off-policy
                     work) and ``beta=0`` (forward KL, TRL's semantics). It computes no CE term, so ours does more.

Every arm trains ``--warmup`` + ``--steps`` optimizer steps with a fresh trainer; the arms run in turn, ``--rounds``
times (ABCDE ABCDE ...), and each cell is the median over all timed steps of all rounds. ``cpu s`` is process CPU time
(all threads) per step, steadier than wall time on a shared machine; compare arms by it. Goals (issue 10): cached KD
step <= 1.10x the SFT step; online KD step <= 1.10x (SFT step + teacher forward); throughput >= 1.0x TRL GKD.

Usage::

    python benchmarks/train_step.py                         # ~5 minutes on 2 CPU cores
    python benchmarks/train_step.py --markdown results.md --json results.json
    python benchmarks/train_step.py --quick                 # vocab 512, tiny models: the smoke test (~30 s)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from datasets import Dataset
from transformers import Trainer, TrainingArguments
from trl import SFTConfig, SFTTrainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.cache.writer import collect_teacher_cache

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import (  # noqa: E402
    StepTimer,
    llama,
    load_average,
    machine_lines,
    params_m,
    size,
    word_tokenizer,
)

ARMS = ("sft", "trainer_ce", "teacher_forward", "ours_live", "ours_cached", "trl_gkd")
CACHED_GOAL, LIVE_GOAL, TRL_GOAL = 1.10, 1.10, 1.0


def _training_args(cls, out: Path, args, **extra):
    return cls(output_dir=str(out), max_steps=args.warmup + args.steps, per_device_train_batch_size=args.batch,
               report_to=[], save_strategy="no", logging_steps=10**6, disable_tqdm=True, seed=0,
               dataloader_num_workers=0, learning_rate=1e-4, bf16=False, use_cpu=not torch.cuda.is_available(),
               **extra)


def _trainer(arm: str, args, work: Path, data, tokenizer, teacher, cache_dir):
    student = llama(args.vocab, *size(args.student), seed=2)
    collator = DataCollatorForLanguageModeling(pad_token_id=0)
    out = work / arm
    if arm == "sft":
        return SFTTrainer(student, _training_args(SFTConfig, out, args), data_collator=collator, train_dataset=data,
                          processing_class=tokenizer)
    if arm == "trainer_ce":
        return Trainer(student, _training_args(TrainingArguments, out, args), data_collator=collator,
                       train_dataset=data)
    if arm == "ours_live":
        return DistillationTrainer(student, _training_args(DistillationConfig, out, args), data_collator=collator,
                                   train_dataset=data, processing_class=tokenizer, teacher_model=teacher)
    if arm == "ours_cached":
        return DistillationTrainer(student, _training_args(DistillationConfig, out, args), data_collator=collator,
                                   train_dataset=data, processing_class=tokenizer, teacher_cache=cache_dir)
    if arm == "trl_gkd":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" notice
            from trl.experimental.gkd import GKDConfig, GKDTrainer
        config = _training_args(GKDConfig, out, args, lmbda=0.0, beta=0.0, temperature=1.0)
        return GKDTrainer(student, teacher, config, data_collator=collator, train_dataset=data,
                          processing_class=tokenizer)
    raise ValueError(arm)


def _teacher_forward(teacher, data, args) -> tuple[list[float], list[float]]:
    collator = DataCollatorForLanguageModeling(pad_token_id=0)
    wall, cpu = [], []
    with torch.no_grad():
        for start in range(0, len(data), args.batch):
            batch = collator([data[i] for i in range(start, start + args.batch)])
            t0, c0 = time.perf_counter(), time.process_time()
            teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            wall.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    return wall[args.warmup:], cpu[args.warmup:]


def run(args) -> dict:
    work = Path(tempfile.mkdtemp(prefix="hfd-train-step-"))
    try:
        tokenizer = word_tokenizer(args.vocab)
        generator = torch.Generator().manual_seed(0)
        examples = args.batch * (args.warmup + args.steps)
        ids = torch.randint(3, args.vocab, (examples, args.seq), generator=generator).tolist()
        data = Dataset.from_dict({"input_ids": ids, "labels": ids})
        teacher = llama(args.vocab, *size(args.teacher), seed=1).eval().requires_grad_(False)
        info = {"student_m": params_m(llama(args.vocab, *size(args.student), seed=2)), "teacher_m": params_m(teacher),
                "load_start": load_average()}

        # (c) the cache the cached arm reads: collected once, timed against a bare teacher forward over the same data
        cache_dir = work / "cache"
        config = _training_args(DistillationConfig, work / "collect", args)
        started, cpu0 = time.perf_counter(), time.process_time()
        manifest = collect_teacher_cache(teacher, data, cache_dir, tokenizer, args=config, top_k=args.top_k,
                                         batch_size=args.batch, log=lambda _: None)
        info["collect_s"], info["collect_cpu_s"] = time.perf_counter() - started, time.process_time() - cpu0
        tokens = sum(shard["num_tokens"] for shard in manifest["shards"])
        info["cache_bytes_per_token"] = sum(shard["bytes"] for shard in manifest["shards"]) / tokens
        info["cache_tokens"] = tokens

        times = {arm: {"wall": [], "cpu": []} for arm in args.arms}
        for round_ in range(args.rounds):
            for arm in args.arms:
                t0 = time.perf_counter()
                if arm == "teacher_forward":
                    wall, cpu = _teacher_forward(teacher, data, args)
                else:
                    trainer = _trainer(arm, args, work, data, tokenizer, teacher, cache_dir)
                    timer = StepTimer()
                    trainer.add_callback(timer)
                    trainer.train()
                    wall, cpu = timer.wall[args.warmup:], timer.cpu[args.warmup:]
                    del trainer
                times[arm]["wall"] += wall
                times[arm]["cpu"] += cpu
                print(f"[round {round_ + 1}/{args.rounds}] {arm}: median {statistics.median(wall):.3f} s/step "
                      f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
        info["load_end"] = load_average()
        info["arms"] = {arm: {key: statistics.median(values) for key, values in t.items()} | {"n": len(t["wall"])}
                        for arm, t in times.items()}
        return info
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _verdicts(arms: dict, key: str) -> list[str]:
    get = lambda name: arms.get(name, {}).get(key)  # noqa: E731
    lines = []
    sft = min((t for t in (get("sft"), get("trainer_ce")) if t), default=None)  # the stricter SFT baseline
    fwd, live, cached, gkd = (get(a) for a in ARMS[2:])
    if sft and cached:
        ratio = cached / sft
        lines.append(f"cached KD step = {ratio:.2f}x the faster SFT step (goal <= {CACHED_GOAL:.2f}x): "
                     f"{'MEETS' if ratio <= CACHED_GOAL else 'MISSES'}")
    if sft and fwd and live:
        ratio = live / (sft + fwd)
        lines.append(f"online KD step = {ratio:.2f}x (faster SFT step + teacher forward) (goal <= {LIVE_GOAL:.2f}x): "
                     f"{'MEETS' if ratio <= LIVE_GOAL else 'MISSES'}")
    if live and gkd:
        ratio = gkd / live
        lines.append(f"online KD throughput = {ratio:.2f}x TRL GKD (lmbda 0) (goal >= {TRL_GOAL:.2f}x): "
                     f"{'MEETS' if ratio >= TRL_GOAL else 'MISSES'}")
    return lines


def report(args, info: dict) -> list[str]:
    arms = info["arms"]
    sft = arms.get("sft", {})
    lines = ["| arm | wall s/step | cpu s/step | cpu vs sft | tokens/s (cpu) | steps timed |", "|---|---|---|---|---|---|"]
    for arm, t in arms.items():
        ratio = f"{t['cpu'] / sft['cpu']:.2f}x" if sft else "-"
        lines.append(f"| {arm} | {t['wall']:.3f} | {t['cpu']:.3f} | {ratio} | "
                     f"{args.batch * args.seq / t['cpu']:,.0f} | {t['n']} |")
    lines.append("")
    lines += [f"- {v} (by CPU time)" for v in _verdicts(arms, "cpu")]
    lines += [f"- {v} (by wall time)" for v in _verdicts(arms, "wall")]
    fwd = arms.get("teacher_forward", {}).get("wall")
    lines.append(f"- cache: {info['cache_bytes_per_token']:,.0f} B/token at k={args.top_k} vs {2 * args.vocab:,} B/token "
                 f"for dense fp16 logits ({2 * args.vocab / info['cache_bytes_per_token']:.0f}x smaller); collection of "
                 f"{info['cache_tokens']:,} tokens took {info['collect_s']:.1f} s wall"
                 + (f", {info['collect_s'] / (fwd * (args.warmup + args.steps)):.2f}x a bare teacher forward over the "
                    "same batches" if fwd else ""))
    return lines


def header(args, info: dict) -> list[str]:
    return [
        *machine_lines(),
        f"- Command: `python benchmarks/train_step.py {' '.join(args.argv)}`",
        f"- Student {args.student} ({info['student_m']:.1f}M params), teacher {args.teacher} ({info['teacher_m']:.1f}M), "
        f"vocab {args.vocab}, batch {args.batch} x seq {args.seq} (all tokens carry loss), fp32, {args.warmup} warm-up + "
        f"{args.steps} timed steps per arm per round, {args.rounds} rounds interleaved, top-k {args.top_k}",
        f"- Date {time.strftime('%Y-%m-%d %H:%M')} UTC; load average (1/5/15 min) {info['load_start']} at start, "
        f"{info['load_end']} at end (a shared machine: trust cpu s over wall s)",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--student", default="320x8", help="hidden x layers (default 320x8, ~30M params at 32k)")
    parser.add_argument("--teacher", default="704x12", help="hidden x layers (default 704x12, ~116M params at 32k)")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per arm per round")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per arm per round")
    parser.add_argument("--rounds", type=int, default=2, help="times every arm runs, interleaved")
    parser.add_argument("--top-k", type=int, default=32, help="top-k of the teacher cache")
    parser.add_argument("--arms", type=lambda s: s.split(","), default=list(ARMS), help=",".join(ARMS))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--quick", action="store_true", help="vocab 512, 64x2 student, 128x2 teacher, seq 32")
    parser.add_argument("--markdown", help="also write the table (with machine, versions, command) to this path")
    parser.add_argument("--json", help="also write the raw numbers as JSON to this path")
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.argv = argv
    unknown = set(args.arms) - set(ARMS)
    if unknown:
        parser.error(f"unknown arm(s) {sorted(unknown)}; choose from {', '.join(ARMS)}")
    if args.quick:
        args.vocab, args.student, args.teacher, args.seq, args.batch = 512, "64x2", "128x2", 32, 2
        args.steps, args.warmup, args.rounds, args.top_k = 1, 1, 1, 8
    if args.threads:
        torch.set_num_threads(args.threads)

    info = run(args)
    lines = ["# Training step: SFT vs our online / cached KD vs TRL GKD", "", *header(args, info), "",
             *report(args, info)]
    print("\n".join(lines))
    if args.markdown:
        tmp = args.markdown + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, args.markdown)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(args).items()}, **info}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
