"""Reasoning-trace distillation vs answers only vs logit KD vs both, on the embedded task (issue 5).

    OMP_NUM_THREADS=1 python benchmarks/traces_vs_kd.py --demo-dir /tmp/demo_d --out /tmp/traces/bench

Reuses a trained demo run (``hf-distill demo --output_dir DIR``: its teacher, tokenizer and data). Every arm trains the
same student (same init, steps, batch, learning rate) on the demo's training problems:

* ``traces``: SFT on the teacher's verified traces (``collect_traces``: sampled, answer- and arithmetic-checked,
  de-duplicated);
* ``answers``: SFT on the gold final answers only (``#### N``, no rationale);
* ``kd``: logit KD (alpha) on the gold rationales, as ``hf-distill demo`` does;
* ``traces+kd``: the verified traces with logit KD from the live teacher on the same tokens;
* ``traces+curriculum`` (opt-in): the traces in easy-to-hard order by ``num_steps``.

It prints exact-match accuracy and Logic-Match (student's path vs the teacher's greedy path, and vs the gold
rationale) on the held-out split. Finished arms and traces are reused when rerun with the same --out.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch
from datasets import load_from_disk
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import SFTConfig, SFTTrainer

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.data.reasoning import to_prompt_completion
from hf_distill.evaluation.answers import extract_answer
from hf_distill.evaluation.generate import answer_agreement, evaluate_reasoning
from hf_distill.evaluation.logic_match import mean_logic_match
from hf_distill.models.build import ModelSize, build_llama
from hf_distill.traces import TraceCollator, TraceConfig, collect_traces

ARMS = ("traces", "answers", "kd", "traces+kd", "traces+curriculum")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-dir", default="demo_out", help="a finished `hf-distill demo` output directory")
    parser.add_argument("--out", default="traces_bench")
    parser.add_argument("--arms", default="traces,answers,kd,traces+kd", help=f"comma-separated, from {ARMS}")
    parser.add_argument("--problems", type=int, default=None, help="training problems (default: all)")
    parser.add_argument("--num-samples", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--student", default="128,2,4", help="hidden,layers,heads")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--alpha", type=float, default=0.8, help="CE weight of the KD arms")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--keep-unverified", action="store_true",
                        help="train on every trace, verified or not (smoke runs with an untrained toy teacher)")
    return parser.parse_args(argv)


def training_args(args, output_dir: Path, **extra) -> dict:
    return dict(
        output_dir=str(output_dir), max_steps=args.steps, per_device_train_batch_size=args.batch_size,
        learning_rate=args.lr, lr_scheduler_type="cosine", warmup_steps=max(1, args.steps // 20), weight_decay=0.0,
        logging_steps=max(1, args.steps // 10), save_strategy="no", report_to=[], seed=args.seed,
        use_cpu=not torch.cuda.is_available(), bf16=False, dataloader_num_workers=0,
        # the TraceCollator tokenizes the text columns itself
        remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True}, **extra,
    )


def train_arm(arm, args, tokenizer, teacher, data, traces, out: Path) -> float:
    size = ModelSize(*(int(v) for v in args.student.split(",")))
    student = build_llama(tokenizer, size, seed=args.seed + 1)  # the demo's student init
    collator = TraceCollator(tokenizer)
    run = out / "run"
    if arm == "answers":
        answers = data.map(lambda ex: {"answer": f"#### {extract_answer(ex['answer'])}"})
        train = to_prompt_completion(answers)
    elif arm == "kd":
        train = to_prompt_completion(data)
    else:
        train = traces
    began = time.perf_counter()
    if arm in ("kd", "traces+kd", "traces+curriculum"):
        extra = {"curriculum": "num_steps"} if arm == "traces+curriculum" else {}
        alpha = 1.0 if arm == "traces+curriculum" else args.alpha
        config = DistillationConfig(**training_args(args, run, **extra), alpha=alpha)
        trainer = DistillationTrainer(student, config, train_dataset=train, processing_class=tokenizer,
                                      data_collator=collator, teacher_model=teacher)
    else:
        trainer = SFTTrainer(student, SFTConfig(**training_args(args, run)), train_dataset=train,
                             processing_class=tokenizer, data_collator=collator)
    trainer.train()
    seconds = time.perf_counter() - began
    trainer.save_model(str(out))
    shutil.rmtree(run, ignore_errors=True)
    return seconds


def main(argv=None) -> None:
    args = parse_args(argv)
    demo, out = Path(args.demo_dir), Path(args.out)
    data = load_from_disk(str(demo / "data" / "dataset"))
    tokenizer = AutoTokenizer.from_pretrained(demo / "data" / "tokenizer")
    teacher = AutoModelForCausalLM.from_pretrained(demo / "teacher")
    train = data["train"].select(range(args.problems)) if args.problems else data["train"]

    began = time.perf_counter()
    trace_config = TraceConfig(num_samples=args.num_samples, temperature=args.temperature, seed=args.seed,
                               max_new_tokens=args.max_new_tokens, batch_size=64, shard_size=512,
                               keep_only_verified=not args.keep_unverified)
    traces = collect_traces(teacher, tokenizer, train, out / "trace_data", trace_config)
    trace_seconds = time.perf_counter() - began

    timings = json.loads((out / "timings.json").read_text()) if (out / "timings.json").exists() else {}
    for arm in args.arms.split(","):
        if arm not in ARMS:
            raise SystemExit(f"unknown arm {arm!r}; choose from {ARMS}")
        if not (out / arm / "model.safetensors").exists():
            print(f"training {arm} ...", flush=True)
            timings[arm] = train_arm(arm, args, tokenizer, teacher, train, traces, out / arm)
            (out / "timings.json").write_text(json.dumps(timings))

    test = data["test"]
    questions, golds = list(test["question"]), list(test["answer"])
    reference = evaluate_reasoning(teacher, tokenizer, questions, golds, args.max_new_tokens)
    rows = {"teacher": reference}
    for arm in args.arms.split(","):
        model = AutoModelForCausalLM.from_pretrained(out / arm)
        rows[arm] = evaluate_reasoning(model, tokenizer, questions, golds, args.max_new_tokens)

    results = {"traces": {"problems": len(train), "kept": len(traces),
                          "problems_covered": len(set(traces["problem_id"])), "seconds": trace_seconds}, "arms": {}}
    print(f"\ntraces: {len(traces)} kept from {len(train)} problems x {args.num_samples} samples "
          f"({results['traces']['problems_covered']} problems covered), {trace_seconds:.0f} s\n")
    header = f"{'arm':<20}{'exact match':>12}{'LM vs teacher':>15}{'LM vs gold':>12}{'agrees w/ T':>13}{'train s':>9}"
    print(header + "\n" + "-" * len(header))
    for name, ev in rows.items():
        row = {
            "accuracy": ev.accuracy,
            "logic_match_teacher": mean_logic_match(ev.generations, reference.generations),
            "logic_match_gold": mean_logic_match(ev.generations, golds),
            "agreement_with_teacher": answer_agreement(ev.answers, reference.answers),
            "train_seconds": timings.get(name, 0.0),
        }
        results["arms"][name] = row
        print(f"{name:<20}{row['accuracy']:>12.1%}{row['logic_match_teacher']:>15.3f}{row['logic_match_gold']:>12.3f}"
              f"{row['agreement_with_teacher']:>13.1%}{row['train_seconds']:>9.0f}")
    print(f"\n{len(questions)} held-out problems; +-{100 * (0.25 / len(questions)) ** 0.5:.1f} points is one standard "
          "error of an accuracy near 50%.")
    (out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
