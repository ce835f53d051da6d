"""Chat formats on real tokenizers: assistant-only loss with SmolLM2's marker-free template, token for token, and
plain prompt/completion data and evaluation for Gemma-3-270M, a base model with no chat template."""

from __future__ import annotations

import pytest
from datasets import Dataset
from helpers import small_student_of, tiny_config
from transformers import AutoTokenizer

from hf_distill import DistillationTrainer
from hf_distill.data.reasoning import to_prompt_completion
from hf_distill.evaluation.generate import chat_prompts, evaluate_reasoning

pytestmark = pytest.mark.real_model

TWO_TURNS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"},
             {"role": "assistant", "content": "2 + 3 = 5\n#### 5"}, {"role": "user", "content": "And 4 more?"},
             {"role": "assistant", "content": "5 + 4 = 9\n#### 9"}]
NO_SYSTEM = TWO_TURNS[1:3]  # SmolLM2's template inserts its default system prompt


def smollm2_pieces(turns: list[dict]) -> list[tuple[str, bool]]:
    """SmolLM2's rendering of ``turns`` written out by hand, each piece marked with whether it carries loss: an
    assistant turn's content and ``<|im_end|>`` do; its header and the newline after ``<|im_end|>`` do not."""
    pieces = [] if turns[0]["role"] == "system" else [
        ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n", False)]
    for turn in turns:
        if turn["role"] == "assistant":
            pieces += [("<|im_start|>assistant\n", False), (turn["content"] + "<|im_end|>", True), ("\n", False)]
        else:
            pieces.append((f"<|im_start|>{turn['role']}\n{turn['content']}<|im_end|>\n", False))
    return pieces


def distiller(tmp_path, model_dir, tokenizer, data, **overrides):
    return DistillationTrainer(small_student_of(model_dir, hidden=16, layers=1, seed=1),
                               tiny_config(tmp_path, per_device_train_batch_size=2, **overrides), train_dataset=data,
                               processing_class=tokenizer,
                               teacher_model=small_student_of(model_dir, hidden=16, layers=1, seed=2))


def test_smollm2_conversations_train_on_exactly_the_assistant_tokens(tmp_path, smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    data = Dataset.from_dict({"messages": [TWO_TURNS, NO_SYSTEM]})
    prepared = distiller(tmp_path, smollm2_dir, tokenizer, data).train_dataset
    for turns, example in zip((TWO_TURNS, NO_SYSTEM), prepared, strict=True):
        ids, labels = [], []
        for text, carries_loss in smollm2_pieces(turns):
            piece = tokenizer(text, add_special_tokens=False)["input_ids"]
            ids += piece
            labels += piece if carries_loss else [-100] * len(piece)
        assert ids == tokenizer.apply_chat_template(turns)["input_ids"]  # the hand-written pieces are the template
        assert example["input_ids"] == ids and example["labels"] == labels
    whole = distiller(tmp_path, smollm2_dir, tokenizer, data, assistant_only_loss=False).train_dataset
    assert whole["input_ids"] == prepared["input_ids"] and whole["labels"] == whole["input_ids"]


def test_gemma3_without_chat_template_gets_plain_data_and_evaluates_on_its_training_prompt(gemma3_dir):
    tokenizer = AutoTokenizer.from_pretrained(gemma3_dir)
    assert not tokenizer.chat_template
    problems = Dataset.from_dict({"question": ["What is 2+3?", "What is 5+4?"], "answer": ["2+3 = 5\n#### 5",
                                                                                          "5+4 = 9\n#### 9"]})
    data = to_prompt_completion(problems, tokenizer=tokenizer)
    assert data[0]["prompt"] == "Question: What is 2+3?\nAnswer:" and data[0]["completion"] == " 2+3 = 5\n#### 5"
    prompt = chat_prompts(tokenizer, ["What is 2+3?"])[0]
    assert prompt == "<bos>Question: What is 2+3?\nAnswer:"  # the <bos> training adds; generate() adds none
    # TRL tokenizes a plain prompt with the tokenizer's special tokens (a trainer on it: tests/test_chat.py)
    assert tokenizer(prompt, add_special_tokens=False)["input_ids"] == tokenizer(data[0]["prompt"])["input_ids"]
    model = small_student_of(gemma3_dir, hidden=16, layers=1)
    result = evaluate_reasoning(model, tokenizer, problems["question"], problems["answer"], max_new_tokens=2)
    assert len(result.generations) == 2  # no "tokenizer.chat_template is not set" error
