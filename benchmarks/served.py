"""Served teacher vs in-process teacher on the real SmolLM2-135M-Instruct (CPU): traces, logit cache, online KD.

The served teacher is llama-cpp-python's OpenAI-compatible server on the SmolLM2 Q4_1 GGUF (started here on a free
loopback port, ``--logits_all true``); the in-process teacher is the same checkpoint dequantised to float32
(``hf_distill.models.real``). Rows:

``server start``   seconds from launching ``python -m llama_cpp.server`` to its first ``/v1/models`` answer.
``traces``         ``collect_traces`` on the first ``--problems`` GSM8K test questions (template step_by_step, one
                   sample, ``--max-new-tokens``): traces/s and completion tokens/s, served (``teacher_concurrency``
                   ``--concurrency``, default 1, 2, 4) vs in-process ``generate`` (batch of all problems).
``cache``          ``collect_teacher_cache`` over ``--examples`` GSM8K answers (prompt-completion, max_length 96,
                   k 8): seconds, bytes per loss token, top-1 agreement with the in-process cache where llama.cpp can
                   name the token (``teacher_ambiguous_tokens='tail'``).
``online KD``      seconds per step of ``DistillationTrainer`` (a 1-layer student with SmolLM2's vocabulary, batch 2,
                   ``--steps`` steps after one warm-up): from the server, from the served cache, with the in-process
                   teacher.
``processes``      ``hf-distill traces`` with an in-process tiny teacher (a random 2-layer Llama with SmolLM2's
                   tokenizer) on ``--mp-problems`` arithmetic problems (2 samples, 32 new tokens), in 1 process
                   (1 thread, then all threads) and under ``accelerate launch --num_processes 2`` (one thread
                   each): wall seconds including start-up, and the collection's own seconds (the sum of the slowest
                   rank's shard times), with traces/s.

The CPU is shared with other jobs: numbers are noisy; the load average is printed with the table. Usage::

    python benchmarks/served.py                       # ~5-10 minutes on 2 busy cores
    python benchmarks/served.py --problems 2 --examples 2 --steps 1 --max-new-tokens 16   # a quick look
    python benchmarks/served.py --sections traces,processes      # the traces rows and 1 vs 2 processes only
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
from datasets import Dataset  # noqa: E402

from hf_distill.deploy.server import serving  # noqa: E402

GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def problems(n: int) -> Dataset:
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:n]]
    return Dataset.from_list([{"question": r["question"], "answer": r["answer"]} for r in rows])


def bench_traces(url, model_dir, data, max_new_tokens, work: Path, concurrencies=(1, 2)) -> list[tuple]:
    from hf_distill.traces import TraceConfig, collect_traces

    common = dict(template="step_by_step", num_samples=1, temperature=0.0, max_new_tokens=max_new_tokens,
                  keep_only_verified=False, dedupe=False, shard_size=len(data), batch_size=len(data))
    rows = []
    for concurrency in concurrencies:
        out = work / f"traces_served_{concurrency}"
        began = time.perf_counter()
        collect_traces(None, None, data, out, TraceConfig(teacher_url=url, teacher_concurrency=concurrency, **common),
                       log=lambda line: None)
        seconds = time.perf_counter() - began
        usage = json.loads((out / "manifest.json").read_text())["usage"]
        rows.append((f"traces, served (concurrency {concurrency})", seconds, len(data) / seconds,
                     usage["completion_tokens"] / seconds))
    from hf_distill.models.gguf import load_tokenizer

    tokenizer = load_tokenizer(model_dir)
    out = work / "traces_local"
    began = time.perf_counter()
    traces = collect_traces(str(model_dir), tokenizer, data, out, TraceConfig(**common), log=lambda line: None)
    seconds = time.perf_counter() - began
    generations = Dataset.from_parquet(str(out / "shards" / "shard-00000.parquet"))["generation"]
    tokens = sum(len(tokenizer(g)["input_ids"]) for g in generations)
    del traces
    rows.append(("traces, in-process generate", seconds, len(data) / seconds, tokens / seconds))
    return rows


def bench_cache(url, model_dir, n, work: Path, steps: int) -> tuple[list[tuple], dict]:
    from hf_distill import DistillationConfig, DistillationTrainer
    from hf_distill.cache.reader import TeacherCache
    from hf_distill.cache.writer import collect_teacher_cache
    from hf_distill.models.build import random_llama
    from hf_distill.models.gguf import load_tokenizer
    from hf_distill.served.teacher import ServedTeacher

    tokenizer = load_tokenizer(model_dir)
    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[100:100 + n]]
    data = Dataset.from_list([{"prompt": [{"role": "user", "content": r["question"]}],
                               "completion": [{"role": "assistant", "content": r["answer"]}]} for r in rows])

    def config(out, **extra):
        return DistillationConfig(output_dir=str(out), report_to=[], max_length=96, teacher_ambiguous_tokens="tail",
                                  per_device_train_batch_size=2, save_strategy="no", logging_steps=1,
                                  dataloader_num_workers=0, activation_checkpointing=False, **extra)

    table, numbers = [], {}
    args = config(work / "o", teacher_url=url)
    served = ServedTeacher.from_args(args, tokenizer, top_k=8)
    for name, teacher in (("served", served), ("in-process", str(model_dir))):
        began = time.perf_counter()
        manifest = collect_teacher_cache(teacher, data, work / f"cache_{name}", tokenizer, args=args, top_k=8,
                                         batch_size=2)
        seconds = time.perf_counter() - began
        tokens = sum(s["num_tokens"] for s in manifest["shards"])
        size = sum(s["bytes"] for s in manifest["shards"])
        table.append((f"cache, {name}", seconds, tokens / seconds, size / max(tokens, 1)))
    a, b = TeacherCache(work / "cache_served"), TeacherCache(work / "cache_in-process")
    x, y = a.read(b._keys), b.read(b._keys)
    nameable = np.array([len(served._strings.lookup(served._strings.strings[i])) == 1 for i in y[0][:, 0]])
    numbers["top1_agreement_nameable"] = float((x[0][nameable, 0] == y[0][nameable, 0]).mean())
    numbers["nameable_fraction"] = float(nameable.mean())

    def student():
        return random_llama(0, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)

    arms = {"online KD, served teacher": dict(teacher_url=url, teacher_top_k=8),
            "KD from the served cache": dict(teacher_cache=str(work / "cache_served")),
            "online KD, in-process teacher": dict(teacher_model_name_or_path=str(model_dir))}
    for name, extra in arms.items():
        trainer = DistillationTrainer(student(), config(work / name.replace(" ", "_"), max_steps=steps + 1, **extra),
                                      train_dataset=data, processing_class=tokenizer)
        times = []

        class Clock:  # seconds per optimizer step, after the first (warm-up)
            def on_step_begin(self, *a, **k):
                self.began = time.perf_counter()

            def on_step_end(self, *a, **k):
                times.append(time.perf_counter() - self.began)

        from transformers import TrainerCallback

        trainer.add_callback(type("StepClock", (Clock, TrainerCallback), {})())
        trainer.train()
        seconds = float(np.median(times[1:] or times))
        table.append((name, seconds, None, None))
    return table, numbers


def bench_processes(work: Path, n: int, max_new_tokens: int) -> list[tuple]:
    """``hf-distill traces`` with a tiny in-process teacher: 1 process vs 2 under ``accelerate launch``."""
    import re
    import subprocess

    from hf_distill.models.build import random_llama
    from hf_distill.models.gguf import load_tokenizer
    from hf_distill.models.real import real_model_dir

    tokenizer = load_tokenizer(real_model_dir("smollm2-135m-instruct"))
    teacher = work / "tiny_teacher"
    random_llama(0, vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True).save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    flags = ["-m", "hf_distill", "traces", "--teacher_model_name_or_path", str(teacher), "--dataset_name",
             "arithmetic", "--num_examples", str(n), "--num_samples", "2", "--shard_size", "4", "--batch_size", "8",
             "--max_new_tokens", str(max_new_tokens), "--temperature", "0.7", "--no_keep_only_verified", "--no_dedupe"]
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "recipes" / "accelerate" / "ddp.yaml"), "--num_processes", "2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    rows = []
    for name, command, threads in (("1 process, 1 thread", [sys.executable], "1"),
                                   (f"1 process, {os.cpu_count()} threads", [sys.executable], str(os.cpu_count())),
                                   ("2 processes, 1 thread each", launch, "1")):
        out = work / f"processes_{len(rows)}"
        began = time.perf_counter()
        result = subprocess.run([*command, *flags, "--output_dir", str(out)], env={**env, "OMP_NUM_THREADS": threads},
                                capture_output=True, text=True, timeout=1800)
        wall = time.perf_counter() - began
        if result.returncode != 0:
            raise RuntimeError(f"{name} failed: {result.stderr[-2000:]}")
        per_rank: dict[str, float] = {}
        for rank, seconds in re.findall(r"traces: (rank \d+/\d+: )?shard \d+/\d+ .*?, ([\d.]+) s", result.stdout):
            per_rank[rank] = per_rank.get(rank, 0.0) + float(seconds)
        collection = max(per_rank.values())
        rows.append((f"tiny teacher, {name}: wall", wall, 2 * n / wall, None))
        rows.append((f"tiny teacher, {name}: collect", collection, 2 * n / collection, None))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--problems", type=int, default=4)
    parser.add_argument("--examples", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,2,4", help="teacher_concurrency values for the served traces")
    parser.add_argument("--sections", default="traces,cache,processes")
    parser.add_argument("--mp-problems", type=int, default=64)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    numbers = {}
    from hf_distill.models.real import real_model_dir, real_model_gguf

    gguf, model_dir = real_model_gguf("smollm2-135m-instruct"), real_model_dir("smollm2-135m-instruct")
    work = Path(tempfile.mkdtemp(prefix="served_bench"))
    started = time.perf_counter()
    rows = []
    try:  # hf-distill serve's launcher, with the flag prompt log-probabilities need
        if sections & {"traces", "cache"}:
            with serving(gguf, n_ctx=1024, n_threads=2, log_path=work / "server.log", timeout=180,
                         extra=["--logits_all", "true"]) as server:
                rows = [("server start", time.perf_counter() - started, None, None)]
                if "traces" in sections:
                    rows += bench_traces(server.url, model_dir, problems(args.problems), args.max_new_tokens, work,
                                         [int(c) for c in args.concurrency.split(",")])
                if "cache" in sections:
                    cache_rows, numbers = bench_cache(server.url, model_dir, args.examples, work, args.steps)
                    rows += cache_rows
        if "processes" in sections:
            rows += bench_processes(work, args.mp_problems, 32)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine: numbers are noisy)")
    print(f"{'row':<48} {'seconds':>9} {'items/s':>9} {'tokens/s | bytes/token':>24}")
    for name, seconds, rate, extra in rows:
        unit = "" if rate is None else f"{rate:9.3f}"
        print(f"{name:<48} {seconds:9.2f} {unit:>9} {'' if extra is None else f'{extra:24.1f}'}")
    if numbers:
        print(f"cache top-1 agreement where llama.cpp names the token: {numbers['top1_agreement_nameable']:.3f} "
              f"({numbers['nameable_fraction']:.0%} of loss tokens)")
    print("traces: items/s = traces/s, last column = completion tokens/s; cache: items/s = loss tokens/s, last "
          "column = bytes per loss token; online KD: seconds per optimizer step (median); processes: items/s = "
          "traces/s")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, **numbers}, indent=1))


if __name__ == "__main__":
    main()
