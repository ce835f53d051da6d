"""Time and peak memory of the distillation loss alone (forward + backward), against plain cross-entropy.

Every measurement starts from final hidden states, as a trainer has them after the model body:

* student: hidden ``(B, T, H)`` (leaf, requires grad) and ``lm_head`` weight ``(V, H)`` (requires grad);
* teacher: hidden ``(B, T, H_t)`` and its own ``lm_head`` weight ``(V, H_t)`` (no grad), which is how
  :class:`hf_distill.DistillationTrainer` passes a live teacher to the loss.

Methods:

``ce``            ``logits = hidden @ W.T`` then ``F.cross_entropy(logits.float(), y)``, as transformers computes it.
``seed_dense``    the snippet people copy: dense student and teacher logits (teacher under ``no_grad``),
                  ``kl_div(log_softmax(s/T), softmax(t/T), "batchmean") * T*T + CE``.
``ours_chunked``  ``hf_distill.losses.chunked.fused_distillation_loss`` with ``DenseTeacherSignal(teacher_hidden, V,
                  teacher_weight)``; chunk size from ``DistillationConfig.loss_spec(V)`` unless swept.
``trl_chunked``   TRL's ``_chunked_divergence_loss`` (``trl.DistillationTrainer``'s hidden-state + lm_head
                  generalised JSD) with ``beta=0`` (forward KL). It has no CE term. Skipped if it cannot be imported.

Every (method, vocab, seq, chunk) runs in a fresh subprocess. Peak memory is the growth of the process's resident set
over a baseline taken after the inputs are allocated (and after one tiny run of the same method at seq 8, so lazy
library initialisation is not counted): the kernel's RSS high-water mark (``VmHWM``) is reset by writing ``5`` to
``/proc/self/clear_refs`` at the baseline and read after the runs. Where that reset is not allowed, it falls back to
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` before/after. Time is the median of ``--repeats`` forward+backward
runs after ``--warmup`` warm-up runs, with ``torch.set_num_threads(--threads)``. Gradients are set to ``None`` between
runs (as ``optimizer.zero_grad()`` does), so every run allocates them again and they count towards the peak.

The ``tensor MB`` column is a second, allocator-independent view of memory: the peak bytes of live tensors allocated
during one extra (untimed) run under ``torch.profiler`` with ``profile_memory=True``. RSS also counts what glibc keeps
after a free: with its default dynamic mmap threshold, freed blocks under 32 MiB move the threshold up and later ones
land on the heap, where they are retained. Chunks whose ``(chunk, V)`` float32 tensors are just under 32 MiB (e.g.
256 x 32k, 64 x 128k) therefore show a few hundred MB more RSS than tensor MB, so RSS is not monotone in the chunk
size; running with ``MALLOC_MMAP_THRESHOLD_=1048576`` brings RSS back to about tensor MB.

``cpu s`` is the median CPU time (all threads) of the same runs. On a shared 2-core machine wall time swings by 2x
with the other processes' load, while CPU time stays within about 10%: compare methods by ``cpu vs ce`` there.

``--ours-impl FILE`` benchmarks a candidate ``fused_distillation_loss`` (same signature) from FILE as
``ours_chunked``, for A/B tests of a change to ``hf_distill/losses/chunked.py``; ``--from-json`` re-renders a saved
``--json`` result without running anything.

Usage::

    python benchmarks/kd_loss.py                                  # seq 512 and 1024, vocab 32000 and 128256
    python benchmarks/kd_loss.py --chunk-sizes 64,128,256,512,1024 --markdown kd_loss.md
    python benchmarks/kd_loss.py --quick                          # tiny sizes, a few seconds per method
    python benchmarks/kd_loss.py --seq 512 --methods ce,ours_chunked --ours-impl /tmp/candidate_chunked.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

METHODS = ("ce", "seed_dense", "ours_chunked", "trl_chunked")
MEMORY_GOAL = 1.25  # ours_chunked peak memory must stay within this multiple of plain CE's


# --------------------------------------------------------------------------------------------------------------------
# Worker: one (method, vocab, seq, chunk) in this process
# --------------------------------------------------------------------------------------------------------------------


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_kb() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _default_chunk(vocab: int) -> int:
    """The chunk size our trainer uses by default, from the real config."""
    import tempfile
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from hf_distill.config import DistillationConfig

        with tempfile.TemporaryDirectory() as tmp:
            config = DistillationConfig(output_dir=tmp, report_to=[])
            return config.loss_spec(vocab).chunk_size


def _make_step(method: str, inputs: dict, chunk: int | None, impl: str | None = None, temperature: float = 1.0):
    """A closure computing the loss (forward) for `method`; the caller runs backward."""
    import torch
    import torch.nn.functional as F

    s_hidden, s_weight = inputs["s_hidden"], inputs["s_weight"]
    t_hidden, t_weight, labels = inputs["t_hidden"], inputs["t_weight"], inputs["labels"]
    vocab = s_weight.shape[0]

    if method == "ce":

        def step():
            logits = s_hidden @ s_weight.T  # (B, T, V)
            return F.cross_entropy(logits.float().view(-1, vocab), labels.view(-1))

        return step, None

    if method == "seed_dense":

        def step():
            s_logits = s_hidden @ s_weight.T  # (B, T, V)
            with torch.no_grad():
                t_logits = t_hidden @ t_weight.T  # (B, T, V)
            kd = F.kl_div(
                F.log_softmax(s_logits / temperature, dim=-1),
                F.softmax(t_logits / temperature, dim=-1),
                reduction="batchmean",
            ) * (temperature**2)
            return kd + F.cross_entropy(s_logits.view(-1, vocab), labels.view(-1))

        return step, None

    if method == "ours_chunked":
        import dataclasses
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from hf_distill.losses.chunked import LossSpec, fused_distillation_loss
            from hf_distill.losses.targets import DenseTeacherSignal
        if impl:  # a candidate implementation with the same signature, for A/B comparisons
            import importlib.util

            module_spec = importlib.util.spec_from_file_location("_kd_candidate", impl)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_spec.name] = module  # dataclasses look their module up while the file executes
            module_spec.loader.exec_module(module)
            fused_distillation_loss = module.fused_distillation_loss
        default = _default_chunk(vocab)

        spec = LossSpec(temperature=temperature, chunk_size=default)
        if chunk is not None:
            spec = dataclasses.replace(spec, chunk_size=chunk)
        n = s_hidden.shape[0] * s_hidden.shape[1]

        def step():
            teacher = DenseTeacherSignal(t_hidden.view(n, -1), vocab, t_weight)
            out = fused_distillation_loss(s_hidden.view(n, -1), s_weight, None, teacher, labels.view(n), spec)
            return out.loss

        return step, {"chunk": spec.chunk_size, "default_chunk": default, "spec": repr(spec), "impl": impl}

    if method == "trl_chunked":
        import inspect
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import trl
                from trl.kernels import chunked_divergence
                from trl.trainer.distillation_trainer import _chunked_divergence_loss
        except Exception as exc:  # noqa: BLE001 - any import failure means "not available here"
            raise _Skip(f"TRL chunked loss not importable: {type(exc).__name__}: {exc}") from None
        params = inspect.signature(_chunked_divergence_loss).parameters
        needed = ("student_hidden_states", "teacher_hidden_states", "student_lm_head_weight",
                  "teacher_lm_head_weight", "completion_mask", "beta")  # fmt: skip
        if any(name not in params for name in needed):
            raise _Skip(f"trl {trl.__version__}: _chunked_divergence_loss{inspect.signature(_chunked_divergence_loss)}")
        mask = torch.ones(labels.shape, dtype=torch.long)
        kwargs = {"temperature": temperature} if "temperature" in params else {}
        tokens, vocab_tile = (getattr(chunked_divergence, n, "?") for n in ("TOKEN_CHUNK_SIZE", "VOCAB_CHUNK_SIZE"))
        tiles = f"{tokens}x{vocab_tile}"

        def step():
            loss, _entropy, _n = _chunked_divergence_loss(
                s_hidden, t_hidden, s_weight, t_weight, mask, beta=0.0, **kwargs
            )  # beta=0: forward KL(teacher || student)
            return loss

        return step, {"chunk": tiles, "trl_version": trl.__version__}

    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


class _Skip(Exception):
    pass


def _inputs(vocab: int, seq: int, batch: int, hidden: int, teacher_hidden: int, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    return {
        "s_hidden": torch.randn(batch, seq, hidden, generator=g).requires_grad_(),
        "s_weight": (torch.randn(vocab, hidden, generator=g) * hidden**-0.5).requires_grad_(),
        "t_hidden": torch.randn(batch, seq, teacher_hidden, generator=g),
        "t_weight": torch.randn(vocab, teacher_hidden, generator=g) * teacher_hidden**-0.5,
        "labels": torch.randint(0, vocab, (batch, seq), generator=g),
    }


def _run_once(step, inputs) -> tuple[float, float]:
    """Wall and CPU (user + system, all threads of this process) seconds of one forward + backward."""
    import time as _time

    for name in ("s_hidden", "s_weight"):
        inputs[name].grad = None
    start, start_cpu = _time.perf_counter(), _time.process_time()
    loss = step()
    loss.backward()
    elapsed, cpu = _time.perf_counter() - start, _time.process_time() - start_cpu
    if not bool(inputs["s_hidden"].grad.isfinite().all()):
        raise FloatingPointError("non-finite gradient")
    return elapsed, cpu


def _tensor_peak_mb(step, inputs) -> float | None:
    """Peak bytes of live tensors during one run, from the profiler's allocation events (allocator-independent)."""
    try:
        from torch._C._profiler import _EventType
        from torch.profiler import ProfilerActivity, profile
    except ImportError:
        return None
    for name in ("s_hidden", "s_weight"):
        inputs[name].grad = None
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step().backward()
    sizes, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation and node.typed[1].device.type == "cpu":
            sizes.append((node.start_time_ns, node.typed[1].alloc_size))  # negative for frees
        stack.extend(node.children)
    live = peak = 0
    for _, size in sorted(sizes):
        live += size
        peak = max(peak, live)
    return peak / 2**20


