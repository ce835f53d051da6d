"""Prune SmolLM2-135M-Instruct into smaller students, then recover them: uniform vs importance pruning, SFT vs KD.

Students (``hf_distill.models.shrink``), sized by non-embedding parameters (the tied 49,152 x 576 embedding is kept):

``half``     20 of 30 layers, MLP 1536 -> 1024: ~1/2 of the teacher's non-embedding parameters
``quarter``  10 of 30 layers, MLP 1536 -> 1024: ~1/4
``half_wide``  all 30 layers, MLP 1536 -> 512: ~1/2 by width alone (Minitron's finding: width pruning keeps more)
``half_deep``  15 of 30 layers, MLP kept: ~1/2 by depth alone

Each is cut ``uniform`` (layers spread evenly, neurons by weight magnitude: the old default) or by importance on
calibration batches of the training set (``block_influence`` or ``skip_kl`` layers, neurons/heads/channels by
activation: Minitron). Phase 1 scores every cut before training; phase 2 retrains the chosen ones on the same GSM8K
training problems, in the same order (one order per ``--seeds``), for the same steps, with ``DistillationTrainer``
from a teacher-logit cache collected once (top-64): ``sft`` (alpha 1: CE on the gold tokens only; the teacher is not
asked), ``kd`` (forward KL, alpha 0: the teacher's distribution only) and ``mix`` (alpha 0.5).

Measured per arm on held-out GSM8K test answers (gold tokens only): CE, KL(teacher || student), top-1 agreement
with the teacher, and greedy exact match on a few test problems (the 135M teacher itself is weak at math). Usage::

    python benchmarks/prune_recover.py                     # ~40 min on 2 shared cores
    python benchmarks/prune_recover.py --steps 20 --arms half:importance:kd --heldout 8 --em 2   # smoke run
    python benchmarks/prune_recover.py --steps 300 --seeds 2 --arms half:importance:sft,half:importance:kd   # spread
    python benchmarks/prune_recover.py --steps 0 --arms half:importance:-,half_wide:importance:-,half_deep:importance:-
                                                           # phase 1 only: the init scores of three 1/2 shapes
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine_lines  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
SIZES = {"half": dict(num_layers=20, intermediate_size=1024), "quarter": dict(num_layers=10, intermediate_size=1024),
         "half_wide": dict(intermediate_size=512), "half_deep": dict(num_layers=15)}
CUTS = {"uniform": dict(layer_strategy="uniform", width_strategy="magnitude"),
        "block_influence": dict(layer_strategy="importance", layer_importance="block_influence",
                                width_strategy="activation"),
        "skip_kl": dict(layer_strategy="importance", layer_importance="skip_kl", width_strategy="activation")}
ALPHAS = {"sft": 1.0, "kd": 0.0, "mix": 0.5}
# Cut to fit ~40 min on 2 shared cores (a 135M forward on 1k tokens takes 5-20 s there): no uniform-KD and no mix arm
# by default, and skip_kl is only compared at the first size (the better metric is reused for the other size).
DEFAULT_ARMS = "half:uniform:sft,half:importance:sft,half:importance:kd,quarter:importance:sft,quarter:importance:kd"


def encode(tokenizer, question: str, answer: str, max_length: int) -> tuple[list[int], int]:
    """Chat-formatted ids of one problem and the number of prompt tokens (as TRL tokenises prompt-completion)."""
    user = [{"role": "user", "content": question}]
    prompt = tokenizer.apply_chat_template(user, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": answer}], tokenize=False)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
    return ids, min(len(tokenizer(prompt, add_special_tokens=False)["input_ids"]), len(ids))


def heldout_batches(rows: list[tuple[list[int], int]], batch_size: int = 8):
    """Right-padded batches with a (B, T-1) mask of the next-token positions whose label is an answer token."""
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = torch.zeros(len(chunk), width, dtype=torch.long)
        attention = torch.zeros(len(chunk), width, dtype=torch.long)
        loss = torch.zeros(len(chunk), width - 1, dtype=torch.bool)
        for i, (row, prompt) in enumerate(chunk):
            ids[i, :len(row)], attention[i, :len(row)] = torch.tensor(row), 1
            loss[i, prompt - 1:len(row) - 1] = True
        yield ids, attention, loss


@torch.no_grad()
def answer_logprobs(model, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, V) float16 log-probabilities at the answer tokens, and the (N,) gold next tokens."""
    model.eval()
    out, gold = [], []
    for ids, attention, loss in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(input_ids=ids, attention_mask=attention, use_cache=False).logits[:, :-1]
        out.append(logits[loss].float().log_softmax(-1).half())
        gold.append(ids[:, 1:][loss])
    return torch.cat(out), torch.cat(gold)


