"""Distillation across tokenizers on real checkpoints: a Gemma-3-270M teacher (SentencePiece-style, 262,144 tokens)
and a student shrunk from SmolLM2-135M-Instruct (ByteLevel BPE, 49,152 tokens), on GSM8K text.

Arms, each in a fresh process (so peak RSS is the arm's own), all on the same examples, steps and seed:

``sft``     ``trl.SFTTrainer`` on the student alone (no teacher).
``uld``     ``DistillationTrainer(cross_tokenizer="uld")``: CE + Wasserstein-1 between sorted probabilities.
``align``   ``DistillationTrainer(cross_tokenizer="align")``: CE + span alignment (exact over the tokens both
            vocabularies spell alike, sorted-probability distance for the rest).
``teacher`` no training: the teacher's greedy answers on the test problems (what the students are compared with).

Each trained student reports its held-out CE (nats per answer token, teacher-forced, on ``--test`` GSM8K test
problems) and the agreement of its greedy final answers with the teacher's on ``--generate`` test problems. The data
is plain text ("Question: ...\\nAnswer: ..."; Gemma-3-270M has no chat template), the loss on the answer only. Step
time is the median of the Trainer's own steps after ``--warmup``.

``--memory`` measures the cross-tokenizer loss alone (forward + backward over ``--seq`` positions, all aligned, the
student's 576-wide hidden states and 49k head, the teacher's 640-wide states and 262k head) against plain CE over the
student's full logits: the peak resident-set growth (VmHWM reset through /proc/self/clear_refs), in a fresh process
each. Usage::

    python benchmarks/cross_tokenizer.py                     # ~25 min on 2 shared cores
    python benchmarks/cross_tokenizer.py --steps 5 --arms sft,align --no-memory
    python benchmarks/cross_tokenizer.py --only-memory
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import StepTimer, load_average, machine_lines  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
STUDENT_LAYERS = 10  # of SmolLM2's 30 (uniform layer drop, hf_distill.models.shrink)


def _plain_data(split: str, count: int):
    from datasets import load_dataset

    from hf_distill.data.reasoning import load_reasoning_dataset, to_prompt_completion

    raw = load_dataset("json", data_files=str(DATA / f"{split}.jsonl"), split=f"train[:{count}]")
    return to_prompt_completion(load_reasoning_dataset(raw), tokenizer=_NoTemplate())


class _NoTemplate:
    """Stands for a tokenizer without a chat template: the plain "Question: ...\\nAnswer:" format for both models."""

    chat_template = None


def held_out_ce(model, tokenizer, data, batch: int = 8) -> float:
    """Teacher-forced CE (nats) per answer token of ``data``'s completions after their prompts."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    model.eval()
    for start in range(0, len(data), batch):
        rows = data[start:start + batch]
        ids, labels = [], []
        for prompt, completion in zip(rows["prompt"], rows["completion"]):
            p = tokenizer(prompt)["input_ids"]
            full = tokenizer(prompt + completion)["input_ids"] + [tokenizer.eos_token_id]
            ids.append(full)
            labels.append([-100] * len(p) + full[len(p):])
        width = max(map(len, ids))
        pad = tokenizer.pad_token_id or 0
        input_ids = torch.tensor([r + [pad] * (width - len(r)) for r in ids])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids])
        target = torch.tensor([r + [-100] * (width - len(r)) for r in labels])
        with torch.no_grad():
            logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1].float()
        total += F.cross_entropy(logits.flatten(0, 1), target[:, 1:].flatten(), reduction="sum").item()
        count += int((target[:, 1:] != -100).sum())
    return total / max(count, 1)


def greedy_answers(model, tokenizer, questions: list[str], max_new_tokens: int) -> list[str | None]:
    from hf_distill.data.reasoning import plain_prompt
    from hf_distill.evaluation.answers import extract_answer
    from hf_distill.evaluation.generate import generate, leading_special_text

    prompts = [leading_special_text(tokenizer) + plain_prompt(q) for q in questions]
    texts, _ = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, batch_size=len(prompts))
    return [extract_answer(t) for t in texts]


