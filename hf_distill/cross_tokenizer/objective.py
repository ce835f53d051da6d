"""The cross-tokenizer objective and its wiring into `DistillationTrainer` (``cross_tokenizer="uld"`` / ``"align"``).

Per batch: the student runs on its own ids, the teacher on its own ids of the same text (added by
:class:`~hf_distill.cross_tokenizer.collator.CrossTokenizerCollator`); the teacher's final states are taken at the
aligned positions only, and :func:`hf_distill.losses.cross_tokenizer.cross_tokenizer_loss` compares the two
distributions there, chunk by chunk, with the student's hard-label CE on all its loss tokens.
"""

from __future__ import annotations

import torch
from torch import nn

from hf_distill._compat import sft_tokenizer
from hf_distill.cross_tokenizer.alignment import PairTokenizer
from hf_distill.cross_tokenizer.collator import (
    ALIGNED_POSITIONS,
    BATCH_KEYS,
    TEACHER_IDS,
    TEACHER_MASK,
    CrossTokenizerCollator,
)
from hf_distill.cross_tokenizer.vocabulary import require_fast, shared_vocabulary
from hf_distill.losses import LossOutput
from hf_distill.losses.chunked import autocast_head
from hf_distill.losses.cross_tokenizer import (
    CrossTokenizerSpec,
    SharedVocabulary,
    TeacherRows,
    cross_tokenizer_loss,
)
from hf_distill.models.introspect import (
    final_hidden_states,
    final_output,
    has_plain_output_head,
    loss_rows,
    output_head,
    output_vocab_size,
)
from hf_distill.teacher.live import LiveTeacher


class CrossTokenizerObjective:
    """``(student, inputs, num_items_in_batch) -> LossOutput`` for a teacher with another tokenizer."""

    def __init__(self, teacher: LiveTeacher, vocab: SharedVocabulary, spec: CrossTokenizerSpec):
        self.teacher, self.vocab, self.spec = teacher, vocab, spec

    def __call__(self, student: nn.Module, inputs: dict, num_items_in_batch) -> LossOutput:
        if any(key not in inputs for key in BATCH_KEYS):
            raise ValueError(f"A cross-tokenizer batch carries {BATCH_KEYS} (added by CrossTokenizerCollator, which "
                             "attach_cross_tokenizer puts around the trainer's data_collator); this one has "
                             f"{sorted(inputs)}. Fix: keep trainer.data_collator as set up, or wrap yours with it.")
        # Taken out of the batch: the trainer's own forward of the student (evaluation) must not see them.
        extra = {key: inputs.pop(key) for key in BATCH_KEYS}
        use_head = has_plain_output_head(student)
        states = final_hidden_states(student, inputs, use_head)  # (B, T, H) or (B, T, Vs)
        device = states.device
        targets = inputs["labels"][:, 1:].to(device)  # (B, T-1)
        loss_mask = targets != -100
        rows, targets = loss_rows(states, loss_mask), targets[loss_mask]  # (N, H), (N,)
        teacher = self._teacher_rows(extra, loss_mask)
        if self.vocab.student_ids.device != device:
            self.vocab = self.vocab.to(device)
        weight, bias = output_head(student) if use_head else (None, None)
        return cross_tokenizer_loss(rows, weight, bias, teacher, targets, self.vocab, self.spec, num_items_in_batch)

    @torch.no_grad()
    def _teacher_rows(self, extra: dict, loss_mask: torch.Tensor) -> TeacherRows:
        """The teacher's final states at the aligned positions whose student token carries loss, and for each student
        loss token its row among them (-1: none)."""
        device = loss_mask.device
        pairs = extra[ALIGNED_POSITIONS].to(device)  # (B, P, 2)
        batch_index = torch.arange(pairs.shape[0], device=device)[:, None].expand(pairs.shape[:2])  # (B, P)
        student_pos, teacher_pos = pairs[..., 0], pairs[..., 1]
        valid = student_pos >= 0
        valid[valid.clone()] = loss_mask[batch_index[valid], student_pos[valid]]
        row_of = torch.full(loss_mask.shape, -1, dtype=torch.long, device=device)  # (B, T-1)
        row_of[loss_mask] = torch.arange(int(loss_mask.sum()), device=device)
        index = torch.full((int(loss_mask.sum()),), -1, dtype=torch.long, device=device)  # (N,)
        index[row_of[batch_index[valid], student_pos[valid]]] = torch.arange(int(valid.sum()), device=device)
        outputs = self.teacher.outputs({"input_ids": extra[TEACHER_IDS], "attention_mask": extra[TEACHER_MASK]})
        states = final_output(outputs, self.teacher.use_head)  # (B, Tt, Ht), or (B, Tt, Vt) without a plain head
        teacher_device = states.device
        hidden = states[batch_index[valid].to(teacher_device), teacher_pos[valid].to(teacher_device)]  # (Na, Ht)
        weight, bias = output_head(self.teacher.unwrapped) if self.teacher.use_head else (None, None)
        if self.teacher.follows_autocast():
            weight, bias = autocast_head(weight, bias)
        return TeacherRows(index, hidden, weight, bias)


