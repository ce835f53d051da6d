"""The data collator of cross-tokenizer training: each batch also carries the teacher's own ids of the same text and
the aligned positions of the two models (:mod:`hf_distill.cross_tokenizer.alignment`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from hf_distill.cross_tokenizer.alignment import PairTokenizer, aligned_positions

TEACHER_IDS = "teacher_input_ids"
TEACHER_MASK = "teacher_attention_mask"
ALIGNED_POSITIONS = "cross_tokenizer_positions"
BATCH_KEYS = (TEACHER_IDS, TEACHER_MASK, ALIGNED_POSITIONS)  # not inputs of the student's forward


@dataclass
class CrossTokenizerCollator:
    """Wraps the student's data collator. For each collated row (its tokens: where ``attention_mask`` is 1), adds the
    teacher's tokenization of the same text, right-padded (``teacher_input_ids``, ``teacher_attention_mask``,
    ``(B, Tt)``), and ``cross_tokenizer_positions`` ``(B, P, 2)``: (student position, teacher position) pairs in
    batch coordinates, padded with -1.

    >>> # collator = CrossTokenizerCollator(trainer.data_collator, PairTokenizer(student_tok, teacher_tok))
    >>> # batch = collator(examples); batch["teacher_input_ids"].shape -> (B, Tt)
    """

    collator: Callable
    pair: PairTokenizer

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.collator(examples)
        if "attention_mask" not in batch:
            raise ValueError("Cross-tokenizer distillation re-tokenizes each row for the teacher and needs the batch's "
                             "`attention_mask` (padding_free/packed batches have none). Fix: padding_free=False, "
                             "packing=False, or a collator that returns attention_mask.")
        teacher_rows, pairs = [], []
        for ids, mask in zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist()):
            kept = [i for i, keep in enumerate(mask) if keep]
            if kept and kept[-1] - kept[0] + 1 != len(kept):
                raise ValueError("Cross-tokenizer distillation needs each row's tokens in one contiguous run (left or "
                                 "right padding), not an attention_mask with holes.")
            first = kept[0] if kept else 0
            student, teacher = self.pair([ids[i] for i in kept])
            teacher_rows.append(teacher.ids)
            pairs.append([(first + s, t) for s, t in aligned_positions(student.spans, teacher.spans)])
        width = max((len(row) for row in teacher_rows), default=0)
        pad = self.pair.teacher.pad_token_id if self.pair.teacher.pad_token_id is not None else 0
        batch[TEACHER_IDS] = torch.tensor([row + [pad] * (width - len(row)) for row in teacher_rows], dtype=torch.long)
        batch[TEACHER_MASK] = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in teacher_rows],
                                           dtype=torch.long)
        count = max((len(row) for row in pairs), default=0)
        batch[ALIGNED_POSITIONS] = torch.tensor([row + [(-1, -1)] * (count - len(row)) for row in pairs],
                                                dtype=torch.long).reshape(len(pairs), count, 2)
        return batch
