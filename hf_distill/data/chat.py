"""Assistant-only loss with any chat template: the tokens each assistant message adds to a conversation.

TRL's ``assistant_only_loss`` needs ``{% generation %}`` markers in the template, which most released templates
(SmolLM2, Qwen2.5, Llama 3) lack. Here the spans come from the template itself, rendered prefix by prefix. For the
assistant message ``i`` of ``messages``::

    start = len(render(messages[:i], add_generation_prompt=True))   # after "<|im_start|>assistant\\n"
    end = len(render(messages[:i + 1]).rstrip())                    # after its "<|im_end|>", before the "\\n"

both measured inside ``render(messages)``, of which every prefix rendering must be a prefix (a template that rewrites
earlier turns, such as one dropping past reasoning, is rejected with an error that says so). The tokens of the whole
conversation that overlap a span carry loss: the content and the end-of-turn token, which the model must learn to
emit, but neither the header the generation prompt supplies at inference nor the whitespace after the end-of-turn
token, which the model never generates (it stops at the end-of-turn token). The token ids are those of
``apply_chat_template(messages, tokenize=True)``, exactly what TRL trains on with ``assistant_only_loss=False``.
"""

from __future__ import annotations

import json
import logging
import os

from datasets import Dataset, IterableDataset
from transformers import PreTrainedTokenizerBase

from hf_distill.utils.fingerprint import fingerprint_bytes

logger = logging.getLogger(__name__)
_FORMAT = "hf_distill.data.chat/1"  # bump when the masks change, so cached maps are redone


def is_conversation(example: dict) -> bool:
    """A ``messages`` conversation (TRL's conversational language modelling), not prompt-completion data, tokenized
    data or images. ShareGPT ``conversations`` keep TRL's handling (their roles are not renamed to "assistant")."""
    if "messages" not in example or any(k in example for k in ("prompt", "input_ids", "image", "images")):
        return False
    turns = example["messages"]
    return isinstance(turns, list) and bool(turns) and isinstance(turns[0], dict) and "role" in turns[0]


def assistant_spans(tokenizer: PreTrainedTokenizerBase, messages: list[dict], **template_kwargs) -> tuple[str, list]:
    """The rendered conversation and the ``(start, end)`` character span of each assistant message in it.

    Naive version: ``[(len(render(m[:i], gen=True)), len(render(m[:i + 1]).rstrip())) for i in assistant turns]``,
    plus the checks that make those lengths positions in ``render(m)``.
    """
    if not getattr(tokenizer, "chat_template", None) and "chat_template" not in template_kwargs:
        raise ValueError(
            "Conversational (`messages`) data needs a chat template, and the tokenizer has no `chat_template` (a base "
            "model?). Fix: set `tokenizer.chat_template`, or give the data as plain `text` or `prompt`/`completion` "
            "strings (hf_distill.data.reasoning.to_prompt_completion(..., tokenizer=tokenizer) does for GSM8K data)."
        )

    def render(turns: list[dict], generation_prompt: bool = False) -> str:
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=generation_prompt,
                                             **template_kwargs)

    full = render(messages)
    spans = []
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        before = render(messages[:i]) if i else ""
        through = render(messages[: i + 1])
        _check_prefix(before, full, i)
        _check_prefix(through, full, i + 1)
        start = max(len(os.path.commonprefix([_generation_prompt(render, messages[:i]), through])), len(before))
        end = start + len(through[start:].rstrip())
        if end > start:
            spans.append((start, end))
    return full, spans


def assistant_masks(tokenizer: PreTrainedTokenizerBase, messages: list[dict], **template_kwargs) -> dict[str, list]:
    """``input_ids`` of the conversation and ``assistant_masks`` (1 on the tokens of its assistant turns), the
    columns TRL's ``SFTTrainer`` turns into labels (-100 where the mask is 0)."""
    full, spans = assistant_spans(tokenizer, messages, **template_kwargs)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"Assistant-only loss maps characters to tokens with a fast tokenizer's offsets; "
                         f"{type(tokenizer).__name__} has none. Fix: load it with use_fast=True, or set "
                         "assistant_only_loss=False to train on the whole conversation.")
    encoded = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    mask, span = [], 0
    for token_start, token_end in encoded["offset_mapping"]:  # both in order: one pass
        while span < len(spans) and token_start >= spans[span][1]:
            span += 1
        mask.append(int(span < len(spans) and token_end > spans[span][0]))
    return {"input_ids": list(encoded["input_ids"]), "assistant_masks": mask}


