"""Conversations for a teacher with its own chat template: the student's rendered conversation, re-rendered with the
teacher's template, piece by piece.

Both templates are rendered once on a probe conversation (user, assistant, user, assistant, with marker contents);
the text between the markers is each template's *scaffolding*: what comes before the first message, between a user
and an assistant message, between an assistant and a user message, and after the last one. ChatML (SmolLM2)::

    "<|im_start|>system\\n...<|im_end|>\\n<|im_start|>user\\n" U "<|im_end|>\\n<|im_start|>assistant\\n" A "<|im_end|>\\n"

and Gemma's ``"<bos><start_of_turn>user\\n" U "<end_of_turn>\\n<start_of_turn>model\\n" A "<end_of_turn>\\n"``. A decoded
student row that starts with the student's opening scaffold is cut at its scaffolds into message contents; the
teacher gets the same contents between its own scaffolds. Contents are compared token by token (same text); each
scaffold is one group on both sides, so the positions before it (predicting the end of a turn: ``<|im_end|>`` vs
``<end_of_turn>``) are compared, by the sorted-probability part, and nothing inside it.

Limits: user/assistant turns only, as the probe renders them (a row with a system message, tools or another role
does not start with the probe's opening scaffold, or cuts differently, and is given to the teacher as plain text);
a content that contains a scaffold string is cut there.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

_MARKERS = ("\u27e6u1\u27e7", "\u27e6a1\u27e7", "\u27e6u2\u27e7", "\u27e6a2\u27e7")  # ⟦u1⟧ ...


def template_scaffolds(tokenizer: PreTrainedTokenizerBase) -> tuple[str, str, str, str] | None:
    """(opening, user->assistant, assistant->user, closing) scaffolds of ``tokenizer``'s chat template, or None when it
    has none or the probe does not cut into those four."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    roles = ("user", "assistant", "user", "assistant")
    try:
        text = tokenizer.apply_chat_template([{"role": r, "content": m} for r, m in zip(roles, _MARKERS)],
                                             tokenize=False)
    except Exception:  # noqa: BLE001 - templates raise anything (jinja errors, role checks)
        return None
    pieces, rest = [], text
    for marker in _MARKERS:
        before, found, rest = rest.partition(marker)
        if not found:
            return None
        pieces.append(before)
    opening, user_to_assistant, assistant_to_user, second = pieces
    if second != user_to_assistant or not all((opening, user_to_assistant, assistant_to_user)):
        return None
    return opening, user_to_assistant, assistant_to_user, rest


@dataclass
class Segment:
    """A stretch ``[start, end)`` of the student's text and the teacher's text for it (the same for a content)."""

    start: int
    end: int
    teacher_text: str
    is_content: bool


@dataclass
class ChatTranslation:
    student: tuple[str, str, str, str]
    teacher: tuple[str, str, str, str]

    @classmethod
    def between(cls, student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase) -> "ChatTranslation | None":
        """None unless both tokenizers have a chat template that the probe cuts (then conversations are translated)."""
        pair = template_scaffolds(student), template_scaffolds(teacher)
        return cls(*pair) if None not in pair else None

    def segments(self, text: str) -> list[Segment] | None:
        """``text`` (a decoded student row) cut into scaffolds and contents, or None if it is not a conversation of
        the probe's shape. A row cut short (truncation) may end inside a content or a scaffold."""
        opening, to_assistant, to_user, closing = self.student
        if not text.startswith(opening):
            return None
        segments = [Segment(0, len(opening), self.teacher[0], False)]
        position, speaker = len(opening), "user"
        while position < len(text):
            separator = to_assistant if speaker == "user" else to_user
            found = text.find(separator, position)
            ends = [(found, separator, 1 if speaker == "user" else 2)] if found >= 0 else []
            if speaker == "assistant" and (end := text.find(closing, position)) >= 0 and (found < 0 or end < found):
                ends = [(end, closing, 3)]
            stop = ends[0][0] if ends else len(text)
            if stop > position:
                segments.append(Segment(position, stop, text[position:stop], True))
            if not ends:
                break
            _, piece, which = ends[0]
            end = min(stop + len(piece), len(text))
            segments.append(Segment(stop, end, self.teacher[which], False))
            position, speaker = end, "assistant" if speaker == "user" else "user"
            if which == 3:
                if position < len(text):  # more after the closing scaffold: not the probe's shape
                    return None
                break
        return segments
