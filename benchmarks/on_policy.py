"""On-policy distillation: is it better on the embedded task, at what wall-time cost, and how does our trainer compare
with TRL 1.16's ``DistillationTrainer`` on the same on-policy work? Not a test; prints tables and ratios.

``accuracy`` trains one student arm from a finished ``hf-distill demo`` directory (its data, tokenizer and teacher;
the student is the demo's, a shrink of the teacher: the same init in every arm) with reverse KL at T = 1 and
``--alpha`` (default 0: the divergence alone, as on-policy methods use it), changing only ``lmbda``: 0 trains on the
dataset's completions (off-policy), 1 on the student's own samples, 0.5 mixes micro-batches. It appends one JSON row:
exact-match accuracy and answer agreement with the teacher on the demo's held-out problems (greedy), wall time and
the share of it spent generating. ``versus-trl`` runs our ``DistillationTrainer(lmbda=1)`` and
``trl.DistillationTrainer`` (stable, on-policy only) each in a fresh process on the same work: the same random
student and teacher (vocab ``--vocab``), the same prompts, ``--new-tokens`` sampled at T = 1 without top-k/top-p,
reverse KL (TRL ``beta=1``), fp32, one optimizer step per batch; it reports the median step time (wall and process
CPU) over the steps after ``--warmup`` and the peak resident memory growth during training (``VmHWM`` reset after both
models are loaded). ``table`` prints both tables from the rows::

    hf-distill demo --output_dir DEMO
    for seed in 0 1; do for lmbda in 0 0.5 1; do
      OMP_NUM_THREADS=1 python benchmarks/on_policy.py accuracy --demo-dir DEMO --lmbda $lmbda --seed $seed \\
          --steps 200 --results on_policy.jsonl
    done; done
    OMP_NUM_THREADS=1 python benchmarks/on_policy.py versus-trl --results on_policy.jsonl
    python benchmarks/on_policy.py table on_policy.jsonl

On a shared CPU wall times are noisy: compare arms by ``cpu s`` and read the machine's load beside the table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import llama, load_average, machine_lines, params_m  # noqa: E402
from transformers import TrainerCallback  # noqa: E402


class LoopTimer(TrainerCallback):
    """Wall and process CPU time between consecutive optimizer steps: the whole loop iteration, so our generation
    (in ``get_batch_samples``, before ``on_step_begin``) and TRL's (inside ``training_step``) both count."""

    def __init__(self):
        self.wall, self.cpu, self._last = [], [], (0.0, 0.0)

    def on_train_begin(self, args, state, control, **kwargs):
        self._last = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        now = (time.perf_counter(), time.process_time())
        self.wall.append(now[0] - self._last[0])
        self.cpu.append(now[1] - self._last[1])
        self._last = now


# --- accuracy on the embedded task -----------------------------------------------------------------------------------

def accuracy_arm(args) -> dict:
    from _common import make_demo_student
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_distill import DistillationConfig, DistillationTrainer
    from hf_distill.data.reasoning import to_prompt_completion
    from hf_distill.demo import DemoSettings, _training_args
    from hf_distill.evaluation.generate import answer_agreement, evaluate_reasoning

    root = Path(args.demo_dir)
    settings = replace(DemoSettings(), seed=args.seed)
    data = load_from_disk(str(root / "data" / "dataset"))
    tokenizer = AutoTokenizer.from_pretrained(root / "data" / "tokenizer")
    train = to_prompt_completion(data["train"], tokenizer=tokenizer)
    teacher = AutoModelForCausalLM.from_pretrained(root / "teacher")
    student = make_demo_student(tokenizer, teacher, args.seed, "shrink")
    generating = [0.0]
    with tempfile.TemporaryDirectory() as out:
        common = _training_args(settings, Path(out), args.steps, settings.student_lr)
        common["bf16"] = common["bf16"] and not args.fp32
        config = DistillationConfig(**common, kd_loss="reverse_kl", alpha=args.alpha, temperature=1.0,
                                    lmbda=args.lmbda, max_new_tokens=args.max_new_tokens, log_completions=False)
        trainer = DistillationTrainer(student, config, train_dataset=train, processing_class=tokenizer,
                                      teacher_model=teacher)
        if trainer._on_policy is not None:  # time the generation inside the step
            complete = trainer._on_policy.complete

            def timed(batches, step):
                began = time.perf_counter()
                try:
                    return complete(batches, step)
                finally:
                    generating[0] += time.perf_counter() - began

            trainer._on_policy.complete = timed
        began = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - began
    questions, golds = list(data["test"]["question"]), list(data["test"]["answer"])
    student_eval = evaluate_reasoning(student, tokenizer, questions, golds, settings.max_new_tokens)
    teacher_eval = evaluate_reasoning(teacher, tokenizer, questions, golds, settings.max_new_tokens)
    lengths = [log["completion_length"] for log in trainer.state.log_history if "completion_length" in log]
    return {"kind": "accuracy", "lmbda": args.lmbda, "alpha": args.alpha, "seed": args.seed, "steps": args.steps,
            "accuracy": student_eval.accuracy, "teacher_accuracy": teacher_eval.accuracy,
            "agreement_with_teacher": answer_agreement(student_eval.answers, teacher_eval.answers),
            "train_seconds": round(seconds, 1), "generate_seconds": round(generating[0], 1),
            "completion_length": round(statistics.mean(lengths), 1) if lengths else None,
            "load": load_average()}


