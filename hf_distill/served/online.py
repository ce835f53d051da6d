"""Online KD from a served teacher: ``DistillationConfig(teacher_url=...)`` scores every batch over HTTP.

    args = DistillationConfig(..., teacher_url="http://host:8000/v1", teacher_served_model="big-teacher",
                              teacher_top_k=20, temperature=1.0)
    DistillationTrainer(student, args, train_dataset=data, processing_class=tokenizer).train()

The loss is the sparse top-k loss of a logit cache (the teacher's k most likely tokens plus a rest bucket), so a run
from a server, from a cache collected from that server, and from a cache collected in-process train the same way.
The collator is wrapped so that a batch's requests are sent as soon as it is collated: the Trainer's dataloader
(accelerate's) collates the next batch before the current step runs, so the server scores micro-batch i+1 while the
student trains on micro-batch i, and the step only waits for what is still in flight. With
``dataloader_num_workers > 0`` batches are collated in worker processes; requests are then sent when the step needs
them (no overlap).
"""

from __future__ import annotations

from dataclasses import dataclass

from hf_distill._compat import sft_tokenizer
from hf_distill.models.introspect import output_vocab_size
from hf_distill.served.teacher import ServedTeacher


@dataclass
class PrefetchingCollator:
    """Collates with ``collator``, then sends the batch's scoring requests to ``teacher`` without waiting."""

    collator: object
    teacher: ServedTeacher

    def __call__(self, examples):
        batch = self.collator(examples)
        self.teacher.prefetch(batch)
        return batch


def attach_served_teacher(trainer) -> None:
    """Give ``trainer`` a :class:`ServedTeacher` (``trainer.teacher``), its vocabulary and the sparse loss."""
    args = trainer.args
    if abs(args.temperature - ServedTeacher.temperature) > 1e-6:
        raise ValueError(f"A served teacher gives its raw log-probabilities (temperature 1), but temperature="
                         f"{args.temperature}: the top-k cannot be re-tempered exactly. Fix: temperature=1.0.")
    if args.packing or getattr(args, "padding_free", False):
        raise ValueError("A served teacher scores one example per request: set packing=False and padding_free=False.")
    if args.co_distill or args.feature_weight > 0 or args.attention_weight > 0 or args.cross_tokenizer is not None:
        raise ValueError("co_distill, feature/attention alignment and cross_tokenizer need the teacher's weights or "
                         "hidden states in this process; a served teacher gives log-probabilities only. Fix: load "
                         "the teacher with teacher_model_name_or_path, or turn those off.")
    tokenizer = sft_tokenizer(trainer)
    vocab = len(tokenizer)
    if output_vocab_size(trainer.model) < vocab:
        raise ValueError(f"The student's output layer has {output_vocab_size(trainer.model)} rows, its tokenizer "
                         f"{vocab} tokens. Fix: student.resize_token_embeddings(len(tokenizer)).")
    teacher = ServedTeacher.from_args(args, tokenizer)
    trainer.teacher, trainer.vocab_size = teacher, vocab
    trainer.loss_spec = args.loss_spec(vocab, sparse=True)
    trainer.data_collator = PrefetchingCollator(trainer.data_collator, teacher)
