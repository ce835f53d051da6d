"""`hf-distill traces`: sample verified reasoning traces from a teacher into a `datasets` dataset (resumable).

    hf-distill traces --teacher ./teacher --dataset arithmetic --output_dir traces/ --num_samples 4 --temperature 0.7

Every `TraceConfig` field is a flag (``--template step_by_step``, ``--no_keep_only_verified``, ...). Rerunning the
same command after a crash resumes it. Train on the result with ``datasets.load_from_disk("traces/dataset")``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset, DatasetDict, load_from_disk
from transformers import HfArgumentParser

from hf_distill.data.reasoning import ARITHMETIC, load_reasoning_dataset
from hf_distill.traces.collect import collect_traces
from hf_distill.traces.config import TraceConfig


@dataclass
class TracesArguments:
    teacher: str = field(metadata={"help": "Teacher checkpoint (local directory or hub id) with its tokenizer."})
    output_dir: str = field(metadata={"help": "Where shards, manifest.json and dataset/ go (resumed if present)."})
    dataset: str = field(
        default=ARITHMETIC,
        metadata={"help": "'arithmetic' (generated), a GSM8K-format .jsonl file, a directory of <split>.jsonl files, "
                          "or a directory written by `save_to_disk`."},
    )
    split: str = field(default="train", metadata={"help": "Split to use when the dataset has several."})
    question_column: str = field(default="question", metadata={"help": "Column holding the question."})
    answer_column: str = field(default="answer", metadata={"help": "Column holding the gold rationale (#### N)."})
    num_examples: int = field(default=2000, metadata={"help": "Problems to generate for 'arithmetic'."})
    max_problems: int | None = field(default=None, metadata={"help": "Use only the first N problems."})


def load_problems(args: TracesArguments) -> Dataset:
    source = args.dataset
    if source != ARITHMETIC and any((Path(source) / name).is_file() for name in ("dataset_dict.json", "state.json")):
        source = load_from_disk(source)  # a `save_to_disk` directory
    generator = {"n_train": args.num_examples, "n_test": 1} if source == ARITHMETIC else {}
    data = load_reasoning_dataset(source, question_column=args.question_column, answer_column=args.answer_column,
                                  **generator)
    if isinstance(data, DatasetDict):
        data = load_reasoning_dataset(data, split=args.split)
    return data.select(range(min(args.max_problems, len(data)))) if args.max_problems else data


def main(argv: list[str]) -> int:
    parser = HfArgumentParser((TracesArguments, TraceConfig), prog="hf-distill traces",
                              description="Sample, verify and de-duplicate a teacher's reasoning traces.")
    args, config = parser.parse_args_into_dataclasses(argv)
    traces = collect_traces(args.teacher, None, load_problems(args), args.output_dir, config)
    print(f"{len(traces)} traces in {Path(args.output_dir) / 'dataset'}; train on them with "
          f"datasets.load_from_disk({str(Path(args.output_dir) / 'dataset')!r})")
    return 0
