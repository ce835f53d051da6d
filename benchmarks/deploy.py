"""From student to device: GGUF size per quantisation, speed and latency through llama.cpp's server against
``model.generate``, and how often the quantised file still gives the float model's greedy answer.

For each GGUF type (default f16, q8_0, q4_k_m) the student is exported (`hf_distill.deploy.export_gguf`), served by
``llama_cpp.server`` on a loopback port, asked the same GSM8K test problems greedily (raw ``/v1/completions`` with
the prompt the student's own chat template renders, so both sides see the same tokens), and measured by
`hf_distill.deploy.bench_serve` at each concurrency level. The float reference is transformers' ``generate`` in
float32, one prompt at a time (batch 1, like a single user), run before and after the servers (median of both).
llama.cpp's server applies a repeat penalty of 1.1 unless told otherwise: the agreement requests ask for 1.0 (plain
greedy); the timed ones keep the server's defaults, as a client would.

    python benchmarks/deploy.py                                   # SmolLM2-135M-Instruct, ~5 min on 2 cores
    python benchmarks/deploy.py --model stages/s2/model --problems 16
    python benchmarks/deploy.py --quick                           # a tiny random model, seconds

"Same answer" compares the final numbers (`hf_distill.evaluation.answers.extract_answer`); "same text" the whole
greedy continuation. On a shared CPU wall times swing with the other processes' load: the ratios between rows of
one run are what to read.
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

GSM8K_TEST = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k" / "test.jsonl"


def questions(path: Path, count: int) -> list[str]:
    if path.is_file():
        return [json.loads(line)["question"] for line in path.read_text().splitlines()[:count]]
    from hf_distill.data.arithmetic import (
        make_arithmetic_dataset,  # no GSM8K copy: the embedded task
    )

    return list(make_arithmetic_dataset(n_train=0, n_test=count, seed=1)["test"]["question"])


def tiny_student(folder: Path) -> Path:
    from hf_distill.data.arithmetic import make_arithmetic_dataset
    from hf_distill.data.tokenizer import train_tokenizer
    from hf_distill.models.build import random_llama

    texts = make_arithmetic_dataset(n_train=64, n_test=0, seed=0)["train"]["question"]
    tokenizer = train_tokenizer(texts, vocab_size=512)
    model = random_llama(0, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         initializer_range=0.2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def float_reference(model_dir: Path, prompts: list[str], max_tokens: int) -> tuple[list[str], list[float]]:
    """Greedy float32 continuations with ``model.generate`` at batch 1, and each one's tokens/s."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    texts, speeds = [], []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        seconds = time.perf_counter() - start
        new = out[0, ids.shape[1] :]
        texts.append(tokenizer.decode(new, skip_special_tokens=True))
        speeds.append(len(new) / seconds)
    return texts, speeds


def served_answers(url: str, model: str, prompts: list[str], max_tokens: int) -> list[str]:
    import urllib.request

    texts = []
    for prompt in prompts:
        body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                           "repeat_penalty": 1.0}).encode()  # llama.cpp's server defaults to 1.1: not plain greedy
        request = urllib.request.Request(f"{url}/completions", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=600) as response:
            texts.append(json.load(response)["choices"][0]["text"])
    return texts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="A student folder (default: SmolLM2-135M-Instruct from the real-model cache).")
    parser.add_argument("--quants", default="f16,q8_0,q4_k_m")
    parser.add_argument("--problems", type=int, default=8, help="GSM8K test problems for the agreement")
    parser.add_argument("--max_tokens", type=int, default=64)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=None, help="requests per level (default: max(level, 4))")
    parser.add_argument("--threads", type=int, default=2, help="torch and llama.cpp threads")
    parser.add_argument("--out", default=None, help="where the GGUF files go (default: a temporary folder)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--quick", action="store_true", help="a tiny random model, 2 problems, 8 tokens")
    opts = parser.parse_args(argv)

    import torch

    from hf_distill.deploy import bench_serve, export_gguf, serving
    from hf_distill.evaluation.answers import extract_answer
    from hf_distill.evaluation.generate import chat_prompts

    torch.set_num_threads(opts.threads)
    work = Path(opts.out or tempfile.mkdtemp(prefix="deploy-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if opts.quick:
        opts.problems, opts.max_tokens, opts.concurrency = 2, 8, "1,2"
        model_dir = tiny_student(work / "tiny-student")
    elif opts.model:
        model_dir = Path(opts.model)
    else:
        from hf_distill.models.real import real_model_dir

        model_dir = Path(real_model_dir("smollm2-135m-instruct"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = chat_prompts(tokenizer, questions(GSM8K_TEST, opts.problems))
    levels = tuple(int(x) for x in opts.concurrency.split(","))

    print(f"# deploy benchmark: {model_dir.name}, {len(prompts)} GSM8K test problems, {opts.max_tokens} new tokens, "
          f"{opts.threads} threads (load average {load_average()})")
    for line in machine_lines():
        print(line)
    reference, speeds = float_reference(model_dir, prompts, opts.max_tokens)
    reference_answers = [extract_answer(text) for text in reference]
    rows = [{"format": "safetensors fp32 (transformers generate)",
             "bytes": sum(p.stat().st_size for p in model_dir.glob("*.safetensors")),
             "generate_tokens_per_second": statistics.median(speeds)}]
    for quant in opts.quants.split(","):
        start = time.perf_counter()
        gguf = export_gguf(model_dir, work / f"{model_dir.name}.{quant}.gguf", quant)
        export_seconds = time.perf_counter() - start
        with serving(gguf, n_threads=opts.threads, n_ctx=2048) as server:
            texts = served_answers(server.url, server.model, prompts, opts.max_tokens)
            bench = bench_serve(server.url, [q for q in questions(GSM8K_TEST, opts.problems)], levels,
                                opts.max_tokens, opts.requests)
        same_text = sum(a.strip() == b.strip() for a, b in zip(texts, reference)) / len(prompts)
        same_answer = sum(extract_answer(t) == r for t, r in zip(texts, reference_answers)) / len(prompts)
        rows.append({"format": f"GGUF {quant}", "bytes": gguf.stat().st_size, "export_seconds": export_seconds,
                     "same_text": same_text, "same_answer": same_answer, "levels": [b.as_dict() for b in bench]})

    _, speeds_after = float_reference(model_dir, prompts, opts.max_tokens)  # the CPU's load drifts: before and after
    rows[0]["generate_tokens_per_second"] = statistics.median(speeds + speeds_after)
    base = rows[0]
    print(f"\nfloat32 `model.generate` (batch 1): {base['generate_tokens_per_second']:.1f} tokens/s, "
          f"{base['bytes'] / 1e6:.1f} MB of safetensors\n")
    print("| format | file | vs fp32 file | export s | same greedy text | same final answer | concurrent | "
          "TTFT p50 | latency p50 / p95 | tokens/s per request | vs generate | tokens/s total |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows[1:]:
        for level in row["levels"]:
            print(f"| {row['format']} | {row['bytes'] / 1e6:.1f} MB | {row['bytes'] / base['bytes']:.2f}x | "
                  f"{row['export_seconds']:.1f} | {row['same_text']:.0%} | {row['same_answer']:.0%} | "
                  f"{level['concurrency']} | {level['ttft_p50'] * 1e3:.0f} ms | {level['latency_p50']:.2f} / "
                  f"{level['latency_p95']:.2f} s | {level['tokens_per_second']:.1f} | "
                  f"{level['tokens_per_second'] / base['generate_tokens_per_second']:.2f}x | "
                  f"{level['throughput']:.1f} |")
    if opts.json:
        Path(opts.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
