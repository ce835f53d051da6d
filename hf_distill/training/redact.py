"""Keep Hub tokens in memory only: never in ``training_args.bin``, a ``repr`` or a log line.

`Trainer` pickles the whole `TrainingArguments` into ``training_args.bin`` at every checkpoint and ``save_model``
(``torch.save(self.args, ...)``), and those files travel with checkpoints and model uploads. `TrainingArguments`
masks ``*_token`` fields in ``str``/``to_dict``, but every ``@dataclass`` subclass (TRL's ``SFTConfig``, ours)
regenerates a ``__repr__`` that prints them. :class:`RedactedTokens` closes both holes for the config that uses it,
while the live object keeps the token for ``push_to_hub``.
"""

from __future__ import annotations

import copy

from transformers import TrainingArguments

SECRET_FIELDS = ("hub_token",)
"""Fields that hold credentials. (Not every ``*_token`` field: ``eos_token``/``pad_token`` are plain settings.)"""


class RedactedTokens:
    """Mixin for a `TrainingArguments` dataclass: secrets are dropped when pickled, kept when copied in memory.

    Put it first among the bases and declare the dataclass with ``repr=False`` so that its ``__repr__`` is used.
    """

    def __getstate__(self) -> dict:  # pickle / torch.save: write None instead of the token
        return {**self.__dict__, **{name: None for name in SECRET_FIELDS if name in self.__dict__}}

    def __copy__(self):
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        return clone

    def __deepcopy__(self, memo: dict):
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        clone.__dict__.update(copy.deepcopy(self.__dict__, memo))
        return clone

    __repr__ = __str__ = TrainingArguments.__str__  # masks `*_token` values, unlike a regenerated dataclass repr