# --- ours vs TRL on the same on-policy work --------------------------------------------------------------------------

def _word_tokenizer(vocab: int):
    """Words ``w0 .. w{vocab-1}`` split on spaces (0 pad, 1 eos, 2 unk): prompts are plain strings for both trainers."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({f"w{i}": i for i in range(vocab)}, unk_token="w2"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="w0", eos_token="w1", unk_token="w2",
                                   padding_side="left")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def one_trainer(args) -> dict:
    """Runs in its own process: build one trainer, train, measure."""
    from datasets import Dataset

    torch.set_num_threads(args.threads)
    tokenizer = _word_tokenizer(args.vocab)
    (s_hidden, s_layers), (t_hidden, t_layers) = (map(int, x.split("x")) for x in (args.student, args.teacher))
    student, teacher = llama(args.vocab, s_hidden, s_layers, seed=1), llama(args.vocab, t_hidden, t_layers, seed=2)
    generator = torch.Generator().manual_seed(0)
    prompts = [" ".join(f"w{i}" for i in torch.randint(3, args.vocab, (args.prompt_len,), generator=generator).tolist())
               for _ in range(args.batch * (args.steps + args.warmup))]
    common = dict(output_dir=tempfile.mkdtemp(), max_steps=args.steps + args.warmup, learning_rate=1e-5,
                  per_device_train_batch_size=args.batch, gradient_accumulation_steps=1, report_to=[], logging_steps=1,
                  save_strategy="no", seed=0, bf16=False, use_cpu=True, dataloader_num_workers=0,
                  gradient_checkpointing=False, temperature=1.0)
    if args.which == "ours":
        from hf_distill import DistillationConfig, DistillationTrainer

        data = Dataset.from_dict({"prompt": prompts, "completion": [" w5"] * len(prompts)})
        config = DistillationConfig(**common, generation_top_p=1.0, generation_top_k=0, lmbda=1.0, alpha=0.0,
                                    kd_loss="reverse_kl",
                                    max_new_tokens=args.new_tokens, log_completions=False)
        trainer = DistillationTrainer(student, config, train_dataset=data, processing_class=tokenizer,
                                      teacher_model=teacher)
    else:
        from trl import DistillationConfig as TRLConfig
        from trl import DistillationTrainer as TRLTrainer

        data = Dataset.from_dict({"prompt": prompts})
        config = TRLConfig(**common, top_p=1.0, top_k=0, beta=1.0, max_completion_length=args.new_tokens,
                           shuffle_dataset=False)
        trainer = TRLTrainer(student, teacher, config, train_dataset=data, processing_class=tokenizer)
    timer = LoopTimer()
    trainer.add_callback(timer)
    with open("/proc/self/clear_refs", "w") as f:  # reset the high-water mark: count training only
        f.write("5")
    baseline = _status_kb("VmRSS")
    trainer.train()
    peak_mb = (_status_kb("VmHWM") - baseline) / 1024
    logs = [log for log in trainer.state.log_history if "loss" in log]
    length = [log.get("completion_length", log.get("completions/mean_length")) for log in logs]
    return {"kind": "versus_trl", "trainer": args.which, "wall_s": statistics.median(timer.wall[args.warmup:]),
            "cpu_s": statistics.median(timer.cpu[args.warmup:]), "peak_mb": round(peak_mb, 1),
            "completion_length": statistics.mean(x for x in length if x is not None) if any(length) else None,
            "loss": logs[-1]["loss"] if logs else None, "student_m": round(params_m(student), 1),
            "teacher_m": round(params_m(teacher), 1), "threads": args.threads, "vocab": args.vocab,
            "batch": args.batch, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens, "load": load_average()}


def versus_trl(args) -> list[dict]:
    rows = []
    for which in ("ours", "trl"):
        flags = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()
                 if k in ("vocab", "student", "teacher", "batch", "prompt_len", "new_tokens", "steps", "warmup",
                          "threads")]
        proc = subprocess.run([sys.executable, __file__, "_one", f"--which={which}", *flags], capture_output=True,
                              text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"{which} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return rows


# --- tables ----------------------------------------------------------------------------------------------------------

def print_tables(rows: list[dict]) -> None:
    accuracy = [r for r in rows if r["kind"] == "accuracy"]
    if accuracy:
        print("| lmbda | seeds | exact match (each seed) | mean | agrees with teacher (mean) | train s (mean) "
              "| of it generating | vs off-policy time |")
        print("|---:|---:|---|---:|---:|---:|---:|---:|")
        by_lmbda = {}
        for r in accuracy:
            by_lmbda.setdefault(r["lmbda"], []).append(r)
        base = statistics.mean(r["train_seconds"] for r in by_lmbda.get(0.0, accuracy))
        for lmbda, group in sorted(by_lmbda.items()):
            group.sort(key=lambda r: r["seed"])
            mean = lambda key: statistics.mean(r[key] for r in group)  # noqa: E731
            each = " / ".join(f"{100 * r['accuracy']:.1f}" for r in group)
            print(f"| {lmbda:g} | {len(group)} | {each} "
                  f"| {100 * mean('accuracy'):.1f}% | {100 * mean('agreement_with_teacher'):.1f}% "
                  f"| {mean('train_seconds'):.0f} | {mean('generate_seconds'):.0f} s "
                  f"| {mean('train_seconds') / base:.2f}x |")
        print(f"teacher: {100 * accuracy[0]['teacher_accuracy']:.1f}%; steps {accuracy[0]['steps']}, "
              f"alpha {accuracy[0]['alpha']}; load averages seen: {sorted({r['load'] for r in accuracy})}")
    versus = {r["trainer"]: r for r in rows if r["kind"] == "versus_trl"}
    if len(versus) == 2:
        ours, trl = versus["ours"], versus["trl"]
        print(f"\nOn-policy step, ours vs trl.DistillationTrainer: student {ours['student_m']}M, teacher "
              f"{ours['teacher_m']}M, vocab {ours['vocab']}, batch {ours['batch']} x (prompt {ours['prompt_len']} + "
              f"{ours['new_tokens']} sampled), {ours['threads']} thread(s), load {ours['load']} / {trl['load']}")
        print("| trainer | step wall s | step cpu s | peak RSS growth MB | mean completion tokens |")
        print("|---|---:|---:|---:|---:|")
        for r in (ours, trl):
            print(f"| {r['trainer']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['peak_mb']:.0f} "
                  f"| {r['completion_length'] or float('nan'):.1f} |")
        print(f"throughput ours / TRL (by cpu s): {trl['cpu_s'] / ours['cpu_s']:.2f}x; "
              f"memory ours / TRL: {ours['peak_mb'] / max(trl['peak_mb'], 1e-9):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    acc = sub.add_parser("accuracy")
    acc.add_argument("--demo-dir", required=True)
    acc.add_argument("--lmbda", type=float, required=True)
    acc.add_argument("--alpha", type=float, default=0.0)
    acc.add_argument("--seed", type=int, default=0)
    acc.add_argument("--steps", type=int, default=200)
    acc.add_argument("--max-new-tokens", type=int, default=64)
    acc.add_argument("--fp32", action="store_true")
    for name in ("versus-trl", "_one"):
        p = sub.add_parser(name)
        p.add_argument("--vocab", type=int, default=32000)
        p.add_argument("--student", default="256x4")
        p.add_argument("--teacher", default="512x4")
        p.add_argument("--batch", type=int, default=8)
        p.add_argument("--prompt-len", type=int, default=64)
        p.add_argument("--new-tokens", type=int, default=64)
        p.add_argument("--steps", type=int, default=3)
        p.add_argument("--warmup", type=int, default=1)
        p.add_argument("--threads", type=int, default=1)
        if name == "_one":
            p.add_argument("--which", choices=["ours", "trl"], required=True)
    for p in (acc, sub.choices["versus-trl"]):
        p.add_argument("--results", default=None, help="append the rows as JSON lines to this file")
    table = sub.add_parser("table")
    table.add_argument("results")
    args = parser.parse_args()

    if args.command == "_one":
        print(json.dumps(one_trainer(args)))
        return
    if args.command == "table":
        print_tables([json.loads(line) for line in Path(args.results).read_text().splitlines() if line.strip()])
        print("\n".join(machine_lines()))
        return
    rows = [accuracy_arm(args)] if args.command == "accuracy" else versus_trl(args)
    for row in rows:
        print(json.dumps(row))
    if args.results:
        with open(args.results, "a") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    if args.command == "versus-trl":
        print_tables(rows)


if __name__ == "__main__":
    main()