def cross_tokenizer_spec(args, student_vocab: int, teacher_vocab: int) -> CrossTokenizerSpec:
    return CrossTokenizerSpec(args.cross_tokenizer, args.temperature, args.alpha, args.cross_tokenizer_top_k,
                              args.kd_chunk_size)


PROBE_TEXT = "Natalia sold 48 clips in April, and then half as many in May. How many?"


def check_decodes_back(tokenizer) -> None:
    """The teacher reads the text the student's ids decode to: that must be the text they were made from."""
    decoded = tokenizer.decode(tokenizer.encode(PROBE_TEXT, add_special_tokens=False), skip_special_tokens=False,
                               clean_up_tokenization_spaces=False)
    if decoded != PROBE_TEXT:
        raise ValueError(f"The student's tokenizer does not decode its ids back to their text ({PROBE_TEXT!r} -> "
                         f"{decoded!r}), so the teacher cannot be given the same text. Fix: give the tokenizer its "
                         "decoder (e.g. tokenizers.decoders.ByteLevel() for a ByteLevel BPE).")


def attach_cross_tokenizer(trainer, teacher: nn.Module, teacher_tokenizer) -> None:
    """Set up ``trainer`` for a teacher whose tokenizer differs from the student's: the teacher (placed like any live
    teacher), the shared vocabulary (built once), the loss spec, the collator that adds the teacher's ids, and the
    objective the trainer calls in place of the logit KD."""
    args = trainer.args
    if teacher_tokenizer is None:
        raise ValueError(f"cross_tokenizer={args.cross_tokenizer!r} tokenizes each example for the teacher too, and no "
                         "tokenizer was found beside the teacher. Fix: pass the teacher's tokenizer as "
                         "`teacher_processing_class=` (e.g. AutoTokenizer.from_pretrained(teacher_path)).")
    student_tokenizer = require_fast(sft_tokenizer(trainer), "align the two tokenizations")
    require_fast(teacher_tokenizer, "align the two tokenizations")
    check_decodes_back(student_tokenizer)
    student_rows, teacher_rows = output_vocab_size(trainer.model), output_vocab_size(teacher)
    vocab = shared_vocabulary(student_tokenizer, teacher_tokenizer, student_rows, teacher_rows)
    trainer.teacher = trainer._place_teacher(teacher, args.teacher_device)
    trainer.vocab_size = teacher_rows
    trainer.loss_spec = cross_tokenizer_spec(args, student_rows, teacher_rows)
    pair = PairTokenizer(student_tokenizer, teacher_tokenizer)
    trainer.data_collator = CrossTokenizerCollator(trainer.data_collator, pair)
    trainer._objective = CrossTokenizerObjective(trainer.teacher, vocab, trainer.loss_spec)