def worker(job: dict) -> dict:
    import gc

    import torch

    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    method, vocab, seq = job["method"], job["vocab"], job["seq"]
    dims = (job["batch"], job["hidden"], job["teacher_hidden"])
    result = {"method": method, "vocab": vocab, "seq": seq}
    try:
        # A tiny run of the same code path first: imports, thread pools, oneDNN kernels are not part of the loss.
        tiny = _inputs(vocab, 8, dims[0], dims[1], dims[2], seed=1)
        tiny_step, _ = _make_step(method, tiny, job["chunk"], job.get("impl"))
        _run_once(tiny_step, tiny)
        del tiny, tiny_step

        inputs = _inputs(vocab, seq, *dims)
        step, extra = _make_step(method, inputs, job["chunk"], job.get("impl"))
        result.update(extra or {})
        gc.collect()
        reset = _reset_peak()
        baseline_kb = _status_kb("VmRSS") if reset else _maxrss_kb()
        times = [_run_once(step, inputs) for _ in range(job["warmup"] + job["repeats"])]
        peak_kb = (_status_kb("VmHWM") if reset else None) or _maxrss_kb()
        tensor_mb = _tensor_peak_mb(step, inputs) if job.get("tensor_peak", True) else None
    except _Skip as exc:
        result["skipped"] = str(exc)
        return result
    timed = times[job["warmup"] :] or times
    result.update(
        time_s=statistics.median(t for t, _ in timed),
        cpu_s=statistics.median(c for _, c in timed),
        times_s=[round(t, 4) for t, _ in times],
        cpu_times_s=[round(c, 4) for _, c in times],
        peak_mb=max(peak_kb - baseline_kb, 0) / 1024,
        baseline_mb=baseline_kb / 1024,
        tensor_mb=tensor_mb,
        memory_probe="VmHWM reset via /proc/self/clear_refs" if reset else "ru_maxrss before/after",
    )
    return result


