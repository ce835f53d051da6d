"""The data collator of cached training: each batch carries its examples' cache keys."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from hf_distill.cache.format import CACHE_KEY, example_key


@dataclass
class KeyedCollator:
    """Wraps a data collator and adds each example's cache key to the batch (under ``CACHE_KEY``).

    >>> collator = KeyedCollator(lambda examples: {"size": len(examples)})
    >>> batch = collator([{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}])
    >>> batch["size"], batch[CACHE_KEY].shape
    (1, torch.Size([1]))
    """

    collator: Callable

    def __call__(self, examples: list[dict]) -> dict:
        keys = [example_key(example["input_ids"], example.get("labels")) for example in examples]
        batch = self.collator(examples)
        batch[CACHE_KEY] = torch.tensor(keys, dtype=torch.int64)
        return batch
