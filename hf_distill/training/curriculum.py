"""Curriculum learning: visit training examples from easy to hard.

Switch it on with ``DistillationConfig(curriculum="num_steps")`` (or ``"length"``, ``"teacher_loss"``, or the name
of any numeric column); ``DistillationTrainer`` then draws batches from :class:`CurriculumSampler`.

Difficulty measures:

* ``num_steps``: the dataset's ``num_steps`` column if it has one (the embedded task does), else the number of
  equations in the completion (:func:`hf_distill.evaluation.logic_match.extract_steps`);
* ``length``: tokens per example;
* ``teacher_loss``: the live teacher's mean cross-entropy on the example's loss tokens (one forward pass over the
  training set before the first step): what the teacher finds hard to predict is taken to be hard.

The order is "sorted buckets": examples are sorted by difficulty (ties broken at random), cut into
``num_buckets`` equal runs, and shuffled inside each run, so batches move from easy to hard without becoming
constant. After ``curriculum_epochs`` epochs the sampler shuffles uniformly, as the default sampler does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from hf_distill.evaluation.logic_match import extract_steps

DIFFICULTIES = ("num_steps", "length", "teacher_loss")


class CurriculumSampler(Sampler[int]):
    """Yields dataset indices easy-to-hard during the first ``curriculum_epochs`` epochs, uniformly shuffled after.

    ``set_epoch`` (called by the Trainer at each epoch) makes every epoch's order a function of ``seed`` and the
    epoch, so a resumed run sees the same order.
    """

    def __init__(self, difficulty: Sequence[float], num_buckets: int = 10, curriculum_epochs: int = 1, seed: int = 0):
        if len(difficulty) == 0:
            raise ValueError("cannot build a curriculum over an empty dataset")
        if num_buckets < 1:
            raise ValueError(f"num_buckets must be at least 1, got {num_buckets}")
        self.difficulty = torch.as_tensor(difficulty, dtype=torch.float64)
        self.num_buckets, self.curriculum_epochs, self.seed, self.epoch = num_buckets, curriculum_epochs, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.difficulty)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        n = len(self.difficulty)
        if self.epoch >= self.curriculum_epochs:
            yield from torch.randperm(n, generator=generator).tolist()
            return
        tie_break = torch.rand(n, generator=generator, dtype=torch.float64)
        order = torch.from_numpy(np.lexsort((tie_break.numpy(), self.difficulty.numpy())))  # by difficulty, then tie
        for bucket in torch.tensor_split(order, min(self.num_buckets, n)):
            yield from bucket[torch.randperm(len(bucket), generator=generator)].tolist()


def steps_difficulty(dataset) -> list[float]:
    """``num_steps`` if the dataset has it, else the number of equations in each completion (or answer)."""
    if "num_steps" in dataset.column_names:
        return [float(n) for n in dataset["num_steps"]]
    column = next((c for c in ("completion", "answer") if c in dataset.column_names), None)
    if column is None:
        raise ValueError(f"curriculum='num_steps' needs a `num_steps`, `completion` or `answer` column; the dataset "
                         f"has {dataset.column_names}. Use curriculum='length' or 'teacher_loss' instead.")
    return [float(len(extract_steps(_text(value)))) for value in dataset[column]]


def length_difficulty(dataset, tokenizer=None) -> list[float]:
    """Tokens per example: ``input_ids`` when tokenized, else the tokenized prompt + completion text."""
    if "input_ids" in dataset.column_names:
        return [float(len(ids)) for ids in dataset["input_ids"]]
    if tokenizer is None or "completion" not in dataset.column_names:
        raise ValueError("curriculum='length' needs `input_ids`, or `completion` text and a tokenizer")
    prompts = dataset["prompt"] if "prompt" in dataset.column_names else [""] * len(dataset)
    return [float(len(tokenizer(_text(p) + _text(c))["input_ids"])) for p, c in zip(prompts, dataset["completion"])]


@torch.no_grad()
def teacher_loss_difficulty(teacher: nn.Module, dataset, collator, batch_size: int = 8) -> list[float]:
    """The teacher's mean next-token cross-entropy on each example's loss tokens (labels != -100)."""
    was_training, device = teacher.training, next(teacher.parameters()).device
    teacher.eval()
    losses: list[float] = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collator):
        labels = batch["labels"][:, 1:].to(device)  # (B, T-1)
        logits = teacher(input_ids=batch["input_ids"].to(device),
                         attention_mask=batch.get("attention_mask", torch.ones_like(batch["input_ids"])).to(device)
                         ).logits[:, :-1].float()  # (B, T-1, V)
        token_loss = nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        counts = (labels != -100).sum(1).clamp(min=1)
        losses.extend((token_loss.sum(1) / counts).tolist())
    teacher.train(was_training)
    return losses


def curriculum_sampler(trainer, dataset) -> CurriculumSampler:
    """The sampler for ``trainer.args.curriculum`` over ``dataset`` (the train dataset with unused columns removed;
    columns such as ``num_steps`` are read from ``trainer.train_dataset``, which still has them)."""
    args, by = trainer.args, trainer.args.curriculum
    full = trainer.train_dataset if len(trainer.train_dataset) == len(dataset) else dataset
    if by == "num_steps":
        difficulty = steps_difficulty(full)
    elif by == "length":
        difficulty = length_difficulty(dataset, trainer.processing_class)
    elif by == "teacher_loss":
        teacher = getattr(trainer, "teacher_model", None)
        if teacher is None:
            raise ValueError("curriculum='teacher_loss' needs a live teacher (`teacher_model=`), not a teacher cache: "
                             "use curriculum='length' or 'num_steps' with a cache.")
        difficulty = teacher_loss_difficulty(teacher, dataset, trainer.data_collator, args.per_device_train_batch_size)
    elif by in full.column_names:
        difficulty = [float(value) for value in full[by]]
    else:
        raise ValueError(f"curriculum={by!r} is neither one of {DIFFICULTIES} nor a column of the train dataset "
                         f"({full.column_names})")
    return CurriculumSampler(difficulty, curriculum_epochs=args.curriculum_epochs, seed=args.data_seed or args.seed)


def _text(value) -> str:
    """A plain string, or the contents of a conversational list of messages."""
    return value if isinstance(value, str) else "".join(message["content"] for message in value)
