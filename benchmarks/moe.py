"""MoE vs dense students at equal active parameters, distilled from the same dense teacher on the embedded task.

The demo's setting, smaller: arithmetic word problems (``hf_distill.data.arithmetic``, the demo's generator
settings), the demo's byte-level BPE, a Llama teacher of the demo's shape at ~1/2 width (128 x 4; ``--demo_sizes``:
the demo's 192 x 4) trained here by SFT (or ``--teacher DIR``, e.g. a finished demo's ``teacher/`` with ``--tokenizer
DIR/data/tokenizer``). Every student starts from the same shrink of the teacher (64 x 4, MLP 160, 2 heads; the
demo's 96 / 224 with ``--demo_sizes``), and is distilled the same way for the same steps on the same problems
(``DistillationTrainer``: forward KL to the live teacher + CE on the gold answer, alpha 0.5):

``dense``            the shrink itself
``moe-4x-half-top2`` upcycled (``upcycle_to_mixtral``): 4 experts, each a slice of half its MLP's neurons, 2 per
                     token -> the same active MLP width (2 x 80 = 160) as ``dense``; 2x its MLP parameters in all
``moe-4x-copy-top1`` upcycled with 4 copies of its whole MLP, 1 per token (sparse upcycling: starts as ``dense``
                     exactly) -> the same active width, 4x the MLP parameters

Each MoE student carries Mixtral's load-balancing loss (``attach_load_balancing_loss``, coef 0.01). Reported:
greedy exact match on held-out problems (with its standard error), held-out CE and KL(teacher || student) per
answer token, total and active parameters (``parameter_counts``: a token's unrouted experts excluded), train time.

    python benchmarks/moe.py                       # ~5 min on 2 idle cores (18 min on busy ones)
    python benchmarks/moe.py --steps 600 --teacher demo_out/teacher --tokenizer demo_out/data/tokenizer
    python benchmarks/moe.py --quick               # seconds: the pipeline at toy sizes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine_lines  # noqa: E402

from hf_distill.models.build import ModelSize  # noqa: E402
from hf_distill.models.shrink import ShrinkSpec  # noqa: E402

# Default sizes: the demo's shapes at ~1/2 width (teacher 128 x 4; student 64 x 4, MLP 160, 2 heads), so that the
# whole run takes minutes on 2 shared cores; --demo_sizes for the demo's own.
SMALL_TEACHER = ModelSize(hidden_size=128, num_layers=4, num_heads=4)
SMALL_STUDENT = ShrinkSpec(hidden_size=64, intermediate_size=160, num_attention_heads=2, num_key_value_heads=2)
ARMS = {"dense": None, "moe-4x-half-top2": dict(num_experts=4, top_k=2, expert_fraction=0.5),
        "moe-4x-copy-top1": dict(num_experts=4, top_k=1, expert_fraction=1.0)}


def demo_task(settings, n_train: int, n_test: int, tokenizer_dir: str | None = None):
    """The demo's problems (its generator settings and seed) and its tokenizer (trained on them unless given)."""
    from transformers import AutoTokenizer

    from hf_distill.data.arithmetic import make_arithmetic_dataset
    from hf_distill.data.tokenizer import train_tokenizer

    data = make_arithmetic_dataset(n_train=n_train, n_test=n_test, seed=settings.seed, max_steps=settings.max_steps,
                                   min_steps=settings.min_steps, max_value=settings.max_value)
    if tokenizer_dir:
        return data, AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = list(data["train"]["question"]) + list(data["train"]["answer"])
    return data, train_tokenizer(texts, settings.vocab_size)


def demo_llama(tokenizer, size, seed: int):
    """A randomly initialised Llama of the demo's ``size`` (the recipe's teacher: 192 x 4, MLP 512, tied)."""
    from hf_distill.models.build import build_llama

    return build_llama(tokenizer, size, seed=seed)


def train_sft(model, tokenizer, train, settings, out: Path, steps: int, lr: float) -> float:
    """Plain SFT (TRL's SFTTrainer, the demo's schedule); returns the training seconds."""
    from trl import SFTConfig, SFTTrainer

    from hf_distill.data.reasoning import to_prompt_completion
    from hf_distill.demo import _training_args

    trainer = SFTTrainer(model, SFTConfig(**_training_args(settings, out, steps, lr)),
                         train_dataset=to_prompt_completion(train), processing_class=tokenizer)
    began = time.perf_counter()
    trainer.train()
    return time.perf_counter() - began


def make_student(arm: str, dense_student):
    from hf_distill.models.moe import attach_load_balancing_loss, upcycle_to_mixtral

    spec = ARMS[arm]
    if spec is None:
        return dense_student
    width = round(dense_student.config.intermediate_size * spec["expert_fraction"])
    student = upcycle_to_mixtral(dense_student, spec["num_experts"], spec["top_k"], expert_intermediate_size=width,
                                 router_aux_loss_coef=0.01)
    attach_load_balancing_loss(student)
    return student


def distil(student, teacher, tokenizer, train, test, settings, out: Path, steps: int) -> dict:
    """The demo's logit KD (forward KL + alpha CE on the gold answers) for ``steps``; held-out CE/KL and seconds."""
    from hf_distill.config import DistillationConfig
    from hf_distill.data.reasoning import to_prompt_completion
    from hf_distill.demo import _training_args
    from hf_distill.trainer import DistillationTrainer

    args = DistillationConfig(**_training_args(settings, out, steps, settings.student_lr), kd_loss=settings.kd_loss,
                              temperature=settings.temperature, alpha=settings.alpha,
                              per_device_eval_batch_size=settings.batch_size,
                              # MoE: the load-balancing loss comes from attach_load_balancing_loss's hook; TRL's own
                              # (output_router_logits) stays off, or it would also break batched generate
                              router_aux_loss_coef=0.0 if getattr(student.config, "num_local_experts", 0) else None)
    trainer = DistillationTrainer(student, args, train_dataset=to_prompt_completion(train),
                                  eval_dataset=to_prompt_completion(test), processing_class=tokenizer,
                                  teacher_model=teacher)
    began = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - began
    held_out = trainer.evaluate()
    return {"train_s": seconds, "held_out_ce": held_out["eval_ce_loss"], "held_out_kl": held_out["eval_kd_loss"],
            "aux_loss": float(getattr(trainer.model, "last_aux_loss", float("nan")))}


