"""Build small Llama-architecture models from a config, sized to a tokenizer (no download involved)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase


@dataclass(frozen=True)
class ModelSize:
    """Width and depth of a Llama model. ``intermediate_size`` defaults to ~2.7x hidden (Llama's ratio)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int | None = None
    intermediate_size: int | None = None


def random_llama(seed: int = 0, **config) -> LlamaForCausalLM:
    """A randomly initialised Llama from ``LlamaConfig(**config)``, seeded: the one builder of the package's demo
    models, the tests' tiny models and the benchmarks' random models."""
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**config))


def build_llama(
    tokenizer: PreTrainedTokenizerBase, size: ModelSize, max_positions: int = 512, seed: int = 0
) -> LlamaForCausalLM:
    """A randomly initialised Llama whose embedding has exactly one row per token of ``tokenizer``."""
    if size.hidden_size % size.num_heads:
        raise ValueError(f"hidden_size {size.hidden_size} must be divisible by num_heads {size.num_heads}")
    intermediate = size.intermediate_size or 32 * round(size.hidden_size * 8 / 3 / 32)
    model = random_llama(
        seed,
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=intermediate,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_kv_heads or size.num_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
