"""The tokens two vocabularies spell the same way: the exact part of span alignment (``cross_tokenizer="align"``).

A token's spelling is the text it adds when it follows other text, so that ByteLevel's ``Ġthe`` (SmolLM2, GPT-2,
Llama 3, Qwen) and SentencePiece's ``▁the`` (Gemma, Llama 2, Mistral) are both `` the``::

    surface(id) = decode([anchor, id])[len(decode([anchor])):]      # anchor: the token of "a"

(decoded after an anchor because a Metaspace decoder strips the leading space of the first token). Tokens that
decode to no text or to a part of a UTF-8 character (``\\ufffd``), and special/added tokens, have no spelling;
byte-fallback duplicates (Gemma's ``<0x41>`` is also ``A``) give way to the shortest token string. The end-of-text
tokens of both (their ``eos_token``) are matched to each other. Built once per tokenizer pair (a few seconds at
Gemma's 262k tokens) and kept.
"""

from __future__ import annotations

import functools

from transformers import PreTrainedTokenizerBase

from hf_distill.losses.cross_tokenizer import SharedVocabulary


def token_surfaces(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Spelling -> token id, for every token that has one (see the module docstring)."""
    backend = require_fast(tokenizer, "map the two vocabularies").backend_tokenizer
    anchor = tokenizer.encode("a", add_special_tokens=False)[-1]
    prefix = backend.decode([anchor], skip_special_tokens=False)
    size = len(tokenizer)
    decoded = backend.decode_batch([[anchor, i] for i in range(size)], skip_special_tokens=False)
    pieces = tokenizer.convert_ids_to_tokens(list(range(size)))
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    surfaces: dict[str, int] = {}
    for token_id, (text, piece) in enumerate(zip(decoded, pieces)):
        if token_id in special or not text.startswith(prefix):
            continue
        surface = text[len(prefix):]
        if not surface or "\ufffd" in surface:
            continue
        known = surfaces.get(surface)
        if known is None or len(piece or "") < len(pieces[known] or ""):
            surfaces[surface] = token_id
    return surfaces


@functools.lru_cache(maxsize=4)
def shared_token_pairs(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase) -> dict[int, int]:
    """Student id -> teacher id for the tokens both spell the same way, plus the two end-of-text tokens."""
    student_surfaces, teacher_surfaces = token_surfaces(student), token_surfaces(teacher)
    pairs = {student_id: teacher_surfaces[text] for text, student_id in student_surfaces.items()
             if text in teacher_surfaces}
    if student.eos_token_id is not None and teacher.eos_token_id is not None:
        pairs[student.eos_token_id] = teacher.eos_token_id
    return pairs


def shared_vocabulary(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase, student_rows: int,
                      teacher_rows: int) -> SharedVocabulary:
    """:func:`shared_token_pairs` over the two models' output rows (padding rows of an embedding are unshared)."""
    pairs = {s: t for s, t in shared_token_pairs(student, teacher).items() if s < student_rows and t < teacher_rows}
    return SharedVocabulary.from_pairs(pairs, student_rows, teacher_rows)


def require_fast(tokenizer: PreTrainedTokenizerBase, purpose: str) -> PreTrainedTokenizerBase:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"Cross-tokenizer distillation needs fast tokenizers (offsets, decoding) to {purpose}; "
                         f"{type(tokenizer).__name__} is not one. Fix: load it with AutoTokenizer(..., use_fast=True).")
    return tokenizer
