"""Construction-time checks on data, so that bad input fails before training starts, not at step 1."""

from __future__ import annotations

import itertools

import datasets
from transformers import Trainer
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling as TRLCollator
from trl.trainer.sft_trainer import (
    DataCollatorForVisionLanguageModeling as TRLVisionCollator,
)

from hf_distill._compat import remove_unused_columns, signature_columns


def check_not_empty(dataset, name: str) -> None:
    if isinstance(dataset, datasets.Dataset) and len(dataset) == 0:
        raise ValueError(f"`{name}` is empty: there is nothing to distil on. Check the split and any filtering.")


def check_columns(dataset, text_field: str, name: str = "train_dataset") -> None:
    """Untokenized data must be in one of the formats `SFTTrainer` reads; otherwise it fails later with a KeyError."""
    columns = getattr(dataset, "column_names", None)
    if not columns or "input_ids" in columns or text_field in columns or "messages" in columns:
        return
    if "prompt" in columns and "completion" in columns:
        return
    raise ValueError(
        f"`{name}` has columns {columns}, none of the formats the trainer reads: `{text_field}` (plain text), "
        "`messages` (chat), `prompt` + `completion`, or tokenized `input_ids` (+ `labels`). Fix: rename the columns "
        "(`dataset.rename_columns({...})`) or set `dataset_text_field`; GSM8K-style question/answer data converts "
        "with `hf_distill.data.reasoning.to_prompt_completion`."
    )


def uses_own_collator(data_collator, train_dataset) -> bool:
    """A user collator over already tokenized data: the shape of a stock ``transformers.Trainer`` script."""
    if data_collator is None or isinstance(data_collator, (TRLCollator, TRLVisionCollator)):
        return False
    columns = getattr(train_dataset, "column_names", None) or []
    return "input_ids" in columns


def check_trial_batch(trainer: Trainer, num_examples: int = 2) -> None:
    """Collate the first examples exactly as the train dataloader will, and check the batch can be distilled."""
    dataset = trainer.train_dataset
    if isinstance(dataset, datasets.Dataset) and len(dataset) == 0:  # TRL drops examples left with no loss token
        raise ValueError(
            "No example of `train_dataset` has a token that carries loss: after tokenization every label is -100, so "
            "every example was dropped. Check `completion_only_loss` / `assistant_only_loss`, that completions are not "
            "truncated away by `max_length` (and `truncation_mode`), and that tokenized `labels` are not all -100."
        )
    if isinstance(dataset, datasets.Dataset):
        sample = remove_unused_columns(trainer, dataset.select(range(min(num_examples, len(dataset)))), "training")
        examples = list(sample)
    else:
        examples = list(itertools.islice(iter(dataset), num_examples))
        if trainer.args.remove_unused_columns:
            columns = signature_columns(trainer)
            examples = [{k: v for k, v in ex.items() if k in columns} for ex in examples]
    try:
        batch = trainer.data_collator(examples)
    except Exception as error:  # the collator's own message, with the fix for the common cause
        raise ValueError(
            f"The data collator cannot batch this dataset ({type(error).__name__}: {error}). Columns seen: "
            f"{sorted(examples[0]) if examples else []}. If the dataset is not tokenized (text/messages/prompt-"
            "completion), drop `data_collator=` and let the trainer tokenize it; if it is tokenized, use a collator "
            "that pads `input_ids` and produces `labels` (e.g. DataCollatorForLanguageModeling(tokenizer, mlm=False))."
        ) from error
    if "labels" not in batch:
        raise ValueError(
            f"Batches have no `labels` (keys: {sorted(batch)}). Distillation trains on the tokens whose label is not "
            "-100: use a collator that builds labels, e.g. DataCollatorForLanguageModeling(tokenizer, mlm=False)."
        )
    if not (batch["labels"][:, 1:] != -100).any():
        raise ValueError(
            "Every label in the first batch is -100, so no token carries loss. Check `completion_only_loss` / "
            "`assistant_only_loss` and that completions are not truncated away by `max_length`."
        )
