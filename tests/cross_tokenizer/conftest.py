"""Fixtures of the cross-tokenizer tests: a SentencePiece-style tokenizer trained here (Unigram, Metaspace, a
beginning-of-text token added like Gemma's) to pair with the ByteLevel BPE of tests/helpers.py, and the real Gemma-3
and SmolLM2 tokenizers, each loaded once per session (Gemma's 262k-token one takes ~10-18 s)."""

from __future__ import annotations

import pytest
from cross_tokenizer_helpers import (
    CHATML,
    GEMMA_TEMPLATE,
    make_bytelevel_tokenizer,
    make_metaspace_tokenizer,
    with_chat_template,
)
from transformers import AutoTokenizer, PreTrainedTokenizerFast


@pytest.fixture(scope="session")
def metaspace_tokenizer() -> PreTrainedTokenizerFast:
    return make_metaspace_tokenizer()


@pytest.fixture(scope="session")
def gemma_tokenizer(gemma3_dir):
    return AutoTokenizer.from_pretrained(gemma3_dir)


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_dir):
    return AutoTokenizer.from_pretrained(smollm2_dir)


@pytest.fixture(scope="session")
def bytelevel_tokenizer() -> PreTrainedTokenizerFast:
    return make_bytelevel_tokenizer()


@pytest.fixture(scope="session")
def chat_pair() -> tuple[PreTrainedTokenizerFast, PreTrainedTokenizerFast]:
    """A ChatML student tokenizer and a teacher tokenizer with a Gemma-like template (fresh copies: the session's
    other tokenizers stay template-free)."""
    student = with_chat_template(make_bytelevel_tokenizer(), CHATML, ["<|im_start|>", "<|im_end|>"])
    teacher = with_chat_template(make_metaspace_tokenizer(), GEMMA_TEMPLATE, ["<start_of_turn>", "<end_of_turn>"])
    return student, teacher
