"""Per-rank memory of a distillation step under FSDP2 (``fully_shard=True``, 2 CPU ranks over gloo) vs one process.

The same random teacher and student (untied Llamas, default vocab 32000: student 512x8 ~58M, teacher 1024x8 ~166M
parameters, float32) train ``--steps`` optimizer steps on the same global batch (``--batch`` rows of ``--seq``
random tokens: one process with the whole batch, two ranks with half each). Each process measures:

* ``sharded state MB``: what it holds between steps, counted from tensors: the student's parameters (local
  shards), their AdamW moments (after the steps), and the teacher's parameters;
* ``step peak MB``: the growth of its resident memory during ``train()`` over its size just before (the kernel's
  high-water mark ``VmHWM``, reset through ``/proc/self/clear_refs``): the optimizer state created at the first
  step, gradients, what FSDP gathers (each layer in turn, the root with the student's head for the whole step, the
  teacher's head for the loss) and the activations; ``peak RSS MB``: the process's resident size at that peak
  (libraries included, the number to compare per rank);
* ``setup peak MB``: the high-water mark before that (libraries, and the two full models that every rank builds
  before sharding them: FSDP here shards models built whole, it does not load shards);
* ``s/step``: median wall time per step after the first.

Each process runs with ``MALLOC_MMAP_THRESHOLD_=65536`` (``--glibc-heap`` to keep glibc's default): otherwise glibc
serves large tensors from heaps it raises its threshold for and keeps after they are freed, and the RSS peak then
measures the allocator's retained memory (with gloo's threads, one heap each) more than the live tensors.

Not a test: run it by hand (about 6 minutes on 2 busy cores; ``--quick``, a tiny smoke run, about 2)::

    python benchmarks/fsdp.py [--vocab 32000 --student 512x8 --teacher 1024x8 --batch 8 --seq 128] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _release_and_reset_peak() -> int:
    """Return freed heap to the kernel, reset the RSS high-water mark; the resident KiB it starts from."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kb("VmRSS")


def _bytes(tensors) -> int:
    from torch.distributed.tensor import DTensor

    return sum((t.to_local() if isinstance(t, DTensor) else t).nbytes for t in tensors if t is not None)


def worker(args) -> None:
    """One process (or one rank): build, train ``--steps``, write ``rank-{i}.json`` under ``--out``."""
    import torch
    from _common import StepTimer, llama, size, word_tokenizer
    from datasets import Dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from hf_distill import DistillationConfig, DistillationTrainer
    from hf_distill.utils.device import end_distributed

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    tokenizer = word_tokenizer(args.vocab)
    ids = torch.randint(3, args.vocab, (args.batch * args.steps, args.seq),
                        generator=torch.Generator().manual_seed(0)).tolist()
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    teacher = llama(args.vocab, *size(args.teacher), seed=1).eval().requires_grad_(False)
    student = llama(args.vocab, *size(args.student), seed=2)
    config = DistillationConfig(
        output_dir=str(Path(args.out) / "run"), max_steps=args.steps, per_device_train_batch_size=args.batch // world,
        report_to=[], save_strategy="no", logging_steps=10**6, disable_tqdm=True, seed=0, dataloader_num_workers=0,
        learning_rate=1e-4, bf16=False, use_cpu=True, activation_checkpointing=False, fully_shard=world > 1,
    )
    trainer = DistillationTrainer(student, config, data_collator=DataCollatorForLanguageModeling(pad_token_id=0),
                                  train_dataset=data, processing_class=tokenizer, teacher_model=teacher)
    del student, teacher
    timer = StepTimer()
    trainer.add_callback(timer)
    setup_peak_kb = _status_kb("VmHWM")
    start_kb = _release_and_reset_peak()
    trainer.train()
    step_peak_kb = _status_kb("VmHWM") - start_kb
    optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    moments = [state.get(key) for state in optimizer.state.values() for key in ("exp_avg", "exp_avg_sq")]
    report = {
        "rank": rank, "world": world,
        "student_mb": _bytes(trainer.model.parameters()) / 2**20,
        "adam_mb": _bytes(moments) / 2**20,
        "teacher_mb": _bytes(trainer.teacher.unwrapped.parameters()) / 2**20,
        "student_m": sum(p.numel() for p in trainer.model.parameters()) / 1e6,
        "teacher_m": sum(p.numel() for p in trainer.teacher.unwrapped.parameters()) / 1e6,
        "step_peak_mb": step_peak_kb / 1024, "setup_peak_mb": setup_peak_kb / 1024, "start_mb": start_kb / 1024,
        "s_per_step": statistics.median(timer.wall[1:] or timer.wall),
        "loss": trainer.state.log_history[-1].get("train_loss"),
    }
    (Path(args.out) / f"rank-{rank}.json").write_text(json.dumps(report))
    end_distributed()