def tokenize_conversations(dataset: Dataset | IterableDataset, tokenizer: PreTrainedTokenizerBase,
                           name: str = "train", num_proc: int | None = None) -> Dataset | IterableDataset:
    """Add ``input_ids`` and ``assistant_masks`` to each ``messages`` conversation of ``dataset`` (per-example
    ``tools`` and ``chat_template_kwargs`` go to the template, as TRL passes them).

    The first example is done here and now, so a template that cannot be split fails before training starts, also
    for a streamed dataset; a first assistant turn that does not end on a special token is warned about.
    """
    first = _tokenize_example(next(iter(dataset)), tokenizer)
    _warn_if_no_stop_token(first, tokenizer)
    kwargs = {"fn_kwargs": {"tokenizer": tokenizer}}
    if isinstance(dataset, Dataset):  # IterableDataset.map takes none of these
        kwargs.update(num_proc=num_proc, desc=f"Masking all but the assistant turns of the {name} dataset",
                      new_fingerprint=_map_fingerprint(dataset, tokenizer))
    return dataset.map(_tokenize_example, **kwargs)


def _tokenize_example(example: dict, tokenizer: PreTrainedTokenizerBase) -> dict[str, list]:
    tools = example.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    return assistant_masks(tokenizer, example["messages"], tools=tools, **(example.get("chat_template_kwargs") or {}))


def _map_fingerprint(dataset: Dataset, tokenizer: PreTrainedTokenizerBase) -> str:
    """The fingerprint (cache key) of the map above. `datasets` would dill-pickle the whole tokenizer to compute it,
    12 s for Gemma's 262k-token vocabulary; its serialised form hashes in a fraction of a second."""
    parts = (dataset._fingerprint, _FORMAT, tokenizer.backend_tokenizer.to_str(), tokenizer.chat_template,
             sorted(tokenizer.special_tokens_map.items()))
    return fingerprint_bytes(repr(part).encode() for part in parts)


def _generation_prompt(render, turns: list[dict]) -> str:
    """``turns`` rendered with the generation prompt; "" where a template refuses to render no turns at all."""
    if turns:
        return render(turns, generation_prompt=True)
    try:
        return render([], generation_prompt=True)
    except Exception:  # noqa: BLE001 - templates raise anything (jinja errors, IndexError) on an empty conversation
        return ""


def _check_prefix(prefix: str, full: str, count: int) -> None:
    if full.startswith(prefix):
        return
    at = len(os.path.commonprefix([prefix, full]))
    raise ValueError(
        f"The chat template is not prefix-stable: the first {count} messages render to text that is not the start "
        f"of the whole conversation (they differ at character {at}: {prefix[at:at + 40]!r} vs {full[at:at + 40]!r}), "
        "so the assistant turns cannot be located for assistant-only loss. This happens with templates that rewrite "
        "earlier turns (e.g. drop past reasoning). Fix: set assistant_only_loss=False to train on the whole "
        "conversation, or give each example as `prompt`/`completion` (the completion carries the loss)."
    )


def _warn_if_no_stop_token(example: dict[str, list], tokenizer: PreTrainedTokenizerBase) -> None:
    last = [token for token, keep in zip(example["input_ids"], example["assistant_masks"]) if keep][-1:]
    special = set(tokenizer.all_special_ids) | set(tokenizer.get_added_vocab().values())
    if last and last[0] not in special:
        logger.warning(
            "The assistant turns end on %r, not on a special end-of-turn token: check that the chat template closes "
            "an assistant turn with one (else the model may not learn to stop).", tokenizer.decode(last)
        )
