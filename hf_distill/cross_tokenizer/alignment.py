"""One text, two tokenizations, and the positions where both models have read exactly the same text.

The student's token ids are decoded back to text; the teacher tokenizes that text itself (its own ids, its own
beginning-of-text token), and both tokenizations keep the character span of every token in the shared text. Groups
of tokens then cover the same span: a group ends wherever a student token and a teacher token end at the same
character. For the known sentence of the tests (SmolLM2 / Gemma-3)::

    student  N | atal | ia | Ġsold | ... | Ġunbelie  vable | ...
    teacher  <bos> Natal | ia | ▁sold | ... | ▁unbelievable | ...

Before each group both models have read the same text, so the student's next-token distribution at the token
before the group and the teacher's at its token before the group are distributions of the same thing: that is one
*aligned position* (the student's label there is the group's first token). Tokens inside a longer group
("vable") have no teacher counterpart and get the hard-label CE only.

Special tokens: the student's end-of-text token stands for the teacher's (one token each, same span); a
beginning-of-text token of the student is skipped (no text), the teacher's own is added where its tokenizer adds it;
other special tokens are given to the teacher as the text they decode to. Conversations, where both tokenizers have a
chat template, are re-rendered with the teacher's (:mod:`hf_distill.cross_tokenizer.chat`): each template's
scaffolding is one group on each side, the message contents are aligned as above.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from hf_distill.cross_tokenizer.chat import ChatTranslation


@dataclass
class Tokenization:
    """Token ids and the ``(start, end)`` character span of each in the shared text (``start == end``: no text)."""

    ids: list[int]
    spans: list[tuple[int, int]]


def decode_with_spans(tokenizer: PreTrainedTokenizerBase, ids: list[int]) -> tuple[str, list[tuple[int, int]]]:
    """The text of ``ids`` and each token's span in it. Re-encoding the decoded text gives the offsets directly when it
    gives the same ids back (nearly always); otherwise the spans come from decoding prefix by prefix."""
    text = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    if list(encoded["input_ids"]) == list(ids):
        return text, [tuple(span) for span in encoded["offset_mapping"]]
    spans, end = [], 0
    for i in range(len(ids)):  # quadratic, but only for the rare texts that do not re-tokenize the same way
        prefix = tokenizer.decode(ids[: i + 1], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        start, end = end, len(prefix) if not prefix.endswith("\ufffd") else end
        spans.append((start, max(start, end)))
    return text, spans


@dataclass
class PairTokenizer:
    """Turns a student example's ids into the shared text's two tokenizations.

    >>> # pair = PairTokenizer(smollm2_tokenizer, gemma_tokenizer); student, teacher = pair(ids)
    """

    student: PreTrainedTokenizerBase
    teacher: PreTrainedTokenizerBase

    def __post_init__(self):
        probe = self.teacher("a")["input_ids"]
        bos = self.teacher.bos_token_id
        self.teacher_bos = bos if bos is not None and len(probe) > 0 and probe[0] == bos else None
        self.chat = ChatTranslation.between(self.student, self.teacher)

    def __call__(self, student_ids: list[int]) -> tuple[Tokenization, Tokenization]:
        student_ids = [int(i) for i in student_ids]
        if self.chat is not None:
            text, spans = decode_with_spans(self.student, student_ids)
            segments = self.chat.segments(text)
            if segments is not None:
                return Tokenization(student_ids, spans), self._conversation(segments)
        student_spans: list[tuple[int, int]] = []
        teacher = Tokenization([], [])
        if self.teacher_bos is not None:
            teacher.ids.append(self.teacher_bos)
            teacher.spans.append((0, 0))
        text_length, run_start = 0, 0
        for i, token in enumerate([*student_ids, None]):  # None flushes the last run
            is_eos = token is not None and token == self.student.eos_token_id
            is_bos = token is not None and i == 0 and token == self.student.bos_token_id
            if token is not None and not is_eos and not is_bos:
                continue
            if run_start < i:  # the run of ordinary tokens before this one
                text_length = self._add_run(student_ids[run_start:i], text_length, student_spans, teacher)
            if is_bos:
                student_spans.append((0, 0))
            elif is_eos:  # one token on each side, over the student's spelling of it
                span = (text_length, text_length + len(self.student.eos_token))
                student_spans.append(span)
                text_length = span[1]
                if self.teacher.eos_token_id is not None:
                    teacher.ids.append(self.teacher.eos_token_id)
                    teacher.spans.append(span)
            run_start = i + 1
        return Tokenization(student_ids, student_spans), teacher

    def _conversation(self, segments) -> Tokenization:
        """The teacher's tokens of a conversation in its own template: contents at their student spans, each
        scaffold's tokens all over the student's scaffold (so that it is one group)."""
        teacher = Tokenization([], [])
        for segment in segments:
            encoded = self.teacher(segment.teacher_text, add_special_tokens=False, return_offsets_mapping=True)
            teacher.ids.extend(encoded["input_ids"])
            if segment.is_content:
                teacher.spans.extend((segment.start + a, segment.start + b) for a, b in encoded["offset_mapping"])
            else:
                teacher.spans.extend([(segment.start, segment.end)] * len(encoded["input_ids"]))
        return teacher

    def _add_run(self, ids: list[int], offset: int, student_spans: list, teacher: Tokenization) -> int:
        text, spans = decode_with_spans(self.student, ids)
        student_spans.extend((offset + a, offset + b) for a, b in spans)
        encoded = self.teacher(text, add_special_tokens=False, return_offsets_mapping=True)
        teacher.ids.extend(encoded["input_ids"])
        teacher.spans.extend((offset + a, offset + b) for a, b in encoded["offset_mapping"])
        return offset + len(text)


def span_groups(student_spans: list[tuple[int, int]], teacher_spans: list[tuple[int, int]]) -> list[tuple[list, list]]:
    """Groups of (student token indices, teacher token indices) covering the same text: a group ends at each
    character where a token of both ends. Tokens without text belong to no group.

    Naive version: ``boundaries = sorted({e for s, e in student if e > s} & {e for s, e in teacher if e > s})``; a
    token belongs to the first group whose boundary is at or after its end.
    """
    def ends(spans):
        return {end for start, end in spans if end > start}

    boundaries = sorted(ends(student_spans) & ends(teacher_spans))
    groups: list[tuple[list, list]] = [([], []) for _ in boundaries]
    for side, spans in ((0, student_spans), (1, teacher_spans)):
        for index, (start, end) in enumerate(spans):
            group = bisect.bisect_left(boundaries, end)
            if end > start and group < len(groups):
                groups[group][side].append(index)
    return [group for group in groups if group[0] and group[1]]


def aligned_positions(student_spans: list[tuple[int, int]], teacher_spans: list[tuple[int, int]]) -> list[tuple]:
    """``(student_position, teacher_position)`` pairs: the token of each model just before each group, where both
    have read the same text and predict the group's first token. A group at the very start of the student (no token
    before it) has none."""
    pairs = []
    for student_tokens, teacher_tokens in span_groups(student_spans, teacher_spans):
        if student_tokens[0] > 0 and teacher_tokens[0] > 0:
            pairs.append((student_tokens[0] - 1, teacher_tokens[0] - 1))
    return pairs