def _launch(args, out: Path, ranks: int) -> list[dict]:
    out.mkdir(parents=True)
    flags = ["--worker", "--out", str(out), "--vocab", str(args.vocab), "--student", args.student, "--teacher",
             args.teacher, "--batch", str(args.batch), "--seq", str(args.seq), "--steps", str(args.steps)]
    script = str(Path(__file__).resolve())
    command = ([sys.executable, script] if ranks == 1 else
               [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), script])
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "TOKENIZERS_PARALLELISM": "false"}
    if not args.glibc_heap:  # every tensor of 64 KiB or more gets its own mapping, returned to the kernel when freed
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    result = subprocess.run([*command, *flags], env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(result.stdout[-2000:] + result.stderr[-4000:])
    return [json.loads(path.read_text()) for path in sorted(out.glob("rank-*.json"))]


def table(runs: dict[str, list[dict]], args) -> str:
    one = runs["1 process"][0]
    lines = [
        f"FSDP2 distillation step, CPU (gloo), float32: student {args.student} ({one['student_m']:.1f}M), teacher "
        f"{args.teacher} ({one['teacher_m']:.1f}M), vocab {args.vocab}, global batch {args.batch} x {args.seq} tokens, "
        f"{args.steps} steps, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '1')} per process, glibc "
        f"{'default heap' if args.glibc_heap else 'MALLOC_MMAP_THRESHOLD_=65536'}",
        "",
        "| run | rank | student MB | AdamW MB | teacher MB | sharded state MB | step peak MB | peak RSS MB | "
        "setup peak MB | s/step | rank's train loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, ranks in runs.items():
        for r in ranks:
            state = r["student_mb"] + r["adam_mb"] + r["teacher_mb"]
            lines.append(f"| {name} | {r['rank']} | {r['student_mb']:.0f} | {r['adam_mb']:.0f} | {r['teacher_mb']:.0f} "
                         f"| {state:.0f} | {r['step_peak_mb']:.0f} | {r['start_mb'] + r['step_peak_mb']:.0f} "
                         f"| {r['setup_peak_mb']:.0f} | {r['s_per_step']:.2f} | {r['loss']:.4f} |")
    two = runs["fully_shard, 2 ranks"]
    state_one = one["student_mb"] + one["adam_mb"] + one["teacher_mb"]
    state_two = max(r["student_mb"] + r["adam_mb"] + r["teacher_mb"] for r in two)
    step_two = max(r["step_peak_mb"] for r in two)
    peak_one, peak_two = one["start_mb"] + one["step_peak_mb"], max(r["start_mb"] + r["step_peak_mb"] for r in two)
    lines += ["", f"Per rank with 2 ranks vs one process: sharded state {state_two / state_one:.2f}x, step peak "
                  f"{step_two / one['step_peak_mb']:.2f}x, peak RSS {peak_two / peak_one:.2f}x (libraries included). "
                  "A step's peak also holds what FSDP gathers (the student's root unit with its head and gradient "
                  "for the whole step, the teacher's head for the loss, a layer and the prefetched next one, the "
                  "collectives' buffers) and the activations of half the batch."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--student", default="512x8")
    parser.add_argument("--teacher", default="1024x8")
    parser.add_argument("--batch", type=int, default=8, help="global batch (split over the ranks)")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--markdown", help="also write the table here")
    parser.add_argument("--json", help="also write the raw measurements here")
    parser.add_argument("--glibc-heap", action="store_true",
                        help="keep glibc's default mmap threshold (freed tensors may stay resident in its heap)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    if args.quick:
        args.vocab, args.student, args.teacher, args.batch, args.seq, args.steps = 512, "64x2", "128x2", 4, 16, 2
    with tempfile.TemporaryDirectory(prefix="hfd-fsdp-") as work:
        runs = {"1 process": _launch(args, Path(work) / "one", 1),
                "fully_shard, 2 ranks": _launch(args, Path(work) / "two", 2)}
    text = table(runs, args)
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
