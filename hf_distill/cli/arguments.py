"""Arguments that several subcommands share, and what they load: `DatasetArguments` (the dataset, its splits and
columns, named as TRL's `ScriptArguments` names them) for `train`, `cache-logits` and `traces`, so a cache is collected
over exactly the examples training reads."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from datasets import Dataset, DatasetDict, ReadInstruction, load_dataset

from hf_distill.data.reasoning import (
    ARITHMETIC,
    load_reasoning_dataset,
    to_prompt_completion,
)

# Columns that TRL's SFTTrainer prepares by itself; data with them is used as it is.
_TRL_FORMATS = (("messages",), ("prompt", "completion"), ("text",), ("input_ids",))


@dataclass
class DatasetArguments:
    """Which data to train (and evaluate) on: the same flags for `hf-distill train`, `cache-logits` (so a cache is
    collected over exactly the examples training reads) and `traces` (the problems sampled)."""

    dataset_name: str = field(
        default=ARITHMETIC,
        metadata={"help": "'arithmetic' (generated), a .jsonl/.json/.parquet file, a directory of <split>.jsonl "
                  "files (e.g. train.jsonl, test.jsonl), or a hub dataset name."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(
        default="train",
        metadata={"help": "Training split, with the slice syntax of `datasets`: 'train', 'train[:500]', "
                  "'train[:10%%]'."},  # %% is argparse's percent sign, as in transformers' own help texts
    )
    dataset_test_split: str = field(
        default="test",
        metadata={"help": "Evaluation split (read by `train` when --eval_strategy is not 'no'), e.g. 'test[:200]'."},
    )
    num_examples: int | None = field(
        default=None,
        metadata={"help": "Keep the first N training examples (after the split's slice); for 'arithmetic', the number "
                  "of problems generated (default 2000). Default: all."},
    )
    question_column: str = field(default="question", metadata={"help": "Column holding the question (GSM8K format)."})
    answer_column: str = field(default="answer", metadata={"help": "Column holding the step-by-step answer."})


def load_splits(args: DatasetArguments, with_test: bool = False, tokenizer=None) -> tuple[Dataset, Dataset | None]:
    """The training split (and the test split when ``with_test``) that `hf-distill train` and `cache-logits` read.

    GSM8K-format data (question/answer columns) becomes prompt-completion; data already in one of TRL's formats
    (messages, prompt/completion, text, input_ids) is used as it is.
    """
    if args.dataset_name == ARITHMETIC:
        n_train = args.num_examples or 2000
        data = load_reasoning_dataset(ARITHMETIC, n_train=n_train, n_test=200 if with_test else 1)
    else:
        data = _load_any(args.dataset_name, args.dataset_config)
    train = take_split(data, args.dataset_train_split, args.dataset_name)
    if args.num_examples is not None and args.dataset_name != ARITHMETIC:
        train = train.select(range(min(args.num_examples, len(train))))
    test = take_split(data, args.dataset_test_split, args.dataset_name) if with_test else None
    return _trainable(train, args, tokenizer), (None if test is None else _trainable(test, args, tokenizer))


def _load_any(source: str, config: str | None) -> DatasetDict:
    if os.path.isdir(source):
        return load_reasoning_dataset(source) if _has_jsonl(source) else load_dataset(source, config)
    if os.path.isfile(source):
        kind = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}.get(os.path.splitext(source)[1])
        if kind is None:
            raise ValueError(f"Cannot read {source!r}: use a .jsonl, .json, .parquet or .csv file.")
        return load_dataset(kind, data_files={"train": source})
    return load_dataset(source, config)


def _has_jsonl(folder: str) -> bool:
    return any(name.endswith(".jsonl") for name in os.listdir(folder))


def take_split(data: Dataset | DatasetDict, spec: str, source: str) -> Dataset:
    """``spec`` is a split name with an optional `datasets` slice: 'train', 'train[:500]', 'test[10%:20%]'."""
    if isinstance(data, Dataset):
        data = DatasetDict({"train": data})
    name = spec.split("[", 1)[0]
    if name not in data:
        raise ValueError(f"{source!r} has no split {name!r} (from {spec!r}); its splits are {sorted(data)}. Pick one "
                         "with --dataset_train_split / --dataset_test_split.")
    try:
        instructions = ReadInstruction.from_spec(spec).to_absolute({key: len(split) for key, split in data.items()})
    except (ValueError, AssertionError) as error:
        raise ValueError(f"Bad split {spec!r}: {error}. Use e.g. 'train', 'train[:500]' or 'train[:10%]'.") from None
    parts = [data[i.splitname].select(range(i.from_, i.to)) for i in instructions]
    if not parts or sum(map(len, parts)) == 0:
        raise ValueError(f"Split {spec!r} of {source!r} is empty: there is nothing to train or evaluate on.")
    if len(parts) == 1:
        return parts[0]
    from datasets import concatenate_datasets

    return concatenate_datasets(parts)


def _trainable(split: Dataset, args: DatasetArguments, tokenizer) -> Dataset:
    columns = set(split.column_names)
    if {args.question_column, args.answer_column} <= columns:
        data = load_reasoning_dataset(split, question_column=args.question_column, answer_column=args.answer_column)
        return to_prompt_completion(data, tokenizer=tokenizer)
    if any(set(fmt) <= columns for fmt in _TRL_FORMATS):
        return split
    raise ValueError(
        f"The dataset's columns {sorted(columns)} are neither GSM8K-style question/answer (name them with "
        "--question_column/--answer_column) nor one of TRL's formats: messages, prompt + completion, text, input_ids."
    )
