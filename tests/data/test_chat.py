"""Chat data: loss on the assistant turns with templates that have no generation markers, and plain prompts for
tokenizers that have no chat template at all."""

import logging

import pytest
from datasets import Dataset
from helpers import make_llama, make_tokenizer, tiny_config
from tokenizers import decoders

from hf_distill import DistillationTrainer
from hf_distill.cache.writer import prepare_like_trainer
from hf_distill.data import reasoning
from hf_distill.data.chat import assistant_masks, tokenize_conversations
from hf_distill.data.reasoning import to_prompt_completion
from hf_distill.data.tokenizer import train_tokenizer
from hf_distill.evaluation.generate import chat_prompts

# Hand-written, marker-free versions of two released template families.
QWEN_LIKE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
LLAMA3_LIKE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + "
    "'<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
# Qwen3-style: earlier assistant turns lose their reasoning, so a conversation's start renders differently later.
DROPS_PAST_REASONING = (
    "{%- for message in messages %}{%- set content = message['content'] %}"
    "{%- if message['role'] == 'assistant' and not loop.last %}{%- set content = content.split('</think>')[-1] %}"
    "{%- endif %}{{- '<|im_start|>' + message['role'] + '\\n' + content + '<|im_end|>\\n' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Ann has 2 apples and buys 3 more?"},
    {"role": "assistant", "content": "2+3 = 5\n#### 5"},
    {"role": "user", "content": "And 4 more?"},
    {"role": "assistant", "content": "<think>5+4</think>9"},
]


