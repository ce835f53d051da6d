"""Teacher memory and speed in float32, bfloat16, 8-bit and 4-bit, loaded the way `DistillationTrainer` loads it.

A random Llama (default hidden 768, 12 layers, vocab 32000, untied embeddings: ~134M parameters, 85M of them in the
decoder layers that bitsandbytes quantises; embeddings, norms and lm_head stay in the load dtype) is saved once with
``save_pretrained`` (or ``--model DIR`` measures a saved checkpoint); then, for each mode, a fresh subprocess loads it
with ``hf_distill.teacher.live.load_teacher`` (``teacher_dtype`` / ``teacher_quantization``) and measures:

* ``weights MB``: parameters + buffers + bitsandbytes' quantisation state (``quantization.weight_memory_bytes``);
* ``RSS MB``: resident-memory growth of the process over its size just before loading, after loading and after the
  timed forwards (a float32 checkpoint is memory-mapped, so its pages count only once a forward has touched them),
  and ``peak MB``: the high-water mark while loading (kernel ``ru_maxrss``);
* ``forward s`` / ``forward cpu s``: median wall / process CPU time of a no-grad teacher forward on ``--batch`` x
  ``--seq`` random tokens (``--repeats`` runs after one warm-up), and ``KL`` / ``top-1``: mean KL(float32 teacher ||
  this one) per token and argmax agreement, the price of the memory saved (a random model's logits are nearly flat,
  so its top-1 flips easily: use ``--model`` with a trained teacher to judge quality).

Not a test: run it by hand (a few minutes on 2 CPU cores; ``--quick`` is the seconds-long smoke run)::

    OMP_NUM_THREADS=2 python benchmarks/teacher_memory.py [--hidden 768 --layers 12 --vocab 32000] [--markdown out.md]
    python benchmarks/teacher_memory.py --quick --in-process      # the smoke run of tests/test_benchmarks_smoke.py
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import psutil
import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import llama, load_average, machine_lines  # noqa: E402

# mode -> (teacher_dtype, teacher_quantization); quantised teachers keep embeddings/head in bf16 and compute in bf16
MODES = {
    "float32": ("float32", None),
    "bfloat16": ("bfloat16", None),
    "8bit": ("bfloat16", "8bit"),
    "4bit": ("bfloat16", "4bit"),
}


def measure_one(mode: str, model_dir: Path, out: Path, batch: int, seq: int, vocab: int, repeats: int) -> None:
    """Runs in its own process, so RSS growth belongs to this mode alone."""
    from hf_distill.models.quantization import weight_memory_bytes
    from hf_distill.teacher.live import load_teacher

    dtype, quantization = MODES[mode]
    try:
        import bitsandbytes  # noqa: F401 - imported by every mode, so its own memory is not counted as the teacher's
    except ImportError:
        pass
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    start = time.perf_counter()
    teacher = load_teacher(str(model_dir), dtype, quantization=quantization, device="cpu")
    load_s = time.perf_counter() - start
    gc.collect()
    after = process.memory_info().rss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    ids = torch.randint(3, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))
    times, cpu_times = [], []
    with torch.no_grad():
        for _ in range(repeats + 1):
            start, cpu_start = time.perf_counter(), time.process_time()
            logits = teacher(input_ids=ids).logits
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
    gc.collect()
    torch.save(logits.float().reshape(-1, logits.shape[-1]), out.with_suffix(".pt"))
    out.write_text(json.dumps({
        "mode": mode, "weights": weight_memory_bytes(teacher), "rss": after - before, "peak": max(peak - before, 0),
        "rss_used": process.memory_info().rss - before, "load_s": load_s,
        "forward_s": statistics.median(times[1:]), "forward_cpu_s": statistics.median(cpu_times[1:]),
    }))


def run(args, work: Path) -> list[dict]:
    if args.model:
        model = AutoModelForCausalLM.from_pretrained(args.model)
        teacher_dir, args.vocab = Path(args.model), model.config.vocab_size
    else:
        model, teacher_dir = llama(args.vocab, args.hidden, args.layers, seed=0), work / "teacher"
        model.save_pretrained(teacher_dir)
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    in_layers = sum(p.numel() for p in model.model.layers.parameters())
    config = model.config
    del model
    print(f"teacher {args.model or 'random'}: hidden {config.hidden_size}, {config.num_hidden_layers} layers, vocab "
          f"{config.vocab_size}: {params / 1e6:.1f}M parameters, {in_layers / 1e6:.1f}M in decoder layers "
          f"(quantisable); batch {args.batch} x seq {args.seq}; load average {load_average()}")
    rows = []
    for mode in args.modes.split(","):
        out = work / mode
        if args.in_process:
            measure_one(mode, teacher_dir, out, args.batch, args.seq, args.vocab, args.repeats)
            rows.append(json.loads(out.read_text()))
            continue
        proc = subprocess.run(
            [sys.executable, __file__, "--one", mode, "--dir", str(teacher_dir), "--out", str(out),
             "--batch", str(args.batch), "--seq", str(args.seq), "--vocab", str(args.vocab),
             "--repeats", str(args.repeats)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
        rows.append(json.loads(out.read_text()))
    reference = torch.load(work / "float32.pt") if (work / "float32.pt").exists() else None
    for row in rows:
        logits = torch.load(work / f"{row['mode']}.pt")
        if reference is not None:
            p_log, q_log = reference.log_softmax(-1), logits.log_softmax(-1)
            row["kl"] = (p_log.exp() * (p_log - q_log)).sum(-1).mean().item()
            row["top1"] = (reference.argmax(-1) == logits.argmax(-1)).float().mean().item()
    return rows


def table(rows: list[dict]) -> str:
    base = next((r for r in rows if r["mode"] == "float32"), rows[0])
    lines = ["| mode | weights MB | vs float32 | RSS MB after load / forward | peak MB | load s | forward s | "
             "forward cpu s | cpu vs float32 | KL | top-1 |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kl = f"{r['kl']:.2e}" if "kl" in r else "-"
        top1 = f"{r['top1']:.3f}" if "top1" in r else "-"
        lines.append(
            f"| {r['mode']} | {r['weights'] / 2**20:.1f} | {r['weights'] / base['weights']:.3f} | "
            f"{r['rss'] / 2**20:.0f} / {r['rss_used'] / 2**20:.0f} | {r['peak'] / 2**20:.0f} | {r['load_s']:.2f} | "
            f"{r['forward_s']:.3f} | {r['forward_cpu_s']:.3f} | {r['forward_cpu_s'] / base['forward_cpu_s']:.2f} | "
            f"{kl} | {top1} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a saved causal LM directory to measure instead of a random Llama")
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--quick", action="store_true", help="toy sizes (seconds): the smoke run of the tests")
    parser.add_argument("--in-process", action="store_true",
                        help="measure every mode in this process (memory columns then carry earlier modes' leftovers)")
    parser.add_argument("--markdown", help="also write the table and machine info to this file")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        measure_one(args.one, Path(args.dir), Path(args.out), args.batch, args.seq, args.vocab, args.repeats)
        return 0
    if args.quick:
        args.hidden, args.layers, args.vocab, args.seq, args.repeats = 128, 2, 1000, 32, 1
    with tempfile.TemporaryDirectory(prefix="teacher_memory_") as work:
        rows = run(args, Path(work))
    text = table(rows)
    print(text)
    print("RSS: process resident-memory growth over the process before loading (after loading / after the forward; "
          "one fresh process per mode), peak: its high-water mark while loading; weights: tensors held. KL / top-1: "
          "against the float32 teacher on the same random tokens. Timings on a shared machine: compare cpu ratios.")
    if args.markdown:
        body = "\n".join(["# Teacher memory", "", text, "", *machine_lines(), ""])
        tmp = Path(args.markdown).with_suffix(".tmp")
        tmp.write_text(body)
        os.replace(tmp, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