def scores(student_logprobs: torch.Tensor, gold: torch.Tensor, teacher_logprobs: torch.Tensor) -> dict:
    s, t = student_logprobs.float(), teacher_logprobs.float()
    ce = -s.gather(1, gold[:, None]).mean()
    kl = (t.exp() * (t - s)).sum(-1).mean()
    top1 = (s.argmax(-1) == t.argmax(-1)).float().mean()
    return {"ce": float(ce), "kl": float(kl), "top1": float(top1)}


def exact_match(model, tokenizer, problems: list[dict], max_new_tokens: int) -> float:
    from hf_distill.evaluation.generate import evaluate_reasoning

    if not problems:
        return float("nan")
    result = evaluate_reasoning(model, tokenizer, [p["question"] for p in problems], [p["answer"] for p in problems],
                                max_new_tokens=max_new_tokens, batch_size=len(problems))
    return result.accuracy


def by_arm(rows: list[dict]) -> dict[str, list[dict]]:
    """The rows grouped by arm, in first-seen order (one row per seed)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["arm"], []).append(row)
    return groups


def spread(group: list[dict], key: str) -> str:
    """``mean`` of one seed, or ``mean ± half-range`` across seeds."""
    values = [r[key] for r in group]
    mean = sum(values) / len(values)
    return f"{mean:.3f}" if len(values) == 1 else f"{mean:.3f} ± {(max(values) - min(values)) / 2:.3f}"


def non_embedding(model) -> int:
    embed = model.get_input_embeddings().weight
    unique = {id(p): p for p in model.parameters()}
    return sum(p.numel() for p in unique.values() if p is not embed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", default=DEFAULT_ARMS, help="size:cut:method,... (cut 'importance': the better of "
                        "block_influence/skip_kl by phase-1 KL at that size)")
    parser.add_argument("--steps", type=int, default=40, help="0: score the cuts before training only (phase 1)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--calib", type=int, default=32, help="calibration examples (from the training set)")
    parser.add_argument("--calib-skip", type=int, default=2,
                        help="of those, the ones skip_kl scores on (it runs the teacher once per layer)")
    parser.add_argument("--heldout", type=int, default=24, help="GSM8K test answers scored by CE/KL/top-1")
    parser.add_argument("--em", type=int, default=6, help="GSM8K test problems for greedy exact match")
    parser.add_argument("--em-tokens", type=int, default=160)
    parser.add_argument("--seeds", type=int, default=1,
                        help="train every arm with seeds 0..N-1 (the training order) and report the spread")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    opts = parser.parse_args()
    arms = [tuple(a.split(":")) for a in opts.arms.split(",")]
    for size, cut, method in arms:  # refuse a typo before the teacher runs
        if size not in SIZES or cut not in (*CUTS, "importance") or (opts.steps > 0 and method not in ALPHAS):
            parser.error(f"arm {size}:{cut}:{method}: size in {list(SIZES)}, cut in {[*CUTS, 'importance']}, "
                         f"method in {list(ALPHAS)} (any with --steps 0)")
    torch.set_num_threads(opts.threads)
    began = time.perf_counter()

    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_distill import (
        DistillationConfig,
        DistillationTrainer,
        collect_teacher_cache,
    )
    from hf_distill.data.reasoning import load_reasoning_dataset, to_prompt_completion
    from hf_distill.models.importance import calibration_batches
    from hf_distill.models.real import real_model_dir
    from hf_distill.models.shrink import ShrinkSpec, shrink_model
    from hf_distill.utils.device import fast_bf16_available

    teacher_dir = real_model_dir("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir, dtype=torch.float32).eval()
    train_raw = load_dataset("json", data_files=str(DATA / "train.jsonl"), split="train")
    test_raw = load_dataset("json", data_files=str(DATA / "test.jsonl"), split="train")
    n_train = opts.steps * opts.batch
    train = None if n_train == 0 else to_prompt_completion(load_reasoning_dataset(train_raw.select(range(n_train))),
                                                           tokenizer=tokenizer)
    calib_rows = [{"input_ids": encode(tokenizer, r["question"], r["answer"], 128)[0]}
                  for r in train_raw.select(range(opts.calib))]  # the first training problems
    calibration = calibration_batches(calib_rows, 8, tokenizer.pad_token_id)
    held = [encode(tokenizer, r["question"], r["answer"], opts.max_length)
            for r in test_raw.select(range(opts.heldout))]
    em_problems = [test_raw[i] for i in range(opts.em)]
    teacher_lp, gold = answer_logprobs(teacher, heldout_batches(held))
    rows = [{"arm": "teacher", "params_non_embedding_m": non_embedding(teacher) / 1e6,
             **scores(teacher_lp, gold, teacher_lp), "em": exact_match(teacher, tokenizer, em_problems,
                                                                        opts.em_tokens), "seconds": 0.0}]
    print(f"[{time.perf_counter() - began:.0f} s] held-out: {opts.heldout} GSM8K test answers, {gold.numel()} "
          f"tokens; teacher CE {rows[0]['ce']:.3f}, "
          f"EM {rows[0]['em']:.0%} on {opts.em}", flush=True)

    sizes = sorted({size for size, _, _ in arms}, key=list(SIZES).index)
    students, chosen = {}, {}
    skip_calibration = calibration_batches(calib_rows[:opts.calib_skip], 8, tokenizer.pad_token_id)
    for size in sizes:  # phase 1: every cut, before training
        cuts = {cut for s, cut, _ in arms if s == size} | {"uniform"}
        names = [c for c in CUTS if c in cuts or ("importance" in cuts and c != "uniform")]
        if chosen:  # the metric already chosen at the first size
            names = [c for c in names if c in ("uniform", *chosen.values())]
        for cut in names:
            t0 = time.perf_counter()
            examples = opts.calib_skip if cut == "skip_kl" else opts.calib
            spec = ShrinkSpec(**SIZES[size], **CUTS[cut], calibration_examples=examples)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                student, plan = shrink_model(teacher, spec, calibration=skip_calibration if cut == "skip_kl"
                                             else calibration)
            seconds = time.perf_counter() - t0
            result = scores(answer_logprobs(student, heldout_batches(held))[0], gold, teacher_lp)
            students[size, cut] = (student, plan)
            rows.append({"arm": f"{size}:{cut}:init", "params_non_embedding_m": non_embedding(student) / 1e6,
                         **result, "em": float("nan"), "seconds": seconds, "layers": plan.layers,
                         "activation_kept": plan.scores.get("activation_kept")})
            print(f"  {size:7s} {cut:15s} init CE {result['ce']:.3f} KL {result['kl']:.3f} top-1 {result['top1']:.3f}"
                  f"  layers {plan.layers}  ({seconds:.0f} s to prune)", flush=True)
        ranked = [c for c in names if c != "uniform"]
        if ranked and size not in chosen:
            chosen[size] = min(ranked, key=lambda c: next(r["kl"] for r in rows if r["arm"] == f"{size}:{c}:init"))
            print(f"  {size}: importance = {chosen[size]} (lower init KL)", flush=True)

    trained = arms if opts.steps > 0 else []  # --steps 0: phase 1 only
    with tempfile.TemporaryDirectory() as work:  # phase 2: recovery training
        common = dict(max_steps=opts.steps, per_device_train_batch_size=opts.batch, max_length=opts.max_length,
                      learning_rate=opts.lr, lr_scheduler_type="cosine", warmup_steps=max(1, opts.steps // 20),
                      weight_decay=0.0, report_to=[], save_strategy="no", logging_steps=max(1, opts.steps // 5),
                      seed=0, activation_checkpointing=False, dataloader_num_workers=0, use_cpu=True,
                      bf16=fast_bf16_available(), kd_loss="forward_kl", temperature=1.0)
        t0 = time.perf_counter()
        cache = Path(work) / "cache"
        if trained:
            collect_teacher_cache(teacher, train, str(cache), tokenizer,
                                  args=DistillationConfig(output_dir=str(Path(work) / "c"), **common), top_k=64,
                                  batch_size=8, teacher_dtype="bfloat16" if fast_bf16_available() else None)
            print(f"teacher cache: {n_train} problems, top-64, {time.perf_counter() - t0:.0f} s", flush=True)
        for (size, cut, method), seed in ((arm, seed) for arm in trained for seed in range(opts.seeds)):
            cut_name = chosen.get(size, cut) if cut == "importance" else cut
            base, plan = students[size, cut_name]
            student = AutoModelForCausalLM.from_config(base.config)
            student.load_state_dict(base.state_dict())
            student.generation_config = base.generation_config
            args = DistillationConfig(output_dir=str(Path(work) / f"{size}-{cut}-{method}-{seed}"),
                                      alpha=ALPHAS[method], **{**common, "seed": seed})
            t0 = time.perf_counter()
            DistillationTrainer(student, args, train_dataset=train, processing_class=tokenizer,
                                teacher_cache=str(cache)).train()
            seconds = time.perf_counter() - t0
            result = scores(answer_logprobs(student, heldout_batches(held))[0], gold, teacher_lp)
            em = exact_match(student, tokenizer, em_problems, opts.em_tokens)
            rows.append({"arm": f"{size}:{cut_name}:{method}", "seed": seed, **result, "em": em, "seconds": seconds,
                         "params_non_embedding_m": non_embedding(student) / 1e6})
            print(f"  {size:7s} {cut_name:15s} {method:4s} seed {seed} CE {result['ce']:.3f} KL {result['kl']:.3f} "
                  f"top-1 {result['top1']:.3f} EM {em:.0%}  ({seconds:.0f} s, {seconds / opts.steps:.2f} s/step)",
                  flush=True)
            del student

    print(f"\nSmolLM2-135M-Instruct -> pruned students; {opts.steps} steps x batch {opts.batch} x <= {opts.max_length} "
          f"tokens ({n_train} GSM8K train problems, the same order per seed), lr {opts.lr} cosine; "
          f"calibration {opts.calib} train problems; held-out {gold.numel()} answer tokens of {opts.heldout} test "
          f"problems; EM on {opts.em}; "
          f"total {time.perf_counter() - began:.0f} s, load {load_average()}")
    print(f"(trained arms: mean over {opts.seeds} seed(s), ± half the range across them)" if opts.seeds > 1 else "")
    print("| arm | non-emb params | held-out CE | KL(teacher‖student) | top-1 agree | exact match | train s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for arm, group in by_arm(rows).items():
        em = [r["em"] for r in group if not math.isnan(r["em"])]
        print(f"| {arm} | {group[0]['params_non_embedding_m']:.1f}M | {spread(group, 'ce')} | {spread(group, 'kl')} "
              f"| {spread(group, 'top1')} | {f'{sum(em) / len(em):.0%}' if em else '-'} | "
              f"{sum(r['seconds'] for r in group) / len(group):.0f} |")
    for line in machine_lines():
        print(line)
    if opts.json:
        opts.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
