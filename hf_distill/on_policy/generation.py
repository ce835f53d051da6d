"""Sampling completions for a batch of prompts: the model in eval mode, without gradient, under the trainer's autocast
(the dtype it trains in), left padding, and a random stream of its own.

The sampling seed is derived from ``(seed, process, step, micro-batch)``: every rank draws different samples (DDP),
a run and its resumed continuation draw the same ones, and the global random stream (dropout, data order) is left
exactly as it would be without generation.
"""

from __future__ import annotations

import contextlib
import random

import torch
from torch import nn
from transformers import GenerationConfig

from hf_distill.on_policy.batches import assemble, completion_lengths, left_pad


def sampling_config(args, eos_token_ids: list[int], pad_token_id: int) -> GenerationConfig:
    """Pure sampling from the model's own distribution, shaped only by the config's knobs: every setting that would
    change it (a model's saved ``repetition_penalty``, beams, n-gram bans) is set to neutral explicitly, since
    ``generate`` fills unset values from the model's ``generation_config``."""
    temperature = args.generation_temperature if args.generation_temperature is not None else args.temperature
    return GenerationConfig(
        do_sample=True, temperature=temperature, top_p=args.generation_top_p, top_k=args.generation_top_k,
        max_new_tokens=args.max_new_tokens,
        num_beams=1, repetition_penalty=1.0, no_repeat_ngram_size=0,
        eos_token_id=eos_token_ids, pad_token_id=pad_token_id, use_cache=True,
    )


def end_of_sequence_ids(tokenizer, model: nn.Module) -> list[int]:
    """The tokens that end a completion: the tokenizer's EOS and the model's generation EOS (an end-of-turn token such
    as ``<|im_end|>`` or ``<|eot_id|>``)."""
    ids = []
    for source in (getattr(tokenizer, "eos_token_id", None), getattr(model.generation_config, "eos_token_id", None)):
        for token in source if isinstance(source, (list, tuple)) else [source]:
            if token is not None and token not in ids:
                ids.append(int(token))
    if not ids:
        raise ValueError("On-policy generation needs an end-of-sequence token to stop at: set tokenizer.eos_token "
                         "(or model.generation_config.eos_token_id).")
    return ids


def sampling_seed(seed: int, process: int, step: int, micro_batch: int) -> int:
    return random.Random(f"hf_distill.on_policy:{seed}:{process}:{step}:{micro_batch}").getrandbits(63)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device):
    """Run under ``torch.manual_seed(seed)`` and restore the global random state afterwards."""
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def sample_completions(
    model: nn.Module, prompts: list[torch.Tensor], config: GenerationConfig, num_generations: int, seed: int,
    precision: contextlib.AbstractContextManager | None = None,
) -> dict[str, torch.Tensor]:
    """A right-padded training batch (:func:`~hf_distill.on_policy.batches.assemble`) of ``num_generations``
    completions of each prompt (consecutive rows), sampled by ``model`` on its device; returned on the prompts' device.
    """
    device = next(model.parameters()).device
    prompts = [p for p in prompts for _ in range(num_generations)]
    ids, mask = left_pad(prompts, config.pad_token_id)  # (B, P)
    was_training = model.training
    model.eval()
    try:
        with seeded(seed, device), precision or contextlib.nullcontext():
            sequences = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                       generation_config=config)  # (B, P + N)
    finally:
        model.train(was_training)
    completions = sequences[:, ids.shape[1]:].to(ids.device)  # (B, N)
    return assemble(prompts, completions, completion_lengths(completions, config.eos_token_id), config.pad_token_id)
