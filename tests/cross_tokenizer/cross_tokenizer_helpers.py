"""Plain helpers of the cross-tokenizer tests (their fixtures are in conftest.py beside this file)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from helpers import CORPUS
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast


def make_metaspace_tokenizer(vocab_size: int = 150) -> PreTrainedTokenizerFast:
    """A small SentencePiece-style tokenizer: Unigram pieces with ``▁`` for spaces, ``<bos>`` prepended by the
    post-processor."""
    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Replace(" ", "▁")
    tokenizer.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>"],
                                      unk_token="<unk>")
    tokenizer.train_from_iterator(CORPUS, trainer)
    tokenizer.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>")


def make_bytelevel_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """tests/helpers.py's ByteLevel BPE (GPT-2/SmolLM2 style) with its ByteLevel decoder, so ids decode back to the
    text they came from."""
    from helpers import make_tokenizer

    tokenizer = make_tokenizer(vocab_size)
    tokenizer.backend_tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def naive_uld(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    width = max(q.shape[-1], p.shape[-1])
    q_sorted = F.pad(q, (0, width - q.shape[-1])).sort(-1, descending=True).values
    p_sorted = F.pad(p, (0, width - p.shape[-1])).sort(-1, descending=True).values
    return (q_sorted - p_sorted).abs().sum(-1)


def naive_loss(student_logits, teacher_logits, index, targets, vocab, method, temperature, alpha, normalizer):
    """Dense reference: all logits at once, full sorts. ``index[i]``: the teacher row of student loss token i, or -1."""
    ce = F.cross_entropy(student_logits, targets, reduction="sum")
    aligned = index >= 0
    q = (student_logits[aligned] / temperature).softmax(-1)
    p = (teacher_logits[index[aligned]] / temperature).softmax(-1)
    if method == "uld":
        kd = naive_uld(q, p).sum()
    else:
        q_shared, p_shared = q[:, vocab.student_ids], p[:, vocab.teacher_ids]
        exact = (p_shared * (p_shared.log() - q_shared.log()) - p_shared + q_shared).sum() * temperature**2
        kd = exact + naive_uld(q[:, vocab.student_only], p[:, vocab.teacher_only]).sum()
    return (alpha * ce + (1 - alpha) * kd) / normalizer, kd


CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
GEMMA_TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' "
                  "else m['role']) + '\n' + m['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
                  "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}")


def with_chat_template(tokenizer: PreTrainedTokenizerFast, template: str, markers: list[str]):
    """``tokenizer`` with a chat template whose turn markers are special tokens (as in SmolLM2's and Gemma's)."""
    tokenizer.add_special_tokens({"additional_special_tokens": markers})
    tokenizer.chat_template = template
    return tokenizer
