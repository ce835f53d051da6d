"""The trained BPE tokenizer: special tokens, digits, chat template, save/load, and TRL's SFT masking."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from trl import SFTConfig, SFTTrainer
from trl.chat_template_utils import is_chat_template_stop_token_trained

from hf_distill.data.arithmetic import make_arithmetic_dataset
from hf_distill.data.reasoning import to_prompt_completion
from hf_distill.data.tokenizer import SPECIAL_TOKENS, train_tokenizer

CONVERSATION = [
    {"role": "user", "content": "Tom has 12 apples. How many?"},
    {"role": "assistant", "content": "#### 12"},
]


@pytest.fixture(scope="module")
def data():
    return make_arithmetic_dataset(200, 20, seed=0)


@pytest.fixture(scope="module")
def tok(data):
    return train_tokenizer(list(data["train"]["question"]) + list(data["train"]["answer"]), vocab_size=1024)


def test_special_tokens_have_fixed_ids(tok):
    assert tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(len(SPECIAL_TOKENS)))
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.tokenize("<|user|>hi<|assistant|>")[0] == "<|user|>"  # never split into pieces


def test_vocab_size_is_an_upper_bound(tok):
    assert 256 + len(SPECIAL_TOKENS) < len(tok) <= 1024
    with pytest.raises(ValueError, match="256 bytes"):
        train_tokenizer(["abc"], vocab_size=100)


def test_digits_are_split_one_per_token(tok):
    assert tok.tokenize(" has 907 apples") == ["Ġhas", "Ġ", "9", "0", "7", "Ġapples"]
    assert tok.tokenize("<<12+15=27>>") == ["<<", "1", "2", "+", "1", "5", "=", "2", "7", ">>"]


def test_text_round_trips(tok, data):
    text = data["test"][0]["answer"]
    assert tok.decode(tok(text)["input_ids"]) == text


def test_chat_template_renders_roles_and_eos(tok):
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False)
    assert rendered == "<|bos|><|user|>Tom has 12 apples. How many?<|assistant|>#### 12<|eos|>"
    prompt = tok.apply_chat_template(CONVERSATION[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|bos|><|user|>Tom has 12 apples. How many?<|assistant|>"
    system = [{"role": "system", "content": "Be brief."}, *CONVERSATION]
    assert tok.apply_chat_template(system, tokenize=False).startswith("<|bos|><|system|>Be brief.<|user|>")


def test_assistant_mask_covers_the_answer_and_its_eos(tok):
    out = tok.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    prompt_ids = tok.apply_chat_template(CONVERSATION[:1], add_generation_prompt=True)["input_ids"]
    assert out["input_ids"][: len(prompt_ids)] == prompt_ids  # the prompt is a token prefix
    assert out["assistant_masks"] == [0] * len(prompt_ids) + [1] * (len(out["input_ids"]) - len(prompt_ids))
    assert out["input_ids"][-1] == tok.eos_token_id
    assert is_chat_template_stop_token_trained(tok)  # TRL's own check for assistant_only_loss


def test_save_and_load_round_trip(tok, tmp_path):
    saved = train_tokenizer(["Tom has 12 apples."] * 10, vocab_size=300, save_dir=tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == saved.get_vocab()
    assert (loaded.pad_token, loaded.bos_token, loaded.eos_token) == ("<|pad|>", "<|bos|>", "<|eos|>")
    assert loaded.chat_template == saved.chat_template
    assert loaded.apply_chat_template(CONVERSATION)["input_ids"] == saved.apply_chat_template(CONVERSATION)["input_ids"]

    tok.save_pretrained(tmp_path / "again")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "again")
    text = "Mia has 31 pens. She has 31*3 = <<31*3=93>>93 pens."
    assert reloaded(text)["input_ids"] == tok(text)["input_ids"]


def test_sft_trainer_masks_the_prompt_and_trains_on_the_completion(tok, data, tmp_path):
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    train = to_prompt_completion(data["train"].select(range(8)))
    args = SFTConfig(
        output_dir=str(tmp_path), max_steps=2, report_to=[], per_device_train_batch_size=2, use_cpu=True
    )
    trainer = SFTTrainer(LlamaForCausalLM(config), args=args, train_dataset=train, processing_class=tok)

    for i in range(2):
        example = trainer.train_dataset[i]
        prompt_len = len(tok.apply_chat_template(train[i]["prompt"], add_generation_prompt=True)["input_ids"])
        labels, ids = example["labels"], example["input_ids"]
        assert labels[:prompt_len] == [-100] * prompt_len
        assert labels[prompt_len:] == ids[prompt_len:]
        assert tok.decode(labels[prompt_len:]) == train[i]["answer"] + "<|eos|>"

    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    lengths = [len(trainer.train_dataset[i]["input_ids"]) for i in range(2)]
    short = lengths.index(min(lengths))
    assert min(lengths) < max(lengths)  # so the shorter row is padded
    assert (batch["input_ids"][short, min(lengths) :] == tok.pad_token_id).all()
    assert (batch["labels"][short, min(lengths) :] == -100).all()

    result = trainer.train()
    assert result.global_step == 2 and result.training_loss > 0
