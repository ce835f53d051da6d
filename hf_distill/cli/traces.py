"""`hf-distill traces`: sample verified reasoning traces from a teacher into a `datasets` dataset (resumable).

    hf-distill traces --teacher_model_name_or_path ./teacher --dataset_name arithmetic --output_dir traces/ \
        --num_samples 4 --temperature 0.7
    hf-distill traces --teacher_url http://localhost:8000/v1 --teacher_served_model Qwen/Qwen3-32B \
        --dataset_name gsm8k.jsonl --output_dir traces/ --template step_by_step --teacher_concurrency 32

Under ``accelerate launch --num_processes N -m hf_distill traces ...`` (or ``torchrun``) the problems' shards are
shared out over the processes and one dataset results, equal to a one-process run's.

With ``--teacher_url`` the teacher is an OpenAI-compatible server (vLLM, SGLang, llama.cpp, a hosted API; its API key,
if any, in the environment variable named by ``--teacher_api_key_env``); a rerun resumes without re-asking answered
prompts.

The data flags are `hf-distill train`'s (`--dataset_name`, `--dataset_train_split`, `--num_examples`: the first N
problems), every `TraceConfig` field is a flag (``--template step_by_step``, ``--no_keep_only_verified``, ...) and
`--config FILE.yaml` reads them from a file. Rerunning the same command after a crash resumes it. Train on the result
with ``datasets.load_from_disk("traces/dataset")``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, DatasetDict, load_from_disk

from hf_distill.cli.arguments import DatasetArguments, take_split
from hf_distill.cli.parser import Parser
from hf_distill.data.reasoning import ARITHMETIC, load_reasoning_dataset
from hf_distill.traces.collect import collect_traces
from hf_distill.traces.config import TraceConfig
from hf_distill.utils.manifest import WorkShare


@dataclass
class TracesArguments:
    output_dir: str = field(metadata={"help": "Where shards, manifest.json and dataset/ go (resumed if present)."})
    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Teacher checkpoint (local directory or hub id) with its tokenizer; or a "
                                "served teacher: --teacher_url."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "With --teacher_url --teacher_endpoint completions: the teacher's tokenizer, "
                                "to render the plain prompt exactly as a local model would see it (optional)."})


def load_problems(args: DatasetArguments) -> Dataset:
    """GSM8K-format problems: 'arithmetic' (``num_examples`` generated, default 2000), a .jsonl file, a directory of
    <split>.jsonl files or of `save_to_disk` (``dataset_train_split`` picks the split, slices allowed)."""
    source = args.dataset_name
    if source != ARITHMETIC and any((Path(source) / name).is_file() for name in ("dataset_dict.json", "state.json")):
        source = load_from_disk(source)  # a `save_to_disk` directory
    generator = {"n_train": args.num_examples or 2000, "n_test": 1} if source == ARITHMETIC else {}
    data = load_reasoning_dataset(source, question_column=args.question_column, answer_column=args.answer_column,
                                  **generator)
    if isinstance(data, DatasetDict):
        data = take_split(data, args.dataset_train_split, args.dataset_name)
    return data.select(range(min(args.num_examples, len(data)))) if args.num_examples else data


def parser() -> Parser:
    return Parser((TracesArguments, DatasetArguments, TraceConfig), prog="hf-distill traces",
                  description="Sample, verify and de-duplicate a teacher's reasoning traces.")


def main(argv: list[str] | None = None) -> int:
    args, data_args, config = parser().parse(sys.argv[1:] if argv is None else argv)
    if (args.teacher_model_name_or_path is None) == (config.teacher_url is None):
        raise SystemExit("hf-distill traces: give one teacher: --teacher_model_name_or_path PATH (run here) or "
                         "--teacher_url http://host:port/v1 (a served teacher).")
    tokenizer = None
    if args.tokenizer_name_or_path is not None:
        from hf_distill.models.gguf import load_tokenizer

        tokenizer = load_tokenizer(args.tokenizer_name_or_path)
    traces = collect_traces(args.teacher_model_name_or_path, tokenizer, load_problems(data_args), args.output_dir,
                            config)
    if WorkShare.from_env().rank == 0:  # under a launcher: rank 0 reports for all
        print(f"{len(traces)} traces in {Path(args.output_dir) / 'dataset'}; train on them with "
              f"datasets.load_from_disk({str(Path(args.output_dir) / 'dataset')!r})")
    return 0
