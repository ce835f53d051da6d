"""Which micro-batches are completed at training time, by whom, and the swap itself.

`DistillationTrainer.get_batch_samples` hands each optimizer step's micro-batches to :meth:`OnPolicyMixer.complete`
before transformers counts ``num_items_in_batch``, so the one normalisation rule (divide by the loss tokens of the
whole accumulated batch) counts the generated tokens. Per micro-batch ``i`` of step ``s``::

    if coin(seed, s, i) < lmbda: batch = student.sample(prompts(batch))     # on-policy
    elif seq_kd:                 batch = teacher.sample(prompts(batch))     # sequence-level KD
    # else: the dataset's completions, untouched

The coin depends on ``(seed, s, i)`` only: all ranks complete the same micro-batches (no rank waits on another's
generation), and a resumed run makes the same choices. The teacher then scores every batch through its one
``.signal(...)`` path, whatever wrote the completion and wherever the teacher lives (a live or a served one).
"""

from __future__ import annotations

import contextlib
import itertools
import random
from dataclasses import dataclass

import datasets
import torch

from hf_distill._compat import (
    log_metric,
    remove_unused_columns,
    sft_tokenizer,
    signature_columns,
)
from hf_distill.on_policy.batches import prompts_of
from hf_distill.on_policy.generation import (
    end_of_sequence_ids,
    sample_completions,
    sampling_config,
    sampling_seed,
)


@dataclass
class GeneratedSample:
    """The first rows of the latest generated micro-batch, kept for the completions log."""

    step: int
    source: str  # "student" or "teacher"
    input_ids: torch.Tensor  # (n, T)
    labels: torch.Tensor  # (n, T)


class OnPolicyMixer:
    """Built by :func:`attach_on_policy`; ``trainer`` gives the student (``model_wrapped``), the teacher and the
    accelerator at call time."""

    def __init__(self, trainer):
        self.trainer, self.args = trainer, trainer.args
        tokenizer = sft_tokenizer(trainer)
        self.eos_token_ids = end_of_sequence_ids(tokenizer, trainer.accelerator.unwrap_model(trainer.model))
        self.config = sampling_config(self.args, self.eos_token_ids, tokenizer.pad_token_id)
        self.latest: GeneratedSample | None = None

    def source(self, step: int, micro_batch: int) -> str | None:
        """Who completes micro-batch ``micro_batch`` of optimizer step ``step``: "student", "teacher" or None."""
        coin = random.Random(f"hf_distill.lmbda:{self.args.seed}:{step}:{micro_batch}").random()
        if coin < self.args.lmbda:  # never for lmbda = 0, always for 1
            return "student"
        return "teacher" if self.args.seq_kd else None

    def complete(self, batches: list[dict], step: int) -> list[dict]:
        out = []
        for micro_batch, batch in enumerate(batches):
            who = self.source(step, micro_batch)
            if who is None:
                out.append(batch)
                continue
            seed = sampling_seed(self.args.seed, self.args.process_index, step, micro_batch)
            with self._writer(who) as (model, precision):
                generated = sample_completions(model, prompts_of(batch), self.config, self.args.num_generations, seed,
                                               precision)
            self._record(who, generated, step)
            out.append(generated)
        return out

    @contextlib.contextmanager
    def _writer(self, who: str):
        """The model that writes the completion and the precision it runs in: the student as it trains (gradient
        checkpointing off for ``generate``, DeepSpeed ZeRO-3 weights gathered, by TRL's helper), or the teacher."""
        trainer = self.trainer
        if who == "teacher":
            teacher = trainer.teacher
            yield teacher.unwrapped, trainer.accelerator.autocast() if teacher.follows_autocast() else None
            return
        from trl.models import unwrap_model_for_generation

        checkpointing = self.args.gradient_checkpointing_kwargs
        with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator,
                                         gradient_checkpointing_kwargs=checkpointing) as model:
            yield model, trainer.accelerator.autocast()

    def _record(self, who: str, generated: dict, step: int) -> None:
        lengths = (generated["labels"] != -100).sum(dim=1).float()  # (B,) completion tokens, EOS included
        log_metric(self.trainer, "train", "completion_length", lengths.mean().item())
        log_metric(self.trainer, "train", "completions_clipped",
                   (lengths >= self.args.max_new_tokens).float().mean().item())
        if self.args.log_completions:
            n = self.args.num_completions_to_print
            self.latest = GeneratedSample(step, who, generated["input_ids"][:n].cpu(), generated["labels"][:n].cpu())


def attach_on_policy(trainer) -> OnPolicyMixer | None:
    """The mixer for a run that completes batches at training time (None otherwise: today's code path), after the
    checks that need the trainer: a teacher that can score (and, for seq_kd, write) completions, a setup the student
    can generate under, and data with prompts."""
    args = trainer.args
    if not args.generates_completions:
        return None
    from hf_distill.teacher.live import LiveTeacher

    if args.seq_kd and not isinstance(trainer.teacher, LiveTeacher):
        raise ValueError("seq_kd has the teacher write completions, which needs a live teacher model "
                         f"(got {type(trainer.teacher).__name__}): pass teacher_model=, or set seq_kd=False.")
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        raise ValueError("On-policy batches (lmbda > 0 or seq_kd) are generated on one device or under DDP; "
                         "DeepSpeed and FSDP are not supported yet: launch with DDP, or set lmbda=0 and seq_kd=False.")
    prompts_of(_trial_batch(trainer))  # data without prompts fails here, not at the first generated step
    mixer = OnPolicyMixer(trainer)
    if args.log_completions:
        from hf_distill.on_policy.completions_log import CompletionsLog

        trainer.add_callback(CompletionsLog(mixer, sft_tokenizer(trainer)))
    return mixer


def refuse_cache_when_generating(args) -> None:
    """Called where a teacher cache is attached (``DistillationTrainer._use_cache``): also for ``teacher_cache=``
    given to the trainer, which the config's own check does not see."""
    if args.generates_completions:
        raise ValueError(
            f"lmbda={args.lmbda}, seq_kd={args.seq_kd} trains on completions sampled during training, and a teacher "
            "cache holds the teacher's log-probs for the dataset's tokens only: it cannot score a completion that did "
            "not exist when it was written. Use a live teacher (teacher_model=) or a served one (teacher_url=), or set "
            "lmbda=0 and seq_kd=False to train on the cached dataset completions."
        )


def _trial_batch(trainer, num_examples: int = 2) -> dict:
    """The first examples collated as the train dataloader will (the columns it keeps, the trainer's collator)."""
    dataset = trainer.train_dataset
    if isinstance(dataset, datasets.Dataset):
        examples = list(remove_unused_columns(trainer, dataset.select(range(min(num_examples, len(dataset)))),
                                              "training"))
    else:
        examples = list(itertools.islice(iter(dataset), num_examples))
        if trainer.args.remove_unused_columns:
            columns = signature_columns(trainer)
            examples = [{k: v for k, v in ex.items() if k in columns} for ex in examples]
    return trainer.data_collator(examples)