def _arm(opts) -> dict:
    import torch
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from hf_distill import DistillationConfig, DistillationTrainer
    from hf_distill.models.gguf import load_causal_lm
    from hf_distill.models.real import real_model_dir
    from hf_distill.models.shrink import ShrinkSpec, shrink_model

    torch.set_num_threads(opts.threads)
    teacher_dir, student_dir = real_model_dir("gemma-3-270m"), real_model_dir("smollm2-135m-instruct")
    test = _plain_data("test", max(opts.test, opts.generate))
    questions = list(test["question"][:opts.generate])
    if opts.arm == "teacher":
        tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
        teacher = load_causal_lm(str(teacher_dir))
        began = time.perf_counter()
        answers = greedy_answers(teacher, tokenizer, questions, opts.max_new_tokens)
        return {"arm": "teacher", "answers": answers, "held_out_ce": held_out_ce(teacher, tokenizer,
                test.select(range(opts.test))), "seconds": time.perf_counter() - began}
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    train = _plain_data("train", opts.examples)
    torch.manual_seed(0)
    student, _ = shrink_model(load_causal_lm(str(student_dir)), ShrinkSpec(num_layers=STUDENT_LAYERS))
    steps = opts.warmup + opts.steps
    config = dict(output_dir=str(Path(opts.work) / opts.arm), max_steps=steps, per_device_train_batch_size=opts.batch,
                  max_length=opts.max_length, report_to=[], save_strategy="no", logging_steps=1, seed=0,
                  activation_checkpointing=False, dataloader_num_workers=0, use_cpu=True, bf16=opts.bf16,
                  learning_rate=opts.lr)
    timer = StepTimer()
    began = time.perf_counter()
    if opts.arm == "sft":
        trainer = SFTTrainer(student, SFTConfig(**config), train_dataset=train, processing_class=tokenizer,
                             callbacks=[timer])
    else:
        args = DistillationConfig(**config, cross_tokenizer=opts.arm, alpha=opts.alpha)
        trainer = DistillationTrainer(student, args, train_dataset=train, processing_class=tokenizer,
                                      teacher_model=str(teacher_dir), callbacks=[timer])
    setup = time.perf_counter() - began
    trainer.train()
    logs = [e for e in trainer.state.log_history if "kd_loss" in e]
    model = trainer.accelerator.unwrap_model(trainer.model).float()
    return {"arm": opts.arm, "step_s": statistics.median(timer.wall[opts.warmup:]),
            "cpu_s": statistics.median(timer.cpu[opts.warmup:]), "setup_s": setup,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "held_out_ce": held_out_ce(model, tokenizer, test.select(range(opts.test))),
            "answers": greedy_answers(model, tokenizer, questions, opts.max_new_tokens),
            "last_kd": logs[-1]["kd_loss"] if logs else None,
            "last_agree": logs[-1]["top1_agreement"] if logs else None}


