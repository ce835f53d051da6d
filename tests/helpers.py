"""Helpers shared by the tests (``from helpers import ...``; the fixtures built on them are in conftest.py): tiny Llamas
built from a config, a tokenizer trained here, tiny configs and data, a distillation-trainer factory. Nothing is
downloaded."""

from __future__ import annotations

import contextlib
import os

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from torch import nn
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback

from hf_distill.models.build import random_llama

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
    """A tiny untied Llama (4 heads, 2 KV heads, MLP 2x hidden)."""
    config = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                  eos_token_id=1, bos_token_id=None, tie_word_embeddings=False)
    return random_llama(seed, **{**config, **overrides})


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



class GradCapture(TrainerCallback):
    """Records the gradients each optimizer step is about to apply (``grads``: one dict per step)."""

    def __init__(self):
        self.grads: list[dict] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({name: p.grad.detach().clone() for name, p in model.named_parameters()
                           if p.grad is not None})


def distillation_trainer(tmp_path, tokenizer, student=None, teacher=None, dataset=None, **config):
    """A DistillationTrainer on tiny Llamas (a 32x1 student, a 64x2 teacher unless given) over prompt-completion data,
    configured by :func:`tiny_config` with ``config``."""
    from hf_distill import DistillationTrainer

    student = student if student is not None else make_llama(len(tokenizer), 32, 1, seed=1)
    teacher = teacher if teacher is not None else make_llama(len(tokenizer), 64, 2, seed=2)
    dataset = dataset if dataset is not None else prompt_completion()
    return DistillationTrainer(student, tiny_config(tmp_path, **config), train_dataset=dataset,
                               processing_class=tokenizer, teacher_model=teacher)


class _PassThrough(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


@contextlib.contextmanager
def skipping_layers(layers: nn.ModuleList, keep: list[int]):
    """The reference for a layer drop: every layer not in ``keep`` passes the residual stream through, the kept ones
    keep their own index (hence their sliding window, RoPE or NoPE, ...)."""
    original = list(layers)
    for i in range(len(layers)):
        if i not in keep:
            layers[i] = _PassThrough()
    try:
        yield
    finally:
        for i, layer in enumerate(original):
            layers[i] = layer


def saved_student_and_teacher(tmp_path):
    """A 16x1 student and a 32x1 teacher saved with a shared byte-level BPE: local checkpoints for CLI tests."""
    from hf_distill.data.tokenizer import train_tokenizer
    from hf_distill.models.build import ModelSize, build_llama

    tokenizer = train_tokenizer(["Tom has 12 apples. He has 12+3 = <<12+3=15>>15 apples.\n#### 15"] * 20,
                                vocab_size=300)
    for name, size in (("student", ModelSize(16, 1, 2)), ("teacher", ModelSize(32, 1, 2))):
        build_llama(tokenizer, size).save_pretrained(tmp_path / name)
        tokenizer.save_pretrained(tmp_path / name)
    return tmp_path / "student", tmp_path / "teacher"


def save_arithmetic_teacher(folder, hidden: int = 32, **config):
    """A tiny 2-layer Llama and the cascade's byte-level BPE (with its chat template) trained on arithmetic problems,
    saved in ``folder`` as a cascade teacher."""
    from hf_distill.data.arithmetic import make_arithmetic_dataset
    from hf_distill.data.tokenizer import train_tokenizer

    data = make_arithmetic_dataset(n_train=64, n_test=0, seed=0)["train"]
    tokenizer = train_tokenizer(list(data["question"]) + list(data["answer"]), vocab_size=300)
    model = make_llama(len(tokenizer), hidden=hidden, layers=2, seed=0, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
