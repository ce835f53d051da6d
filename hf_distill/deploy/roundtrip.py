"""Does an exported GGUF file still answer like the student? Reload it with transformers' ``gguf_file=`` loader
(dequantised to float32) and compare greedy generations with the original, prompt by prompt."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from hf_distill.models.gguf import load_gguf_model, load_gguf_tokenizer


@dataclass
class Agreement:
    """Greedy continuations of the same prompts by the float student and by its GGUF file."""

    exact: float
    """Share of prompts whose whole continuation is identical."""
    token: float
    """Share of generated positions that match, up to the first difference of each prompt (later ones diverge)."""
    prompts: int


@torch.no_grad()
def greedy_tokens(model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """Each prompt's greedy continuation (token ids), one prompt at a time (no padding to differ between models)."""
    outputs = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
        generated = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                   do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        outputs.append(generated[0, ids.shape[1] :].tolist())
    return outputs


def agreement(reference: list[list[int]], other: list[list[int]]) -> Agreement:
    matched = total = 0
    for a, b in zip(reference, other, strict=True):
        common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        matched, total = matched + common, total + max(len(a), 1)
    exact = sum(a == b for a, b in zip(reference, other)) / max(len(reference), 1)
    return Agreement(exact=exact, token=matched / max(total, 1), prompts=len(reference))


def gguf_agreement(model, tokenizer, gguf_path: str | os.PathLike, prompts: list[str],
                   max_new_tokens: int = 16) -> Agreement:
    """:class:`Agreement` of the float ``model`` with the GGUF file, each with its own tokenizer (the file's is the
    one llama.cpp users get, rebuilt by transformers from the GGUF vocabulary)."""
    path = Path(gguf_path)
    reloaded = load_gguf_model(str(path.parent), path.name)
    reloaded_tokenizer = load_gguf_tokenizer(str(path.parent), path.name)
    return agreement(greedy_tokens(model, tokenizer, prompts, max_new_tokens),
                     greedy_tokens(reloaded, reloaded_tokenizer, prompts, max_new_tokens))
