"""Evaluate reasoning models by what they generate: exact-match accuracy, agreement, generation speed."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from hf_distill.data.reasoning import has_chat_template, log_plain_format, plain_prompt
from hf_distill.evaluation.answers import (
    exact_match_accuracy,
    extract_answer,
    normalize_number,
)
from hf_distill.models.build import count_parameters


@dataclass
class ReasoningEval:
    """Greedy generations on a question/answer dataset and what they score."""

    accuracy: float
    answers: list[str | None]
    generations: list[str] = field(repr=False)
    tokens_per_second: float
    num_parameters: int


def chat_prompts(tokenizer: PreTrainedTokenizerBase, questions: list[str]) -> list[str]:
    """Each question as a user turn, ready for the assistant's reply (the format the models were trained on).

    Without a chat template (a base model), the plain format of
    :func:`~hf_distill.data.reasoning.to_prompt_completion` instead, ``"Question: ...\nAnswer:"``, after the special
    tokens the tokenizer puts first (Gemma's ``<bos>``): :func:`generate` adds none, training did.
    """
    return [prompt_text(tokenizer, [{"role": "user", "content": q}]) for q in questions]


def prompt_text(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> str:
    """The text a model continues after ``messages`` (an optional system turn, then one user turn): its chat template
    with the generation prompt, or the plain format for a tokenizer without one."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    log_plain_format()
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system") or None
    user = "\n\n".join(m["content"] for m in messages if m["role"] != "system")
    return leading_special_text(tokenizer) + plain_prompt(user, system)


def leading_special_text(tokenizer: PreTrainedTokenizerBase) -> str:
    """The special tokens the tokenizer adds before a text (e.g. ``"<bos>"``), as text; "" when none."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    start = next((i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain), 0)
    return tokenizer.decode(full[:start]) if start else ""


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    max_new_tokens: int = 128,
    batch_size: int = 64,
    progress: bool = False,
    generation_kwargs: dict | None = None,
) -> tuple[list[str], float]:
    """Completions of ``prompts`` (greedy unless ``generation_kwargs`` say otherwise) and the generation speed in new
    tokens per second. With ``num_return_sequences=n`` the n completions of each prompt are consecutive."""
    was_training = model.training
    model.eval()
    padding_side, tokenizer.padding_side = tokenizer.padding_side, "left"  # decoder-only: pad on the left
    device = next(model.parameters()).device
    options = {"do_sample": False, **(generation_kwargs or {})}
    texts, new_tokens, seconds = [], 0, 0.0
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="generating", disable=not progress, leave=False):
            batch = tokenizer(prompts[start : start + batch_size], return_tensors="pt", padding=True,
                              add_special_tokens=False).to(device)
            began = time.perf_counter()
            output = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                    eos_token_id=tokenizer.eos_token_id, **options)
            seconds += time.perf_counter() - began
            completion = output[:, batch["input_ids"].shape[1] :]  # (B, new)
            new_tokens += int((completion != tokenizer.pad_token_id).sum())
            texts.extend(tokenizer.batch_decode(completion, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return texts, new_tokens / max(seconds, 1e-9)


def evaluate_reasoning(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    questions: list[str],
    gold_answers: list[str],
    max_new_tokens: int = 128,
    batch_size: int = 64,
    progress: bool = False,
) -> ReasoningEval:
    """Exact match of the final answer (the ``####`` line, see :func:`extract_answer`) against the gold rationale."""
    generations, speed = generate(model, tokenizer, chat_prompts(tokenizer, questions), max_new_tokens, batch_size,
                                  progress)
    answers = [extract_answer(text) for text in generations]
    accuracy = exact_match_accuracy(generations, gold_answers) if gold_answers or generations else 0.0
    return ReasoningEval(accuracy, answers, generations, speed, count_parameters(model))


def answer_agreement(answers: list[str | None], reference: list[str | None]) -> float:
    """Fraction of problems where two models give the same final answer (no answer never agrees)."""
    if len(answers) != len(reference):
        raise ValueError(f"got {len(answers)} answers for {len(reference)} reference answers")
    same = sum(a is not None and normalize_number(a) == normalize_number(b or "") for a, b in zip(answers, reference))
    return same / max(len(reference), 1)
