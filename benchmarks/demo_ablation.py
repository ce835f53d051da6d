"""KD vs SFT on the demo's task: train one student arm from a finished `hf-distill demo` directory and print a row.

Reuses the demo's data, tokenizer and teacher; the student is the demo's (a shrink of the teacher) or a random-init
Llama of about the same size. Each call trains one arm, so arms can run side by side (one thread each) and seeds can
be compared pairwise. Not a test. Example (the README's demo findings)::

    hf-distill demo --output_dir demo_out
    for seed in 0 1 2; do
      OMP_NUM_THREADS=1 python benchmarks/demo_ablation.py --demo-dir demo_out --arm sft --seed $seed
      OMP_NUM_THREADS=1 python benchmarks/demo_ablation.py --demo-dir demo_out --arm kd \
          --kd-loss reverse_kl --alpha 0.8 --seed $seed
    done
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from _common import (
    make_demo_student,  # benchmarks/ is on sys.path when this file runs as a script
)
from datasets import load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from hf_distill.config import DistillationConfig
from hf_distill.data.reasoning import to_prompt_completion
from hf_distill.demo import DemoSettings, _training_args
from hf_distill.evaluation.generate import answer_agreement, evaluate_reasoning
from hf_distill.models.build import count_parameters
from hf_distill.trainer import DistillationTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo-dir", required=True, help="a finished `hf-distill demo --output_dir` directory")
    parser.add_argument("--arm", choices=["sft", "kd"], required=True)
    parser.add_argument("--init", choices=["shrink", "random"], default="shrink",
                        help="shrink: the demo's student cut out of the teacher; random: a 128x2 Llama of similar size")
    parser.add_argument("--kd-loss", default="reverse_kl")
    parser.add_argument("--alpha", type=float, default=0.8)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--n-train", type=int, default=None, help="train on the first N problems only")
    parser.add_argument("--seed", type=int, default=0, help="training seed (data order)")
    parser.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    parser.add_argument("--results", default=None, help="append the row as JSON to this file")
    args = parser.parse_args()

    root = Path(args.demo_dir)
    settings = replace(DemoSettings(), seed=args.seed)
    data = load_from_disk(str(root / "data" / "dataset"))
    tokenizer = AutoTokenizer.from_pretrained(root / "data" / "tokenizer")
    train = data["train"] if args.n_train is None else data["train"].select(range(args.n_train))
    train = to_prompt_completion(train)
    teacher = AutoModelForCausalLM.from_pretrained(root / "teacher")
    student = make_demo_student(tokenizer, teacher, args.seed, args.init)

    with tempfile.TemporaryDirectory() as out:
        common = _training_args(settings, Path(out), args.steps, settings.student_lr)
        common["bf16"] = common["bf16"] and not args.fp32
        began = time.perf_counter()
        if args.arm == "sft":
            trainer = SFTTrainer(student, SFTConfig(**common), train_dataset=train, processing_class=tokenizer)
        else:
            config = DistillationConfig(**common, kd_loss=args.kd_loss, alpha=args.alpha, temperature=args.temperature)
            trainer = DistillationTrainer(student, config, train_dataset=train, processing_class=tokenizer,
                                          teacher_model=teacher)
        trainer.train()
        seconds = time.perf_counter() - began

    questions, golds = list(data["test"]["question"]), list(data["test"]["answer"])
    student_eval = evaluate_reasoning(student, tokenizer, questions, golds, settings.max_new_tokens)
    teacher_eval = evaluate_reasoning(teacher, tokenizer, questions, golds, settings.max_new_tokens)
    row = {**{k: v for k, v in vars(args).items() if k not in ("demo_dir", "results")},
           "parameters": count_parameters(student), "accuracy": student_eval.accuracy,
           "agreement_with_teacher": answer_agreement(student_eval.answers, teacher_eval.answers),
           "teacher_accuracy": teacher_eval.accuracy, "train_seconds": round(seconds, 1)}
    print(json.dumps(row))
    if args.results:
        with open(args.results, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
