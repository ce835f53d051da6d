"""`TraceCollator`: batches of prompt + trace with the prompt masked, tokenized on the fly.

Hard-label training on traces is plain next-token cross-entropy on the rationale and the answer. The same labels
drive the KD term of :class:`~hf_distill.DistillationTrainer`, so ``alpha < 1`` with a teacher distils the
teacher's distributions on exactly the trace tokens in the same run.

The collator reads the text columns of :func:`~hf_distill.traces.collect_traces`'s output (conversational, or plain
strings), so the dataset needs no preparation pass and keeps its provenance columns. It tokenizes like TRL's
``SFTTrainer`` preparation does (chat template with the generation prompt for the prompt; the completion from where
prompt and full conversation diverge; EOS appended to plain-string completions), which a test checks token for
token. Tell the trainer not to prepare or prune the text columns::

    args = DistillationConfig(..., remove_unused_columns=False, dataset_kwargs={"skip_prepare_dataset": True})
    DistillationTrainer(student, args, train_dataset=traces, data_collator=TraceCollator(tokenizer), ...)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


@dataclass
class TraceCollator:
    """Tokenize ``prompt``/``completion`` examples; labels are -100 on prompt and padding tokens.

    Example::

        >>> batch = TraceCollator(tokenizer)([{"prompt": [{"role": "user", "content": "2+3?"}],
        ...                                    "completion": [{"role": "assistant", "content": "2+3 = 5\\n#### 5"}]}])
        >>> sorted(batch)
        ['attention_mask', 'input_ids', 'labels']

    ``max_length`` truncates from the end (the prompt is kept whole when it fits); ``pad_to_multiple_of`` rounds
    the padded length up, for tensor cores.
    """

    tokenizer: PreTrainedTokenizerBase
    max_length: int | None = 1024
    pad_to_multiple_of: int | None = None

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        rows = [self._tokenize(example) for example in examples]
        width = max(len(ids) for ids, _ in rows)
        if self.pad_to_multiple_of:
            width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)  # (B, T)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)  # (B, T)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, T)
        for row, (ids, prompt_length) in enumerate(rows):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, prompt_length : len(ids)] = torch.tensor(ids[prompt_length:], dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def _tokenize(self, example: dict) -> tuple[list[int], int]:
        """Token ids of prompt + completion and the length of the prompt part."""
        if "prompt" not in example or "completion" not in example:
            raise ValueError(
                f"TraceCollator needs `prompt` and `completion` text columns, got {sorted(example)}. If the trainer "
                "tokenized or pruned them, set remove_unused_columns=False and dataset_kwargs={'skip_prepare_dataset': "
                "True} in the config."
            )
        prompt, completion = example["prompt"], example["completion"]
        if isinstance(prompt, list):  # conversational
            prompt_ids = self._chat(prompt, add_generation_prompt=True)
            full_ids = self._chat(prompt + completion, add_generation_prompt=False)
        else:
            eos = self.tokenizer.eos_token or ""
            completion = completion if completion.endswith(eos) else completion + eos
            prompt_ids = self.tokenizer(prompt)["input_ids"]
            full_ids = self.tokenizer(prompt + completion)["input_ids"]
        prompt_length = _common_prefix_length(prompt_ids, full_ids)
        if self.max_length is not None:
            full_ids = full_ids[: self.max_length]
        return full_ids, min(prompt_length, len(full_ids))

    def _chat(self, messages: list[dict], add_generation_prompt: bool) -> list[int]:
        return list(self.tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                                       add_generation_prompt=add_generation_prompt)["input_ids"])


def _common_prefix_length(a: list[int], b: list[int]) -> int:
    """Where the completion starts: some chat templates render the prompt alone differently (as TRL handles it)."""
    length = 0
    for x, y in zip(a, b):
        if x != y:
            break
        length += 1
    return length
