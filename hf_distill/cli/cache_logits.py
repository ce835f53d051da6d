"""`hf-distill cache-logits`: run a teacher once over a dataset and keep its top-k log-probabilities at every loss
token, for `hf-distill train --teacher_cache DIR`. Re-running the same command resumes an interrupted run.

    hf-distill cache-logits --teacher_model_name_or_path ./teacher --dataset_name arithmetic --output_dir cache \
        --top_k 32 --temperature 1.0 --max_length 1024

The data flags are `hf-distill train`'s (`--dataset_name`, `--dataset_train_split`, `--num_examples`, ...) and every
`DistillationConfig` flag is read as training will read it (`--max_length`, `--temperature`, `--teacher_dtype`,
`--teacher_device`, the chat template...), so pass the same ones to both: the cache records them and training checks.

A teacher behind an inference server fills the same cache from its prompt log-probabilities (temperature 1)::

    hf-distill cache-logits --teacher_url http://host:8000/v1 --teacher_served_model NAME \
        --tokenizer_name_or_path ./student --dataset_name arithmetic --output_dir cache --top_k 20

(vLLM: token ids in and out, k up to its ``--max-logprobs``; llama-cpp-python's server started with
``--logits_all true``: token strings mapped back to ids, see :mod:`hf_distill.served.llama_cpp`.)

Many processes share the work out and write one cache, equal to a one-process collection's::

    accelerate launch --num_processes 4 -m hf_distill cache-logits --teacher_model_name_or_path ./teacher ...
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from hf_distill.cli.arguments import DatasetArguments, load_splits
from hf_distill.cli.parser import Parser
from hf_distill.config import DistillationConfig
from hf_distill.utils.manifest import WorkShare


@dataclass
class CacheArguments:
    """What only the cache needs; the teacher, output_dir, temperature, max_length... are `DistillationConfig`'s."""

    top_k: int = field(default=32, metadata={"help": "Tokens kept per position."})
    batch_size: int = field(default=8, metadata={"help": "Examples per teacher forward pass."})
    shard_size: int = field(default=1024, metadata={"help": "Examples per shard file (the unit of resuming)."})
    logprob_dtype: str = field(default="float16", metadata={
        "help": "How log-probabilities are stored: 'float16' (default) on a 1/1024-nat grid, at least float16's "
        "precision (error <= 2^-11 nat); 'float32' exact (about 1.6x the bytes).", "choices": ["float16", "float32"]})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "With --teacher_url: the teacher's tokenizer (a folder, hub id or .gguf), "
                                "the one training uses."})


def parser() -> Parser:
    result = Parser(
        (DatasetArguments, CacheArguments, DistillationConfig), prog="hf-distill cache-logits",
        description="Run a teacher (--teacher_model_name_or_path) once over a dataset and cache its top-k "
        "log-probabilities in --output_dir, for `hf-distill train --teacher_cache DIR` with the same data and "
        "DistillationConfig flags. Re-running with the same arguments resumes an interrupted run. The teacher runs "
        "on --teacher_device (default: cuda if available, else cpu) in --teacher_dtype.",
    )
    for action in result._actions:
        if action.dest == "output_dir":
            action.required = True  # DistillationConfig's default ('trainer_output') makes no sense here
    return result


def main(argv: list[str] | None = None) -> int:
    data_args, cache_args, config = parser().parse(sys.argv[1:] if argv is None else argv)

    from hf_distill.cache.writer import collect_teacher_cache
    from hf_distill.models.gguf import load_tokenizer

    teacher, out = config.teacher_model_name_or_path, config.output_dir
    if (teacher is None) == (config.teacher_url is None):  # a usage error: exit status 2, like argparse's
        print("hf-distill cache-logits: error: give one teacher: --teacher_model_name_or_path PATH (run here) or "
              "--teacher_url http://host:port/v1 with --tokenizer_name_or_path (a served teacher).", file=sys.stderr)
        raise SystemExit(2)
    tokenizer = load_tokenizer(cache_args.tokenizer_name_or_path or teacher) \
        if (cache_args.tokenizer_name_or_path or teacher) else None
    if config.teacher_url is not None:
        if tokenizer is None:
            raise SystemExit("hf-distill cache-logits --teacher_url needs --tokenizer_name_or_path: the teacher's "
                             "tokenizer, to send token ids and check the ones that come back.")
        from hf_distill.served.teacher import ServedTeacher

        teacher = ServedTeacher.from_args(config, tokenizer, top_k=cache_args.top_k)
    data, _ = load_splits(data_args, tokenizer=tokenizer)
    given_tokenizer = tokenizer if cache_args.tokenizer_name_or_path or config.teacher_url else None
    manifest = collect_teacher_cache(
        teacher, data, out, given_tokenizer, args=config, top_k=cache_args.top_k, batch_size=cache_args.batch_size,
        shard_size=cache_args.shard_size, logprob_dtype=cache_args.logprob_dtype, teacher_dtype=config.teacher_dtype,
        device=config.teacher_device, log=print,
    )
    if WorkShare.from_env().rank != 0:  # under a launcher: rank 0 reports for all
        return 0
    tokens = sum(shard["num_tokens"] for shard in manifest["shards"])
    size = sum(shard["bytes"] for shard in manifest["shards"])
    print(f"Cached {manifest['dataset']['num_examples']} examples, {tokens} loss tokens, k={manifest['top_k']}, "
          f"T={manifest['temperature']}: {size / 2**20:.1f} MiB in {os.path.abspath(out)} "
          f"({size / max(tokens, 1):.0f} bytes/token). Train with --teacher_cache {out}")
    return 0