def _memory(opts) -> dict:
    """Peak RSS growth of one forward + backward of the loss alone (see the module docstring)."""
    import gc

    import torch
    import torch.nn.functional as F

    from hf_distill.losses.cross_tokenizer import (
        CrossTokenizerSpec,
        SharedVocabulary,
        TeacherRows,
        cross_tokenizer_loss,
    )

    torch.set_num_threads(opts.threads)
    g = torch.Generator().manual_seed(0)
    seq, vs, vt, shared = opts.seq, 49152, 262144, 46025  # 46,025: the SmolLM2/Gemma-3 pairs of cross_tokenizer.vocabulary
    hidden = torch.randn(seq, 576, generator=g).requires_grad_()
    weight = (torch.randn(vs, 576, generator=g) * 0.02).requires_grad_()
    targets = torch.randint(0, vs, (seq,), generator=g)
    teacher = TeacherRows(torch.arange(seq), torch.randn(seq, 640, generator=g),
                          torch.randn(vt, 640, generator=g) * 0.02, None)
    vocab = SharedVocabulary.from_pairs(dict(zip(range(shared), torch.randperm(vt, generator=g)[:shared].tolist())),
                                        vs, vt)

    def step():
        if opts.method == "ce":
            return F.cross_entropy(hidden @ weight.T, targets)
        spec = CrossTokenizerSpec(opts.method, top_k=opts.top_k)
        return cross_tokenizer_loss(hidden, weight, None, teacher, targets, vocab, spec).loss

    step().backward()  # warm-up: thread pools, kernels
    hidden.grad = weight.grad = None
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    baseline = _status_kb("VmRSS")
    began = time.perf_counter()
    step().backward()
    seconds = time.perf_counter() - began
    return {"method": opts.method, "peak_mb": (_status_kb("VmHWM") - baseline) / 1024, "seconds": seconds}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _child(opts, **overrides) -> dict:
    keep = ("examples", "test", "generate", "batch", "max_length", "steps", "warmup", "threads", "lr", "alpha",
            "max_new_tokens", "seq", "top_k")
    command = [sys.executable, __file__, *[f"--{k.replace('_', '-')}={v}" for k, v in vars(opts).items() if k in keep],
               "--bf16" if opts.bf16 else "--no-bf16", *[f"--{k}={v}" for k, v in overrides.items()]]
    out = subprocess.run(command, capture_output=True, text=True,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{overrides} failed:\n{out.stderr[-4000:]}")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default="teacher,sft,uld,align")
    parser.add_argument("--examples", type=int, default=256, help="GSM8K training problems")
    parser.add_argument("--test", type=int, default=64, help="GSM8K test problems for the held-out CE")
    parser.add_argument("--generate", type=int, default=8, help="test problems answered greedily")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 autocast for the student and the teacher (default on)")
    parser.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--only-memory", action="store_true")
    parser.add_argument("--seq", type=int, default=512, help="positions of the --memory measurement")
    parser.add_argument("--top-k", type=int, default=256)
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.arm or opts.method:  # a child process: one measurement, one JSON line
        print("RESULT " + json.dumps(_arm(opts) if opts.arm else _memory(opts)), flush=True)
        return
    print("\n".join(machine_lines()))
    rows = {}
    if not opts.only_memory:
        with tempfile.TemporaryDirectory() as work:
            for arm in opts.arms.split(","):
                rows[arm] = _child(opts, arm=arm, work=work)
                print(f"  {arm:8s} {json.dumps(rows[arm])}", flush=True)
        print(f"\nGemma-3-270M teacher -> SmolLM2-135M-Instruct shrunk to {STUDENT_LAYERS}/30 layers; batch "
              f"{opts.batch} x <= {opts.max_length} tokens, {opts.steps} timed steps after {opts.warmup} (same data, "
              f"seed), lr {opts.lr:g}, alpha {opts.alpha:g}, {opts.threads} threads, bf16={opts.bf16}, load "
              f"{load_average()} (shared CPU: times are noisy)")
        teacher = rows.get("teacher", {}).get("answers")
        sft = rows.get("sft")
        print("| arm | held-out CE (nats/token) | answers = teacher's | s/step | vs SFT | peak RSS MB | last kd / top-1 |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for arm, row in rows.items():
            if arm == "teacher":
                print(f"| teacher (Gemma-3-270M, own tokenizer) | {row['held_out_ce']:.3f} | - | - | - | - | - |")
                continue
            agree = "-" if teacher is None else f"{sum(a is not None and a == b for a, b in zip(row['answers'], teacher))}/{len(teacher)}"
            ratio = f"{row['step_s'] / sft['step_s']:.2f}x" if sft else "-"
            kd = "-" if row["last_kd"] is None else f"{row['last_kd']:.3f} / {row['last_agree']:.1%}"
            print(f"| {arm} | {row['held_out_ce']:.3f} | {agree} | {row['step_s']:.2f} | {ratio} | "
                  f"{row['peak_rss_mb']:.0f} | {kd} |")
    if opts.memory or opts.only_memory:
        memory = {m: _child(opts, method=m) for m in ("ce", "uld", "align")}
        print(f"\nLoss alone, {opts.seq} positions, student 576 x 49,152, teacher 640 x 262,144 (top_k {opts.top_k}), "
              f"{opts.threads} threads; a dense teacher would hold {opts.seq * 262144 * 4 / 2**20:.0f} MB of logits")
        print("| loss | peak RSS growth MB | vs CE | fwd+bwd s | vs CE |")
        print("|---|---:|---:|---:|---:|")
        for method, row in memory.items():
            print(f"| {method} | {row['peak_mb']:.0f} | {row['peak_mb'] / memory['ce']['peak_mb']:.2f}x | "
                  f"{row['seconds']:.2f} | {row['seconds'] / memory['ce']['seconds']:.2f}x |")


if __name__ == "__main__":
    main()
