"""Train a small byte-level BPE tokenizer with a chat template, for students built from scratch.

A student trained from a random init needs a vocabulary sized to it: a 32k vocabulary would spend
more compute on the logits than on the model body (see FACTS.md). Digits are split one per token,
so ``123`` and ``23`` share their pieces and the model can learn column-wise arithmetic.

The chat template renders ``<|bos|><|user|>question<|assistant|>answer<|eos|>``, with the
assistant content and its ``<|eos|>`` inside ``{% generation %}`` markers: TRL's
``assistant_only_loss`` then trains the model on the answer and on stopping, and the prompt
rendered with ``add_generation_prompt=True`` is a token prefix of the full conversation, which
TRL's prompt-completion path relies on to mask the prompt.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, USER, ASSISTANT, SYSTEM = "<|pad|>", "<|bos|>", "<|eos|>", "<|user|>", "<|assistant|>", "<|system|>"
SPECIAL_TOKENS = (PAD, BOS, EOS, USER, ASSISTANT, SYSTEM)
"""In id order: ``<|pad|>`` is 0, ``<|bos|>`` 1, ``<|eos|>`` 2, and so on."""

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}<|system|>{{ message['content'] }}"
    "{% elif message['role'] == 'user' %}<|user|>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}<|assistant|>"
    "{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% else %}{{ raise_exception('Unknown role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, save_dir: str | Path | None = None
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on ``texts`` and wrap it as a Hugging Face tokenizer.

    ``vocab_size`` is an upper bound: a small, regular corpus can run out of merges first, so size
    the model's embedding with ``len(tokenizer)``. With ``save_dir`` the tokenizer is also saved
    there, ready for ``AutoTokenizer.from_pretrained(save_dir)``.
    """
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size must cover the 256 bytes and {len(SPECIAL_TOKENS)} special tokens")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM],
        chat_template=CHAT_TEMPLATE,
    )
    if save_dir is not None:
        tokenizer.save_pretrained(save_dir)
    return tokenizer
