"""Calibration batches for importance pruning: the first examples of a training set, tokenised as training sees them.

Accepts the dataset shapes the package trains on: question/answer rows (formatted by
:func:`~hf_distill.data.reasoning.to_prompt_completion`: the chat template where the tokenizer has one), TRL's
prompt/completion or messages (conversational or plain text), ``text``, or already tokenised ``input_ids``.
"""

from __future__ import annotations

from datasets import Dataset

from hf_distill.data.reasoning import to_prompt_completion
from hf_distill.models.importance import calibration_batches


def _text(tokenizer, row: dict) -> str:
    if "messages" in row:
        return tokenizer.apply_chat_template(row["messages"], tokenize=False)
    if "prompt" in row and "completion" in row:
        prompt, completion = row["prompt"], row["completion"]
        if isinstance(prompt, list):  # conversational
            return tokenizer.apply_chat_template([*prompt, *completion], tokenize=False)
        return prompt + completion
    if "text" in row:
        return row["text"]
    raise ValueError(f"calibration data needs question/answer, prompt/completion, messages, text or input_ids "
                     f"columns; got {sorted(row)}")


def calibration_data(dataset: Dataset, tokenizer, num_examples: int = 256, max_length: int = 256,
                     batch_size: int = 8) -> list[dict]:
    """``input_ids``/``attention_mask`` batches of the first ``num_examples`` rows, each cut to ``max_length``."""
    if len(dataset) == 0:
        raise ValueError("calibration data: the training set is empty")
    subset = dataset.select(range(min(num_examples, len(dataset))))
    if "input_ids" in subset.column_names:
        rows = [{"input_ids": list(ids)[:max_length]} for ids in subset["input_ids"]]
    else:
        if {"question", "answer"} <= set(subset.column_names) and "prompt" not in subset.column_names:
            subset = to_prompt_completion(subset, tokenizer=tokenizer)
        rows = [{"input_ids": tokenizer(_text(tokenizer, row), add_special_tokens=False)["input_ids"][:max_length]}
                for row in subset]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return calibration_batches(rows, batch_size, pad)
