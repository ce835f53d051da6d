"""Helpers shared by the benchmark scripts: a word-level tokenizer, Llamas built from a config, a step timer.

Nothing here downloads: models are random, tokenizers are built in memory.
"""

from __future__ import annotations

import os
import platform
import time

import torch
from tokenizers import Tokenizer, models
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback

from hf_distill.models.build import random_llama


def word_tokenizer(vocab: int) -> PreTrainedTokenizerFast:
    """A tokenizer whose ids are the words ``w0 .. w{vocab-1}`` (0 pad, 1 eos, 2 unk): any vocab size, no training."""
    words = {f"w{i}": i for i in range(vocab)}
    backend = Tokenizer(models.WordLevel(words, unk_token="w2"))
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="w0", eos_token="w1", unk_token="w2")


def llama(vocab: int, hidden: int, layers: int, seed: int) -> LlamaForCausalLM:
    """A random Llama with untied embeddings, 64-wide heads and a SwiGLU width rounded to a multiple of 32."""
    return random_llama(
        seed, vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3 // 32 * 32,
        num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1), num_key_value_heads=max(hidden // 64, 1),
        max_position_embeddings=2048, pad_token_id=0, eos_token_id=1, bos_token_id=None, tie_word_embeddings=False,
    )


def size(text: str) -> tuple[int, int]:
    """``"320x8"`` -> (hidden 320, layers 8)."""
    hidden, layers = (int(n) for n in text.lower().split("x"))
    return hidden, layers


def params_m(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


class StepTimer(TrainerCallback):
    """Wall and process CPU time (all threads) of every optimizer step, from the Trainer's own loop."""

    def __init__(self):
        self.wall, self.cpu = [], []
        self._start = (0.0, 0.0)

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = (time.perf_counter(), time.process_time())

    def on_step_end(self, args, state, control, **kwargs):
        self.wall.append(time.perf_counter() - self._start[0])
        self.cpu.append(time.process_time() - self._start[1])


def load_average() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def machine_lines() -> list[str]:
    """CPU, core count and library versions, for the RESULTS files."""
    import accelerate
    import transformers
    import trl

    return [
        f"- CPU: {cpu_name()} ({os.cpu_count()} logical cores visible), torch threads {torch.get_num_threads()}; "
        f"GPU: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}",
        f"- torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
        f"accelerate {accelerate.__version__}, Python {platform.python_version()}",
    ]


def make_demo_student(tokenizer, teacher, seed: int, init: str):
    """A student for the demo-based experiments. ``shrink``: the demo's student, cut out of the teacher;
    ``random``: a fresh 128x2 Llama (seed + 1) of about the same size, the demo's student before it became a shrink
    (what the README's feature-alignment numbers were measured with)."""
    from hf_distill.demo import DemoSettings
    from hf_distill.models.build import ModelSize, build_llama
    from hf_distill.models.shrink import shrink_model

    if init == "shrink":
        return shrink_model(teacher, DemoSettings().student)[0]
    return build_llama(tokenizer, ModelSize(hidden_size=128, num_layers=2, num_heads=4), seed=seed + 1)
