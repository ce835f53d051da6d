"""One entry point for GSM8K-format reasoning data, whatever it is stored in.

Everything downstream (tokenizer training, SFT, distillation, evaluation) reads the two columns
``question`` and ``answer`` (a rationale ending in ``#### X``), so this module's only job is to
get any source into that shape, or fail early with a message that says how to fix the call.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from datasets import Dataset, DatasetDict, load_dataset
from transformers import PreTrainedTokenizerBase

from hf_distill.data.arithmetic import make_arithmetic_dataset

ARITHMETIC = "arithmetic"
logger = logging.getLogger(__name__)


def load_reasoning_dataset(
    source: str | Path | Dataset | DatasetDict,
    split: str | None = None,
    question_column: str = "question",
    answer_column: str = "answer",
    **generator_kwargs: Any,
) -> Dataset | DatasetDict:
    """Load GSM8K-format data with ``question`` and ``answer`` columns.

    ``source`` is one of:

    - ``"arithmetic"``: the synthetic generator; ``generator_kwargs`` go to
      :func:`~hf_distill.data.arithmetic.make_arithmetic_dataset` (``n_train``, ``n_test``, ...);
    - a ``.jsonl`` file (returns a ``Dataset``) or a directory of ``<split>.jsonl`` files such as
      ``train.jsonl`` and ``test.jsonl`` (returns a ``DatasetDict``);
    - a ``Dataset`` or ``DatasetDict`` already in memory.

    Columns named ``question_column`` and ``answer_column`` are renamed to ``question`` and
    ``answer``; other columns are kept. ``split`` picks one split of a ``DatasetDict``.
    """
    if generator_kwargs and not (isinstance(source, str) and source == ARITHMETIC):
        raise TypeError(f"{sorted(generator_kwargs)} are only accepted with source={ARITHMETIC!r}")
    if isinstance(source, (Dataset, DatasetDict)):
        data = source
    elif isinstance(source, str) and source == ARITHMETIC:
        data = make_arithmetic_dataset(**generator_kwargs)
    elif isinstance(source, (str, Path)):
        data = _load_jsonl(Path(source))
    else:
        raise TypeError(f"source must be {ARITHMETIC!r}, a path, a Dataset or a DatasetDict, got {type(source)}")

    if split is not None:
        if not isinstance(data, DatasetDict):
            raise ValueError(f"split={split!r} was given, but {source!r} holds a single split")
        if split not in data:
            raise ValueError(f"no split {split!r} in {source!r}; available splits: {sorted(data)}")
        data = data[split]

    if isinstance(data, DatasetDict):
        return DatasetDict(
            {name: _standardise(ds, question_column, answer_column, f"split {name!r}") for name, ds in data.items()}
        )
    return _standardise(data, question_column, answer_column, "dataset")


def _load_jsonl(path: Path) -> Dataset | DatasetDict:
    if path.is_dir():
        files = {p.stem: str(p) for p in sorted(path.glob("*.jsonl"))}
        if not files:
            raise FileNotFoundError(f"no .jsonl files in {path} (expected e.g. train.jsonl and test.jsonl)")
        return load_dataset("json", data_files=files)
    if path.is_file():
        return load_dataset("json", data_files=str(path), split="train")
    raise FileNotFoundError(
        f"{str(path)!r} is neither {ARITHMETIC!r} nor an existing .jsonl file or directory of .jsonl files"
    )


def _standardise(dataset: Dataset, question_column: str, answer_column: str, where: str) -> Dataset:
    """Check the two columns exist and the data is not empty, then rename them to the standard names."""
    missing = [c for c in (question_column, answer_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{where} has no column {missing}; its columns are {dataset.column_names}. "
            "Pass question_column=... and answer_column=... to name the question and answer columns."
        )
    if len(dataset) == 0:
        raise ValueError(f"{where} is empty: there is nothing to train or evaluate on")
    renames = {question_column: "question", answer_column: "answer"}
    return dataset.rename_columns({old: new for old, new in renames.items() if old != new})


PLAIN_PROMPT = "Question: {question}\nAnswer:"
"""The prompt for a tokenizer without a chat template (a base model); the completion is ``" " + answer`` (TRL's
``SFTTrainer`` appends EOS to it). A system prompt goes first, followed by a blank line."""

_plain_format_logged = False


def has_chat_template(tokenizer: PreTrainedTokenizerBase | None) -> bool:
    """Whether prompts are chat turns: True without a tokenizer (the caller did not say), else its chat template."""
    return tokenizer is None or bool(getattr(tokenizer, "chat_template", None))


def plain_prompt(question: str, system_prompt: str | None = None) -> str:
    """``question`` in the plain format of :data:`PLAIN_PROMPT`, for base models without a chat template."""
    system = f"{system_prompt}\n\n" if system_prompt else ""
    return system + PLAIN_PROMPT.format(question=question)


def log_plain_format() -> None:
    """Say once per process that a tokenizer has no chat template and the plain format is used instead."""
    global _plain_format_logged
    if not _plain_format_logged:
        _plain_format_logged = True
        logger.warning(
            "The tokenizer has no chat template (a base model): reasoning data and evaluation prompts use the plain "
            "format %r + ' <answer>' instead of chat turns.", PLAIN_PROMPT
        )


def to_prompt_completion(
    dataset: Dataset | DatasetDict,
    system_prompt: str | None = None,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> Dataset | DatasetDict:
    """Add TRL's prompt-completion columns, keeping ``question`` and ``answer``.

    Conversational by default: ``prompt`` holds the (optional system and) user turns and ``completion`` the assistant
    turn. Pass the ``tokenizer`` that will train on the data: if it has no chat template (a base model), the columns
    are plain text instead, ``prompt`` = ``"Question: {question}\nAnswer:"`` and ``completion`` = ``" {answer}"``
    (the format :func:`~hf_distill.evaluation.generate.chat_prompts` then evaluates with), and a warning says so once.
    Either way TRL's ``SFTTrainer`` masks the prompt out of the loss (``completion_only_loss``).
    """
    if not has_chat_template(tokenizer):
        log_plain_format()

        def plain(example: dict[str, Any]) -> dict[str, str]:
            return {"prompt": plain_prompt(example["question"], system_prompt), "completion": " " + example["answer"]}

        return dataset.map(plain)

    system = [{"role": "system", "content": system_prompt}] if system_prompt is not None else []

    def convert(example: dict[str, Any]) -> dict[str, list[dict[str, str]]]:
        return {
            "prompt": [*system, {"role": "user", "content": example["question"]}],
            "completion": [{"role": "assistant", "content": example["answer"]}],
        }

    return dataset.map(convert)