# --------------------------------------------------------------------------------------------------------------------
# Driver: one subprocess per configuration, then the table
# --------------------------------------------------------------------------------------------------------------------


def _jobs(args) -> list[dict]:
    base = {k: getattr(args, k) for k in ("batch", "hidden", "teacher_hidden", "threads", "warmup", "repeats")}
    base["impl"] = os.path.abspath(args.ours_impl) if args.ours_impl else None
    base["tensor_peak"] = not args.no_tensor_peak
    jobs = []
    for vocab in args.vocabs:
        for seq in args.seq:
            for method in args.methods:
                chunks = [None]  # None: the method's own default (ours: DistillationConfig.loss_spec)
                if method == "ours_chunked":
                    chunks += args.chunk_sizes
                for chunk in chunks:
                    jobs.append({**base, "method": method, "vocab": vocab, "seq": seq, "chunk": chunk})
    return jobs


def _run_job(job: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(job)]
    label = {"method": job["method"], "vocab": job["vocab"], "seq": job["seq"]}
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"]), "PYTHONWARNINGS": "ignore"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {**label, "chunk": job["chunk"], "error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
    return {**label, "chunk": job["chunk"], "error": f"exit {proc.returncode}: {tail[0][:200]}"}


def _chunk_label(row: dict) -> str:
    chunk = row.get("chunk")
    if chunk is None:
        return "-"
    if row["method"] == "ours_chunked" and chunk == row.get("default_chunk"):
        return f"{chunk} (default)"
    return str(chunk)


