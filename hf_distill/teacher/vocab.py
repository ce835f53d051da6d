"""Checks that a teacher and a student speak the same vocabulary, and the width they share.

Real model pairs often differ only by padding rows of the embedding (Qwen2.5-7B has 152064 rows, Qwen2.5-0.5B
151936, both for a 151665-token tokenizer). Logit distillation is well defined over the tokenizer's vocabulary, so
both distributions are sliced to it. Genuinely different tokenizers are another matter: feeding the teacher the
student's ids would silently distil garbage, so that is an error unless the user asks for cross-tokenizer
distillation (hf_distill.cross_tokenizer), which gives the teacher its own ids of the same text.
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from hf_distill.utils.fingerprint import fingerprint


class VocabularyMismatchError(ValueError):
    pass


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of the token -> id map (special tokens included): equal fingerprints mean interchangeable ids."""
    vocab = sorted(tokenizer.get_vocab().items())
    return fingerprint(vocab, ensure_ascii=False)


def check_same_tokenizer(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase) -> None:
    if tokenizer_fingerprint(student) == tokenizer_fingerprint(teacher):
        return
    student_vocab, teacher_vocab = student.get_vocab(), teacher.get_vocab()
    differing = sorted(
        token for token in set(student_vocab) | set(teacher_vocab) if student_vocab.get(token) != teacher_vocab.get(token)
    )
    examples = ", ".join(
        f"{token!r}: student {student_vocab.get(token)} / teacher {teacher_vocab.get(token)}" for token in differing[:3]
    )
    raise VocabularyMismatchError(
        f"The teacher's tokenizer differs from the student's ({len(differing)} tokens map to different ids, e.g. "
        f"{examples}). Logit distillation compares distributions over the same token ids, so both models must share "
        "one tokenizer. Fix: pick a teacher and student of the same model family, or distil across tokenizers with "
        "`cross_tokenizer='align'` (span alignment by text offsets) or `cross_tokenizer='uld'` (sorted probabilities; "
        "`--cross_tokenizer` on the command line), or at the sequence level (`hf-distill traces`: train the student on "
        "text the teacher wrote)."
    )


def shared_vocab_size(student_rows: int, teacher_rows: int, tokenizer_size: int) -> int:
    """Width of the distributions to compare, given the output-embedding rows of both models.

    Equal widths are compared whole. Unequal widths are sliced to the tokenizer's size, which is only sound when
    every real token has a row in both models.
    """
    if student_rows == teacher_rows:
        return student_rows
    if tokenizer_size <= min(student_rows, teacher_rows):
        return tokenizer_size
    raise VocabularyMismatchError(
        f"The student's output layer has {student_rows} rows and the teacher's {teacher_rows}, but the tokenizer has "
        f"{tokenizer_size} tokens, so some tokens have no logit in one model. Fix: call "
        f"`model.resize_token_embeddings(len(tokenizer))` on the smaller model, or use the tokenizer both were trained "
        "with."
    )
