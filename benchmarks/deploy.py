"""From student to device: GGUF size per quantisation, speed and latency through llama.cpp's server against
``model.generate``, and how often the quantised file still gives the float model's greedy answer.

Students (``--models``, comma-separated):

``smollm2-half``  SmolLM2-135M-Instruct pruned by importance to ~1/2 of its non-embedding parameters (20 of 30 layers
                  by block influence, MLP 1536 -> 1024 by activation; 8 GSM8K training problems of calibration;
                  not retrained: recovery is ``prune_recover.py``'s subject). Asked GSM8K test problems; it ends its
                  turn after ~2 tokens, so its answers are compared with stop tokens banned (``--ban_stop``).
``demo-student``  the demo's student shape (96 x 4, MLP 224, 2 heads, its 512-token BPE), trained here by SFT for
                  ``--demo_steps`` on the demo's problems (or a finished demo's ``student-kd`` with ``--demo_dir``).
                  Asked the task's held-out problems (GSM8K format; GSM8K itself is out of its vocabulary's world).
``smollm2``       SmolLM2-135M-Instruct itself; or any student folder.

For each GGUF type (default f16, q8_0, q4_k_m) the student is exported (`hf_distill.deploy.export_gguf`) and:

* **agreement**, run by llama.cpp itself in this process (`hf_distill.deploy.roundtrip.LlamaCppRunner`: argmax of
  its logits, no sampler): the float32 model's greedy answer (``model.generate``, batch 1) against the file's, as
  whole text, as final answer (`extract_answer`), and teacher-forced (the share of the float answer's tokens the file
  also ranks first given the float answer's prefix: per-token fidelity, free of the cascade after one flip);
* **logit error** along that path, mean |logit difference| to float32: llama.cpp (what users run: quantised types
  also round activations to 8-bit blocks) and transformers' dequantised reload (what the stored weights lost);
* **speed**, behind ``llama_cpp.server`` on a loopback port, by `hf_distill.deploy.bench_serve` (streamed requests,
  the server's default sampling) at each concurrency level, against ``model.generate``'s tokens/s at batch 1.

    python benchmarks/deploy.py                                   # est. ~8 min on 2 idle cores
    python benchmarks/deploy.py --models stages/s2/model --problems 16
    python benchmarks/deploy.py --quick                           # a tiny random model, seconds

On a shared CPU wall times swing with the other processes' load: the ratios between rows of one run are what to
read.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import load_average, machine_lines  # noqa: E402

GSM8K = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"
GSM8K_TEST = GSM8K / "test.jsonl"


def questions(path: Path, count: int) -> list[str]:
    if path.is_file():
        return [json.loads(line)["question"] for line in path.read_text().splitlines()[:count]]
    from hf_distill.data.arithmetic import (
        make_arithmetic_dataset,  # no GSM8K copy: the embedded task
    )

    return list(make_arithmetic_dataset(n_train=0, n_test=count, seed=1)["test"]["question"])


def tiny_student(folder: Path) -> tuple[Path, list[str]]:
    from hf_distill.data.arithmetic import make_arithmetic_dataset
    from hf_distill.data.tokenizer import train_tokenizer
    from hf_distill.models.build import random_llama

    data = make_arithmetic_dataset(n_train=64, n_test=4, seed=0)
    tokenizer = train_tokenizer(data["train"]["question"], vocab_size=512)
    model = random_llama(0, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, list(data["test"]["question"])


def smollm2_half(folder: Path, calibration: int = 8) -> Path:
    """SmolLM2-135M-Instruct cut to ~1/2 by importance (as ``prune_recover.py``'s ``half:importance`` arm)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_distill.models.importance import calibration_batches
    from hf_distill.models.real import real_model_dir
    from hf_distill.models.shrink import ShrinkSpec, shrink_model

    if (folder / "config.json").is_file():
        return folder
    source = real_model_dir("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(source)
    teacher = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
    rows = []
    for line in (GSM8K / "train.jsonl").read_text().splitlines()[:calibration]:
        problem = json.loads(line)
        chat = [{"role": "user", "content": problem["question"]}, {"role": "assistant", "content": problem["answer"]}]
        ids = tokenizer(tokenizer.apply_chat_template(chat, tokenize=False), add_special_tokens=False).input_ids
        rows.append({"input_ids": ids[:96]})
    spec = ShrinkSpec(num_layers=20, intermediate_size=1024, layer_strategy="importance",
                      layer_importance="block_influence", width_strategy="activation", calibration_examples=calibration)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        student, plan = shrink_model(teacher, spec, calibration=calibration_batches(rows, 8, tokenizer.pad_token_id))
    student.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    print(f"  smollm2-half: kept layers {plan.layers}", flush=True)
    return folder


def demo_student(folder: Path, steps: int, n_test: int, seed: int = 0) -> tuple[Path, list[str], float]:
    """The demo's student shape trained by SFT on the demo's problems; its held-out questions and accuracy."""
    from moe import demo_llama, demo_task, train_sft

    from hf_distill.demo import DemoSettings
    from hf_distill.evaluation.generate import evaluate_reasoning
    from hf_distill.models.build import ModelSize

    settings = DemoSettings()
    data, tokenizer = demo_task(settings, settings.teacher_examples, n_test)
    shape = settings.student
    model = demo_llama(tokenizer, ModelSize(hidden_size=shape.hidden_size, num_layers=settings.teacher.num_layers,
                                            num_heads=shape.num_attention_heads,
                                            num_kv_heads=shape.num_key_value_heads,
                                            intermediate_size=shape.intermediate_size), seed)
    train_sft(model, tokenizer, data["train"], settings, folder / "run", steps, settings.teacher_lr)
    test = data["test"]
    accuracy = evaluate_reasoning(model, tokenizer, list(test["question"]), list(test["answer"]),
                                  settings.max_new_tokens).accuracy
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder, list(test["question"]), accuracy


def tensor_types(gguf: Path) -> str:
    """The file's matrix types by count ("q5_0 x150, q6_k x31"): llama.cpp keeps a wider type for rows that are not
    a multiple of the block size (256 for k-quants: SmolLM2's 576-wide rows are not), so q4_k_m is not all q4_k."""
    from collections import Counter

    import gguf as gguf_package

    counts = Counter(t.tensor_type.name.lower() for t in gguf_package.GGUFReader(str(gguf)).tensors
                     if len(t.shape) > 1)
    return ", ".join(f"{name} x{n}" for name, n in counts.most_common())


def mean_abs_logit_error(reference: list, other: list) -> float:
    return statistics.fmean(float(abs(a - b).mean()) for a, b in zip(reference, other, strict=True))


def float_reference(model, tokenizer, prompts: list[str], max_new_tokens: int, banned: set[int] = frozenset()):
    """Greedy float32 answers at batch 1 (ids, text), their tokens/s, and the float logits along each answer."""
    import torch

    from hf_distill.deploy.roundtrip import greedy_from_ids, prompt_ids

    pad = tokenizer.pad_token_id or tokenizer.eos_token_id
    greedy_from_ids(model, prompt_ids(tokenizer, prompts[0]), 4, pad)  # warm-up
    ids, answers, speeds, logits = [], [], [], []
    for prompt in prompts:
        prompt_tokens = prompt_ids(tokenizer, prompt)
        start = time.perf_counter()
        answer = greedy_from_ids(model, prompt_tokens, max_new_tokens, pad, banned)
        speeds.append(len(answer) / (time.perf_counter() - start))
        ids.append(prompt_tokens)
        answers.append(answer)
        with torch.no_grad():
            full = torch.tensor([prompt_tokens + answer[:-1]])
            logits.append(model(full).logits[0, len(prompt_tokens) - 1 :].numpy())  # (len(answer), V)
    return ids, answers, statistics.median(speeds), logits


def reload_logit_error(gguf: Path, ids: list, answers: list, reference_logits: list) -> float:
    import torch

    from hf_distill.models.gguf import load_gguf_model

    model = load_gguf_model(str(gguf.parent), gguf.name)
    with torch.no_grad():
        logits = [model(torch.tensor([i + a[:-1]])).logits[0, len(i) - 1 :].numpy() for i, a in zip(ids, answers)]
    return mean_abs_logit_error(reference_logits, logits)


def measure_model(name: str, model_dir: Path, prompts_questions: list[str], opts, work: Path, notes: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_distill.deploy import bench_serve, export_gguf, serving
    from hf_distill.deploy.roundtrip import LlamaCppRunner, agreement, stop_token_ids
    from hf_distill.evaluation.answers import extract_answer
    from hf_distill.evaluation.generate import chat_prompts
    from hf_distill.models.build import count_parameters

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = chat_prompts(tokenizer, prompts_questions)
    stops = stop_token_ids(model, tokenizer)
    banned = stops if opts.ban_stop or name == "smollm2-half" else set()  # the unrecovered shrink stops at once
    ids, reference, generate_speed, reference_logits = float_reference(model, tokenizer, prompts, opts.answer_tokens,
                                                                       banned)
    reference_text = [tokenizer.decode(a, skip_special_tokens=True) for a in reference]
    reference_answers = [extract_answer(t) for t in reference_text]
    result = {"model": name, "parameters": count_parameters(model), **notes,
              "bytes": sum(p.stat().st_size for p in model_dir.glob("*.safetensors")),
              "generate_tokens_per_second": generate_speed, "answer_tokens": statistics.fmean(map(len, reference)),
              "formats": []}
    del model
    n_ctx = max(map(len, ids)) + opts.answer_tokens + 16
    levels = tuple(int(x) for x in opts.concurrency.split(","))
    for quant in opts.quants.split(","):
        start = time.perf_counter()
        gguf = export_gguf(model_dir, work / f"{name}.{quant}.gguf", quant)
        export_seconds = time.perf_counter() - start
        runner = LlamaCppRunner(gguf, n_ctx=n_ctx, n_threads=opts.threads)
        try:
            same_ids = [runner.tokenize(p) == i for p, i in zip(prompts, ids)]
            other = [runner.greedy(i, opts.answer_tokens, stops, banned) for i in ids]
            forced = [runner.forced_top1(i, a, banned) for i, a in zip(ids, reference)]
            cpp_logits = [runner.logits(i + a[:-1])[len(i) - 1 :] for i, a in zip(ids, reference)]
        finally:
            runner.close()
        agreed = agreement(reference, other, forced, engine="llama.cpp")
        texts = [tokenizer.decode(o, skip_special_tokens=True) for o in other]
        row = {"format": quant, "bytes": gguf.stat().st_size, "export_seconds": export_seconds,
               "tensor_types": tensor_types(gguf),
               "same_prompt_tokens": all(same_ids), **agreed.as_dict(),
               "same_answer": sum(extract_answer(t) == r for t, r in zip(texts, reference_answers)) / len(prompts),
               "logit_error_llama_cpp": mean_abs_logit_error(reference_logits, cpp_logits),
               "logit_error_reload": reload_logit_error(gguf, ids, reference, reference_logits) if opts.reload
               else None}
        with serving(gguf, n_threads=opts.threads, n_ctx=2048 if name.startswith("smollm2") else 512) as server:
            # stop tokens banned (standard logit_bias): every timed request produces max_tokens tokens, whatever
            # the model's answers; the agreement above is where the answers matter
            bench = bench_serve(server.url, prompts_questions, levels, opts.max_tokens, opts.requests,
                                model=server.model, progress=False,
                                extra_body={"logit_bias": {str(t): -100 for t in stops}})
        row["levels"] = [b.as_dict() for b in bench]
        result["formats"].append(row)
        print(f"  {name} {quant}: {row['bytes'] / 1e6:.1f} MB, same text {agreed.exact:.0%}, forced "
              f"{agreed.forced:.1%}, served {bench[0].tokens_per_second:.0f} tokens/s at 1", flush=True)
    return result


def print_tables(results: list[dict], opts) -> None:
    print("\n| student | format | file | vs fp32 | same greedy text | same final answer | teacher-forced top-1 | "
          "mean abs logit error: llama.cpp / reload | matrices |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for res in results:
        print(f"| {res['model']} ({res['parameters'] / 1e6:.1f}M) | safetensors fp32 | {res['bytes'] / 1e6:.1f} MB | "
              f"1.00x | - | - | - | - | f32 |")
        for row in res["formats"]:
            reload = "-" if row["logit_error_reload"] is None else f"{row['logit_error_reload']:.3f}"
            print(f"| {res['model']} | GGUF {row['format']} | {row['bytes'] / 1e6:.1f} MB | "
                  f"{row['bytes'] / res['bytes']:.2f}x | {row['exact']:.0%} | {row['same_answer']:.0%} | "
                  f"{row['forced']:.1%} | {row['logit_error_llama_cpp']:.3f} / {reload} | {row['tensor_types']} |")
    print(f"\n| student | format | concurrent | TTFT p50 | latency p50 / p95 | tokens/s per request | vs generate | "
          f"tokens/s total |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for res in results:
        print(f"| {res['model']} | fp32 `model.generate` (batch 1) | 1 | - | - | "
              f"{res['generate_tokens_per_second']:.1f} | 1.00x | - |")
        for row in res["formats"]:
            for level in row["levels"]:
                print(f"| {res['model']} | GGUF {row['format']} | {level['concurrency']} | "
                      f"{level['ttft_p50'] * 1e3:.0f} ms | {level['latency_p50']:.2f} / {level['latency_p95']:.2f} s |"
                      f" {level['tokens_per_second']:.1f} | "
                      f"{level['tokens_per_second'] / res['generate_tokens_per_second']:.2f}x | "
                      f"{level['throughput']:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2-half,demo-student",
                        help="smollm2-half, demo-student, smollm2, or student folders (comma-separated)")
    parser.add_argument("--quants", default="f16,q8_0,q4_k_m")
    parser.add_argument("--problems", type=int, default=8, help="test problems for the agreement and the requests")
    parser.add_argument("--answer_tokens", type=int, default=128, help="greedy tokens per answer for the agreement")
    parser.add_argument("--max_tokens", type=int, default=64, help="tokens per timed request")
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=None, help="requests per level (default: max(level, 4))")
    parser.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads")
    parser.add_argument("--demo_steps", type=int, default=400, help="SFT steps of the demo-sized student")
    parser.add_argument("--demo_dir", default=None, help="a finished `hf-distill demo` folder: use its student-kd")
    parser.add_argument("--ban_stop", action="store_true",
                        help="never choose a stop token in the agreement's greedy answers (a pruned, unrecovered "
                        "student ends its turn at once: this compares whole answers instead of 2 tokens)")
    parser.add_argument("--no_reload", dest="reload", action="store_false",
                        help="skip transformers' dequantised reload (its logit error column)")
    parser.add_argument("--out", default=None, help="where the GGUF files go (default: a temporary folder)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--quick", action="store_true", help="a tiny random model, 2 problems, 8 tokens")
    opts = parser.parse_args(argv)

    import torch

    torch.set_num_threads(opts.threads)
    began = time.perf_counter()
    work = Path(opts.out or tempfile.mkdtemp(prefix="deploy-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if opts.quick:
        opts.problems, opts.answer_tokens, opts.max_tokens, opts.concurrency = 2, 8, 8, "1,2"
        opts.models = "tiny"
    print(f"# deploy benchmark: {opts.models}; {opts.problems} test problems, {opts.answer_tokens}-token greedy "
          f"answers, {opts.max_tokens}-token timed requests, {opts.threads} threads (load average {load_average()})",
          flush=True)
    results = []
    for name in opts.models.split(","):
        notes = {}
        if name == "tiny":
            model_dir, asked = tiny_student(work / "tiny-student")
            asked = asked[: opts.problems]
        elif name == "smollm2-half":
            model_dir, asked = smollm2_half(work / "smollm2-half"), questions(GSM8K_TEST, opts.problems)
        elif name == "smollm2":
            from hf_distill.models.real import real_model_dir

            model_dir, asked = Path(real_model_dir("smollm2-135m-instruct")), questions(GSM8K_TEST, opts.problems)
        elif name == "demo-student" and opts.demo_dir:
            model_dir = Path(opts.demo_dir) / "student-kd"
            from datasets import load_from_disk

            asked = list(load_from_disk(str(Path(opts.demo_dir) / "data" / "dataset"))["test"]["question"])
            asked = asked[: opts.problems]
        elif name == "demo-student":
            model_dir, asked, accuracy = demo_student(work / "demo-student", opts.demo_steps, max(opts.problems, 100))
            notes["accuracy"] = accuracy
            print(f"  demo-student: {opts.demo_steps} SFT steps, accuracy {accuracy:.0%} on 100 held-out problems",
                  flush=True)
            asked = asked[: opts.problems]
        else:
            model_dir, asked = Path(name), questions(GSM8K_TEST, opts.problems)
            name = model_dir.name
        results.append(measure_model(name, model_dir, asked, opts, work, notes))
        print(f"[{time.perf_counter() - began:.0f} s] {name} done", flush=True)

    print(f"\n# GGUF deployment: {opts.problems} test problems per student; agreement on {opts.answer_tokens}-token "
          f"greedy answers run by llama.cpp in-process; requests of {opts.max_tokens} tokens to llama_cpp.server; "
          f"{opts.threads} threads; {time.perf_counter() - began:.0f} s in all, load average {load_average()}")
    print_tables(results, opts)
    for line in machine_lines():
        print(line)
    if opts.json:
        Path(opts.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