def _mb(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def _table_rows(results: list[dict]) -> list[list[str]]:
    ce = {(r["vocab"], r["seq"]): r for r in results if r["method"] == "ce" and "time_s" in r}
    rows = []
    for r in results:
        base = [r["method"], str(r["vocab"]), str(r["seq"]), _chunk_label(r)]
        if "time_s" not in r:
            rows.append(base + ["skipped" if "skipped" in r else "error"] + ["-"] * (len(HEADERS) - 5))
            continue
        ref = ce.get((r["vocab"], r["seq"]))
        t_ratio = f"{r['time_s'] / ref['time_s']:.2f}x" if ref else "-"
        m_ratio = f"{r['peak_mb'] / ref['peak_mb']:.2f}x" if ref and ref["peak_mb"] > 0 else "-"
        cpu = f"{r['cpu_s']:.3f}" if "cpu_s" in r else "-"
        c_ratio = f"{r['cpu_s'] / ref['cpu_s']:.2f}x" if ref and "cpu_s" in r and ref.get("cpu_s") else "-"
        rows.append(
            base + [f"{r['time_s']:.3f}", _mb(r["peak_mb"]), t_ratio, m_ratio, _mb(r.get("tensor_mb")), cpu, c_ratio]
        )
    return rows


HEADERS = [
    "method", "vocab", "seq", "chunk", "time s", "peak MB", "time vs ce", "memory vs ce",
    "tensor MB", "cpu s", "cpu vs ce",
]  # fmt: skip


def _verdicts(results: list[dict]) -> list[str]:
    """One line per (vocab, seq): does ours (default chunk) meet the memory goal, and which swept chunk is best."""
    lines = []
    keys = sorted({(r["vocab"], r["seq"]) for r in results})
    for vocab, seq in keys:
        ce = next((r for r in results if r["method"] == "ce" and (r["vocab"], r["seq"]) == (vocab, seq)), None)
        ours = [r for r in results if r["method"] == "ours_chunked" and (r["vocab"], r["seq"]) == (vocab, seq)]
        ours = [r for r in ours if "time_s" in r]
        if ce is None or "peak_mb" not in ce or not ours:
            lines.append(f"vocab {vocab}, seq {seq}: cannot judge the memory goal (ce or ours_chunked missing)")
            continue
        limit = MEMORY_GOAL * ce["peak_mb"]
        default = next((r for r in ours if r.get("chunk") == r.get("default_chunk")), ours[0])
        ok = default["peak_mb"] <= limit
        line = (
            f"vocab {vocab}, seq {seq}: ours_chunked (chunk {default['chunk']}) peak {default['peak_mb']:.0f} MB = "
            f"{default['peak_mb'] / ce['peak_mb']:.2f}x CE -> {'MEETS' if ok else 'MISSES'} the goal "
            f"<= {MEMORY_GOAL}x CE ({limit:.0f} MB)"
        )
        cost = lambda r: r.get("cpu_s", r["time_s"])  # noqa: E731 - CPU time: steadier on a shared machine
        fitting = sorted((r for r in ours if r["peak_mb"] <= limit), key=cost)
        if len(ours) > 1:
            if fitting:
                best = fitting[0]
                line += (
                    f"; cheapest chunk within the goal: {best['chunk']} ({best['time_s']:.2f} s wall, "
                    f"{cost(best):.2f} s CPU, {best['peak_mb']:.0f} MB, "
                    f"chunk x vocab = {best['chunk'] * vocab / 2**20:.1f}M)"
                )
            else:
                line += "; no swept chunk size meets it"
        lines.append(line)
    return lines


def _print_table(rows: list[list[str]]) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [max(len(x) for x in col) for col in zip(HEADERS, *rows)]
        for row in [HEADERS, ["-" * w for w in widths], *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        return
    table = Table(title="KD loss alone: forward + backward")
    for i, h in enumerate(HEADERS):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*row)
    Console(width=max(120, len(HEADERS) * 14)).print(table)


def _machine_info(args) -> list[str]:
    import torch
    from _common import (  # benchmarks/ is on sys.path when this file runs as a script
        cpu_name,
        load_average,
    )

    cpu = cpu_name()
    return [
        f"- CPU: {cpu} ({os.cpu_count()} logical cores visible), torch.set_num_threads({args.threads})",
        f"- torch {torch.__version__}, Python {platform.python_version()}, {platform.system()} {platform.release()}",
        f"- Command: `{' '.join([os.path.relpath(sys.argv[0]) if sys.argv else 'kd_loss.py', *sys.argv[1:]])}`",
        f"- Sizes: batch {args.batch}, student hidden {args.hidden}, teacher hidden {args.teacher_hidden}, fp32; "
        f"time = median of {args.repeats} runs after {args.warmup} warm-up",
        "- Peak MB: growth of resident memory over a baseline taken after the inputs are allocated, one fresh "
        "process per row (kernel RSS high-water mark, reset via /proc/self/clear_refs; ru_maxrss as fallback). "
        "Includes the gradients of the student hidden states and lm_head weight. Tensor MB: peak of live tensor bytes "
        "in one extra run, from torch.profiler allocation events (allocator-independent).",
        *([f"- ours_chunked: candidate implementation from `{args.ours_impl}`"] if args.ours_impl else []),
        "- cpu s: median CPU time (user + system, all threads) of the same runs; less sensitive than wall time to "
        "other processes on the machine, though spinning OpenMP threads count in it",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M')}; load average (1/5/15 min) at start {args.load_start}, at end "
        f"{load_average()}: other processes on the machine slow the timings, never the memory columns",
    ]


def _write_markdown(path: str, args, rows: list[list[str]], verdicts: list[str], results: list[dict]) -> None:
    lines = ["# KD loss benchmark (forward + backward of the loss alone)", "", *_machine_info(args), ""]
    lines += ["| " + " | ".join(HEADERS) + " |", "|" + "|".join("---" for _ in HEADERS) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    lines += ["", *[f"- {v}" for v in verdicts]]
    notes = [f"- {r['method']} @ vocab {r['vocab']}: {r.get('skipped') or r.get('error')}" for r in results
             if "time_s" not in r]  # fmt: skip
    if notes:
        lines += ["", "Not measured:", *notes]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes (vocab 512, seq 64, 1 repeat) for a smoke test"
    )
    parser.add_argument("--seq", type=_int_list, default=[512, 1024], help="comma-separated sequence lengths")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--vocabs", type=_int_list, default=[32000, 128256], help="comma-separated vocab sizes")
    parser.add_argument("--hidden", type=int, default=512, help="student hidden size")
    parser.add_argument("--teacher-hidden", type=int, default=1024, help="teacher hidden size")
    parser.add_argument("--methods", type=lambda s: s.split(","), default=list(METHODS))
    parser.add_argument(
        "--chunk-sizes", type=_int_list, default=[], help="extra ours_chunked chunk sizes to sweep, e.g. 64,128,256"
    )
    parser.add_argument(
        "--ours-impl",
        help="python file defining fused_distillation_loss (same signature) to benchmark as ours_chunked instead of "
        "hf_distill's, e.g. a candidate optimisation",
    )
    parser.add_argument(
        "--no-tensor-peak", action="store_true", help="skip the extra profiled run that measures the tensor MB column"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per configuration")
    parser.add_argument("--markdown", help="also write the table as markdown (with machine info) to this path")
    parser.add_argument("--json", help="also write the raw results as JSON to this path")
    parser.add_argument("--from-json", help="print (and --markdown) the table of a saved --json file; runs nothing")
    args = parser.parse_args(argv)

    if args.worker:
        result = worker(json.loads(args.worker))
        print("RESULT " + json.dumps(result), flush=True)
        return 0

    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if args.quick:
        args.vocabs, args.seq, args.repeats = [512], [64], 1
        args.chunk_sizes = args.chunk_sizes or [16]

    from _common import (
        load_average,  # here, not at the top: a --worker process measures memory without it
    )

    args.load_start = load_average()
    results = []
    jobs = [] if args.from_json else _jobs(args)
    if args.from_json:
        with open(args.from_json) as f:
            results = json.load(f)
    started = time.perf_counter()
    for i, job in enumerate(jobs, 1):
        t0 = time.perf_counter()
        result = _run_job(job, args.timeout)
        results.append(result)
        shown = result.get("time_s")
        if shown is not None:
            status = f"{shown:.3f} s, {result['peak_mb']:.0f} MB"
        else:
            status = result.get("skipped") or result.get("error")
        print(
            f"[{i}/{len(jobs)}] {job['method']} vocab={job['vocab']} seq={job['seq']} "
            f"chunk={result.get('chunk', job['chunk'])}: {status} ({time.perf_counter() - t0:.0f} s wall)",
            file=sys.stderr,
            flush=True,
        )

    rows = _table_rows(results)
    verdicts = _verdicts(results)
    _print_table(rows)
    for line in _machine_info(args):
        print(line)
    for v in verdicts:
        print(v)
    print(f"(total {time.perf_counter() - started:.0f} s)")
    if args.markdown:
        _write_markdown(args.markdown, args, rows, verdicts, results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    failed = [r for r in results if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
