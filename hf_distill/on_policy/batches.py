"""Pure tensor functions between a training batch and its generated twin: find each row's prompt, left-pad the
prompts for ``generate``, cut each sample at its first end-of-sequence token, and assemble the new batch.

The prompt of a row is everything before its last span of loss tokens. TRL's SFT preparation folds
``completion_mask`` (prompt-completion data) and ``assistant_masks`` (conversations, also ours from
:mod:`hf_distill.data.chat`) into ``labels`` and drops them, so ``labels != -100`` is where the boundary is left:
for prompt-completion data the prompt (with the chat template's generation prompt, which is not trained on); for a
conversation every turn before the last assistant reply, header included. A generated row is then masked exactly like
a dataset completion: ``[prompt | completion up to and including the first EOS | right padding]`` with labels -100 on
the prompt and the padding. Naive version, per row::

    p = start of the last run of labels != -100
    sample = generate(input_ids[:p]); n = index of the first EOS in sample + 1 (or len(sample))
    input_ids = input_ids[:p] + sample[:n];  labels = [-100] * p + sample[:n]
"""

from __future__ import annotations

import torch


class NoPromptError(ValueError):
    pass


def prompt_lengths(labels: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(B,)`` start of the last span of loss tokens in each row of ``labels`` ``(B, T)``; raises where a row has no
    prompt before it (plain-text data, or ``completion_only_loss=False``) or no loss token at all."""
    loss = labels != -100  # (B, T)
    if attention_mask is not None:
        loss = loss & attention_mask.bool()
    starts = loss.clone()
    starts[:, 1:] &= ~loss[:, :-1]  # (B, T): True where a span of loss tokens begins
    positions = torch.arange(labels.shape[1], device=labels.device).expand_as(labels)
    last = torch.where(starts, positions, -1).amax(dim=1)  # (B,)
    first_valid = (attention_mask.bool().int().argmax(dim=1) if attention_mask is not None
                   else torch.zeros_like(last))
    if (last < 0).any() or (last <= first_valid).any():
        raise NoPromptError(
            "On-policy batches (lmbda > 0 or seq_kd) complete each example's prompt, found as the tokens before its "
            "completion (labels = -100), but some row has no prompt (every token carries loss) or no completion. "
            "Use prompt-completion data (`prompt`/`completion` columns, with completion_only_loss left on) or "
            "`messages` conversations (assistant_only_loss left on); plain `text` has no prompt to complete."
        )
    return last


def prompts_of(batch: dict) -> list[torch.Tensor]:
    """Each row's prompt token ids (1-D, padding dropped), in row order."""
    mask = batch.get("attention_mask")
    lengths = prompt_lengths(batch["labels"], mask)
    rows = []
    for row, length in enumerate(lengths.tolist()):
        ids = batch["input_ids"][row, :length]
        rows.append(ids[mask[row, :length].bool()] if mask is not None else ids)
    return rows


def left_pad(sequences: list[torch.Tensor], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, P)`` ids and attention mask, padded on the left (a decoder-only model generates after the last token)."""
    width = max(len(s) for s in sequences)
    ids = sequences[0].new_full((len(sequences), width), pad_token_id)
    mask = torch.zeros_like(ids)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq):] = seq
        mask[row, width - len(seq):] = 1
    return ids, mask


def completion_lengths(completions: torch.Tensor, eos_token_ids: list[int]) -> torch.Tensor:
    """``(B,)`` tokens of each sampled row ``(B, N)`` that count: up to and including its first EOS, or all N when it
    was cut at ``max_new_tokens`` (what ``generate`` pads after an EOS never counts, even when pad == eos)."""
    is_eos = torch.isin(completions, torch.tensor(eos_token_ids, device=completions.device))  # (B, N)
    first = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1) + 1, completions.shape[1])
    return first


def assemble(prompts: list[torch.Tensor], completions: torch.Tensor, lengths: torch.Tensor,
             pad_token_id: int) -> dict[str, torch.Tensor]:
    """The generated batch, right-padded like the dataset's: ``input_ids``, ``attention_mask`` and ``labels`` (the
    completion tokens; -100 on the prompt and the padding)."""
    rows = [torch.cat([prompt, completions[row, :n]]) for row, (prompt, n) in enumerate(zip(prompts, lengths.tolist()))]
    width = max(len(r) for r in rows)
    ids = completions.new_full((len(rows), width), pad_token_id)
    labels = torch.full_like(ids, -100)
    mask = torch.zeros_like(ids)
    for row, (seq, prompt) in enumerate(zip(rows, prompts)):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
        labels[row, len(prompt): len(seq)] = seq[len(prompt):]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