def accuracy(model, tokenizer, test, max_new_tokens: int) -> tuple[float, float]:
    from hf_distill.evaluation.generate import evaluate_reasoning

    result = evaluate_reasoning(model, tokenizer, list(test["question"]), list(test["answer"]), max_new_tokens)
    n = len(test)
    return result.accuracy, math.sqrt(result.accuracy * (1 - result.accuracy) / max(n - 1, 1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default=",".join(ARMS), help=f"of {', '.join(ARMS)}")
    parser.add_argument("--steps", type=int, default=200, help="distillation steps of every student")
    parser.add_argument("--teacher_steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--demo_sizes", action="store_true",
                        help="the demo's own sizes (teacher 192 x 4, student 96 x 4 with MLP 224): ~4x the compute")
    parser.add_argument("--teacher", help="a trained teacher folder (default: train the demo's teacher here)")
    parser.add_argument("--tokenizer", help="its tokenizer folder (a demo run's data/tokenizer)")
    parser.add_argument("--n_test", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", default=None)
    parser.add_argument("--quick", action="store_true", help="toy sizes: 3 steps, 8 test problems")
    opts = parser.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    from hf_distill.demo import DemoSettings
    from hf_distill.models.moe import parameter_counts
    from hf_distill.models.shrink import shrink_model

    torch.set_num_threads(opts.threads)
    settings = replace(DemoSettings(), batch_size=opts.batch, teacher=SMALL_TEACHER, student=SMALL_STUDENT)
    if opts.demo_sizes:
        settings = replace(DemoSettings(), batch_size=opts.batch)
    if opts.quick:
        settings = DemoSettings.fast()
        opts.steps, opts.teacher_steps, opts.n_test = 3, 3, 8
    began = time.perf_counter()
    n_teacher, n_student = settings.teacher_examples, settings.unlabelled
    data, tokenizer = demo_task(settings, n_teacher + n_student, opts.n_test, opts.tokenizer)
    teacher_data, student_data = data["train"].select(range(n_teacher)), data["train"].select(
        range(n_teacher, n_teacher + n_student))
    test = data["test"]
    work = Path(tempfile.mkdtemp(prefix="moe-bench-"))
    rows = []
    if opts.teacher:
        teacher = AutoModelForCausalLM.from_pretrained(opts.teacher)
        teacher_seconds = 0.0
    else:
        teacher = demo_llama(tokenizer, settings.teacher, settings.seed)
        teacher_seconds = train_sft(teacher, tokenizer, teacher_data, settings, work / "teacher", opts.teacher_steps,
                                    settings.teacher_lr)
    teacher.eval()
    acc, se = accuracy(teacher, tokenizer, test, settings.max_new_tokens)
    counts = parameter_counts(teacher)
    rows.append({"arm": "teacher (dense, SFT)", "total": counts["total"], "active": counts["active"],
                 "accuracy": acc, "accuracy_se": se, "held_out_ce": float("nan"), "held_out_kl": 0.0,
                 "train_s": teacher_seconds, "steps": 0 if opts.teacher else opts.teacher_steps})
    print(f"[{time.perf_counter() - began:.0f} s] teacher: accuracy {acc:.1%} on {len(test)} held-out problems",
          flush=True)
    for arm in opts.arms.split(","):
        dense_student = shrink_model(teacher, settings.student)[0]
        student = make_student(arm, dense_student)
        counts = parameter_counts(student)
        result = distil(student, teacher, tokenizer, student_data, test, settings, work / arm, opts.steps)
        acc, se = accuracy(student, tokenizer, test, settings.max_new_tokens)
        rows.append({"arm": arm, **counts, "accuracy": acc, "accuracy_se": se, "steps": opts.steps, **result})
        print(f"[{time.perf_counter() - began:.0f} s] {arm}: accuracy {acc:.1%}, held-out CE "
              f"{result['held_out_ce']:.3f}, {counts['active'] / 1e3:.0f}k active of {counts['total'] / 1e3:.0f}k "
              f"({result['train_s']:.0f} s)", flush=True)

    print(f"\n# MoE vs dense students, equal active parameters: the demo's task ({n_student} problems the teacher "
          f"never saw, gold answers + KD from the teacher, alpha {settings.alpha}, {opts.steps} steps x batch "
          f"{settings.batch_size}, lr {settings.student_lr} cosine), {len(test)} held-out problems; "
          f"{time.perf_counter() - began:.0f} s, load average {load_average()}")
    print("| student | total params | active params | exact match (± s.e.) | held-out CE | KL(teacher‖student) | "
          "train s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        ce = "-" if math.isnan(row["held_out_ce"]) else f"{row['held_out_ce']:.3f}"
        kl = "-" if row["arm"].startswith("teacher") else f"{row['held_out_kl']:.3f}"
        print(f"| {row['arm']} | {row['total'] / 1e3:.0f}k | {row['active'] / 1e3:.0f}k | {row['accuracy']:.1%} ± "
              f"{row['accuracy_se']:.1%} | {ce} | {kl} | {row['train_s']:.0f} |")
    for line in machine_lines():
        print(line)
    if opts.json:
        Path(opts.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