def chat_tokenizer(template: str):
    tokenizer = make_tokenizer()
    tokenizer.backend_tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens({"bos_token": "<|begin_of_text|>", "additional_special_tokens": [
        "<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    tokenizer.chat_template = template
    return tokenizer


def loss_runs(tokenizer, input_ids, labels) -> list[str]:
    """The text of each contiguous run of tokens that carry loss (label not -100)."""
    runs, run = [], []
    for token, label in zip(input_ids, labels, strict=True):
        if label != -100:
            assert label == token
            run.append(token)
        elif run:
            runs, run = [*runs, tokenizer.decode(run)], []
    return runs + ([tokenizer.decode(run)] if run else [])


def conversations(n=4, turns=CONVERSATION):
    return Dataset.from_dict({"messages": [turns] * n})


def distiller(tmp_path, tokenizer, data, **overrides):
    return DistillationTrainer(make_llama(len(tokenizer), 16, 1, seed=1), tiny_config(tmp_path, **overrides),
                               train_dataset=data, processing_class=tokenizer,
                               teacher_model=make_llama(len(tokenizer), 16, 1, seed=2))


@pytest.mark.parametrize("template, end", [(QWEN_LIKE, "<|im_end|>"), (LLAMA3_LIKE, "<|eot_id|>")],
                         ids=["qwen_like", "llama3_like"])
def test_masks_cover_each_assistant_turn_and_its_end_of_turn_token_only(template, end):
    tokenizer = chat_tokenizer(template)
    out = assistant_masks(tokenizer, CONVERSATION)
    assert out["input_ids"] == tokenizer.apply_chat_template(CONVERSATION)["input_ids"]  # what TRL tokenizes
    labels = [token if keep else -100 for token, keep in zip(out["input_ids"], out["assistant_masks"], strict=True)]
    assert loss_runs(tokenizer, out["input_ids"], labels) == [f"2+3 = 5\n#### 5{end}", f"<think>5+4</think>9{end}"]


def test_masks_match_the_templates_own_generation_markers_where_it_has_them():
    tokenizer = train_tokenizer([t["content"] for t in CONVERSATION] * 4, vocab_size=300)
    ours = assistant_masks(tokenizer, CONVERSATION)
    markers = tokenizer.apply_chat_template(CONVERSATION, return_dict=True, return_assistant_tokens_mask=True)
    assert ours["assistant_masks"] == markers["assistant_masks"]
    assert 0 < sum(ours["assistant_masks"]) < len(ours["input_ids"])


def test_template_without_end_of_turn_token_or_generation_prompt_is_warned_about(caplog):
    tokenizer = chat_tokenizer("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}")
    with caplog.at_level(logging.WARNING):
        out = tokenize_conversations(conversations(1, CONVERSATION[1:3]), tokenizer)[0]
    labels = [token if keep else -100 for token, keep in zip(out["input_ids"], out["assistant_masks"], strict=True)]
    assert loss_runs(tokenizer, out["input_ids"], labels) == ["assistant: 2+3 = 5\n#### 5"]  # no header to tell apart
    assert "not on a special end-of-turn token" in caplog.text


def test_trainer_default_trains_conversations_on_assistant_turns_and_false_restores_the_whole(tmp_path):
    tokenizer = chat_tokenizer(QWEN_LIKE)
    default = distiller(tmp_path, tokenizer, conversations()).train_dataset[0]
    assert loss_runs(tokenizer, default["input_ids"], default["labels"]) == ["2+3 = 5\n#### 5<|im_end|>",
                                                                             "<think>5+4</think>9<|im_end|>"]
    required = distiller(tmp_path, tokenizer, conversations(), assistant_only_loss=True)
    assert required.train_dataset[0]["labels"] == default["labels"] and required.args.assistant_only_loss is True
    whole = distiller(tmp_path, tokenizer, conversations(), assistant_only_loss=False).train_dataset[0]
    assert whole["input_ids"] == default["input_ids"] and whole["labels"] == whole["input_ids"]


def test_template_that_rewrites_earlier_turns_fails_at_construction_with_the_fix(tmp_path):
    tokenizer = chat_tokenizer(DROPS_PAST_REASONING)
    past_reasoning = [CONVERSATION[1], {"role": "assistant", "content": "<think>2+3</think>5"}, *CONVERSATION[3:]]
    with pytest.raises(ValueError, match=r"not prefix-stable.*'5<\|im_end\|>.*assistant_only_loss=False"):
        distiller(tmp_path, tokenizer, conversations(turns=past_reasoning))
    whole = distiller(tmp_path, tokenizer, conversations(turns=past_reasoning), assistant_only_loss=False)
    assert whole.train_dataset[0]["labels"] == whole.train_dataset[0]["input_ids"]


def test_cache_collector_prepares_conversations_like_the_trainer(tmp_path):
    tokenizer = chat_tokenizer(LLAMA3_LIKE)
    trained = distiller(tmp_path, tokenizer, conversations(2)).train_dataset
    cached, _ = prepare_like_trainer(make_llama(len(tokenizer), 16, 1), tiny_config(tmp_path), conversations(2),
                                     tokenizer)
    assert cached["labels"] == trained["labels"] and -100 in cached["labels"][0]


def test_without_chat_template_data_and_eval_prompts_are_plain_and_logged_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(reasoning, "_plain_format_logged", False)
    tokenizer = make_tokenizer()  # no chat template, like a base model
    tokenizer.backend_tokenizer.decoder = decoders.ByteLevel()
    problems = Dataset.from_dict({"question": ["Ann has 2 apples and buys 3 more?"] * 4, "answer": ["5\n#### 5"] * 4})
    with caplog.at_level(logging.WARNING):
        data = to_prompt_completion(problems, tokenizer=tokenizer)
        prompts = chat_prompts(tokenizer, problems["question"][:1])
    logged = [record.getMessage() for record in caplog.records if record.name == reasoning.logger.name]
    assert len(logged) == 1 and "no chat template" in logged[0]  # data and evaluation: said once
    assert data[0]["prompt"] == prompts[0] == "Question: Ann has 2 apples and buys 3 more?\nAnswer:"
    assert data[0]["completion"] == " 5\n#### 5"
    example = distiller(tmp_path, tokenizer, data).train_dataset[0]
    prompt_ids = tokenizer(prompts[0], add_special_tokens=False)["input_ids"]
    assert example["input_ids"][: len(prompt_ids)] == prompt_ids  # evaluation prompts the format it trained on
    assert loss_runs(tokenizer, example["input_ids"], example["labels"]) == [" 5\n#### 5<eos>"]
    assert to_prompt_completion(problems)[0]["prompt"] == [{"role": "user", "content": problems[0]["question"]}]
