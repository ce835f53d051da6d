"""`hf-distill bench-serve`: time to first token, tokens/s and p50/p95 latency of an OpenAI-compatible server at
1, 4 and 16 concurrent streamed requests (`hf_distill.deploy.bench`).

    hf-distill serve stages/s2/model --quant q4_k_m &
    hf-distill bench-serve http://127.0.0.1:8000/v1 --card stages/s2/model --quant q4_k_m

``--card DIR`` records the numbers in DIR/deployment.json and the Deployment table of DIR/README.md. The prompts are
held-out problems of the embedded task unless ``--prompts_file`` gives others (one per line, or JSONL with a
``question`` or ``prompt`` field).
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hf_distill.cli.parser import Parser


@dataclass
class BenchServeArguments:
    url: str | None = field(default=None, metadata={"help": "The server's OpenAI base URL, e.g. "
                                                            "http://127.0.0.1:8000/v1; also positional."})
    concurrency: list[int] = field(default_factory=lambda: [1, 4, 16], metadata={"help": "Concurrency levels."})
    requests: int | None = field(default=None, metadata={"help": "Requests per level (default: the level, at "
                                                                 "least 4)."})
    max_tokens: int = field(default=64, metadata={"help": "New tokens per request (greedy)."})
    prompts_file: str | None = field(default=None, metadata={"help": "Prompts: one per line, or JSONL with "
                                                                     "`question`/`prompt` (default: the embedded "
                                                                     "task's test problems)."})
    completions: bool = field(default=False, metadata={"help": "Use /v1/completions with raw prompts instead of "
                                                               "/v1/chat/completions (the file's chat template)."})
    card: str | None = field(default=None, metadata={"help": "A student folder: record the results in its "
                                                             "deployment.json and its card's Deployment table."})
    quant: str | None = field(default=None, metadata={"help": "The served GGUF type, for the card (default: the "
                                                              "one exported, if only one was)."})
    output_json: str | None = field(default=None, metadata={"help": "Also write the results to this JSON file."})


def parser() -> Parser:
    return Parser(BenchServeArguments, positional="url", prog="hf-distill bench-serve",
                  description="Measure an OpenAI-compatible server (TTFT, tokens/s, p50/p95 latency) at several "
                  "concurrency levels with streamed greedy requests.")


def read_prompts(path: str | None, count: int = 16) -> list[str]:
    if path is None:
        from hf_distill.data.arithmetic import make_arithmetic_dataset

        return list(make_arithmetic_dataset(n_train=0, n_test=count, seed=1)["test"]["question"])
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    if lines and lines[0].lstrip().startswith("{"):
        rows = [json.loads(line) for line in lines]
        return [row.get("question") or row["prompt"] for row in rows]
    return lines


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    (args,) = cli.parse(sys.argv[1:] if argv is None else argv)
    if args.url is None:
        cli.error("a server URL is required: hf-distill bench-serve http://127.0.0.1:8000/v1")
    from rich.console import Console
    from rich.table import Table

    from hf_distill.deploy.bench import bench_serve

    results = bench_serve(args.url, read_prompts(args.prompts_file), tuple(args.concurrency), args.max_tokens,
                          args.requests, chat=not args.completions)
    table = Table(title=f"{args.url}: {args.max_tokens} new tokens, streamed, greedy")
    for name in ("concurrent", "requests", "TTFT p50", "TTFT p95", "latency p50", "latency p95", "tokens/s/req",
                 "tokens/s total"):
        table.add_column(name, justify="right")
    for r in results:
        table.add_row(str(r.concurrency), str(r.requests), f"{r.ttft_p50 * 1e3:.0f} ms", f"{r.ttft_p95 * 1e3:.0f} ms",
                      f"{r.latency_p50:.2f} s", f"{r.latency_p95:.2f} s", f"{r.tokens_per_second:.1f}",
                      f"{r.throughput:.1f}")
    Console(width=max(120, shutil.get_terminal_size().columns)).print(table)
    rows = [r.as_dict() for r in results]
    if args.output_json:
        from hf_distill.utils.io import write_json_atomic

        write_json_atomic(args.output_json, rows)
    if args.card:
        from hf_distill.deploy.report import (
            load_deployment,
            record_serving,
            update_card,
        )

        quant = args.quant
        exports = load_deployment(args.card)["exports"]
        if quant is None and len(exports) == 1:
            quant = next(iter(exports))
        deployment = record_serving(args.card, rows, quant, engine="llama.cpp (llama-cpp-python)"
                                    if _is_llama_cpp(args.url) else "an OpenAI-compatible server",
                                    max_tokens=args.max_tokens)
        update_card(Path(args.card) / "README.md", deployment)
        print(f"Recorded in {Path(args.card) / 'deployment.json'}")
    return 0


def _is_llama_cpp(url: str) -> bool:
    """llama-cpp-python's server lists its models with ``owned_by: "me"``."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/models", timeout=5) as response:
            return json.load(response)["data"][0].get("owned_by") == "me"
    except (OSError, KeyError, IndexError, ValueError):
        return False
