"""On-policy and mixed distillation (lmbda / seq_kd): the prompt boundary, the masks of sampled completions, the loss
on them against a naive reference, gradient accumulation, the off switch, and what is refused."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from helpers import (
    CORPUS,
    GradCapture,
    make_llama,
    make_tokenizer,
    prompt_completion,
    tiny_config,
)
from peft import LoraConfig
from tokenizers import decoders

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.on_policy.batches import (
    NoPromptError,
    assemble,
    completion_lengths,
    prompt_lengths,
    prompts_of,
)

CPU = torch.device("cpu")
EOS = 1  # make_tokenizer's "<eos>", the tiny Llamas' eos_token_id


def varied_prompts(n: int = 16) -> Dataset:
    """Prompts cut after 2-10 words, so greedy completions differ in length between rows."""
    words = [CORPUS[i * 7].split() for i in range(n)]
    return Dataset.from_dict({"prompt": [" ".join(w[: 2 + i % 9]) for i, w in enumerate(words)],
                              "completion": [" " + " ".join(w[2 + i % 9:]) for i, w in enumerate(words)]})


def eos_prone_student(tokenizer, seed: int = 3):
    """A tiny student whose EOS logit is pushed by a random direction: greedy completions stop after 1 to 10 tokens."""
    student = make_llama(len(tokenizer), 32, 1, seed=1)
    with torch.no_grad():
        student.lm_head.weight[EOS] += 0.3 * torch.randn(32, generator=torch.Generator().manual_seed(seed))
    return student


def trainer_for(tmp_path, tokenizer, student=None, teacher=None, dataset=None, **config):
    student = student if student is not None else make_llama(len(tokenizer), 32, 1, seed=1)
    teacher = teacher if teacher is not None else make_llama(len(tokenizer), 64, 2, seed=2)
    dataset = varied_prompts() if dataset is None else dataset
    return DistillationTrainer(student, tiny_config(tmp_path, **config), train_dataset=dataset,
                               processing_class=tokenizer, teacher_model=teacher)


def first_batch(trainer, size: int = 4) -> dict:
    return trainer.data_collator([trainer.train_dataset[i] for i in range(size)])


def greedy(model, prompt: torch.Tensor, max_new_tokens: int) -> list[int]:
    """Greedy decoding by hand: one unpadded row, the full forward each token, no KV cache."""
    ids = prompt.tolist()
    out = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            out.append(int(model(torch.tensor([ids + out])).logits[0, -1].argmax()))
            if out[-1] == EOS:
                break
    return out


# --- pure functions: where the prompt ends, where a sample ends ------------------------------------------------------

def test_prompt_is_everything_before_the_last_span_of_loss_tokens():
    x = -100
    labels = torch.tensor([[x, x, 5, 6, x, x],      # prompt-completion, right padding
                           [x, 3, 4, x, x, 7],      # a conversation: the last assistant turn starts at 5
                           [x, x, x, 8, 9, 1]])     # left padding (attention 0 on the first token)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    assert prompt_lengths(labels, mask).tolist() == [2, 5, 3]
    batch = {"input_ids": torch.arange(18).view(3, 6), "labels": labels, "attention_mask": mask}
    assert [p.tolist() for p in prompts_of(batch)] == [[0, 1], [6, 7, 8, 9, 10], [13, 14]]
    with pytest.raises(NoPromptError, match="plain `text` has no prompt"):
        prompt_lengths(torch.tensor([[4, 5, 6]]))  # every token carries loss: plain text data


def test_a_sample_counts_up_to_its_first_eos_and_is_masked_like_a_dataset_completion():
    pad = EOS  # pad == eos, as in many tokenizers: what generate pads after the EOS must not count
    completions = torch.tensor([[7, EOS, pad, pad], [7, 8, 9, 10], [EOS, pad, pad, pad]])
    lengths = completion_lengths(completions, [EOS])
    assert lengths.tolist() == [2, 4, 1]  # EOS counted; a row cut at max_new_tokens counts whole
    prompts = [torch.tensor([20, 21, 22]), torch.tensor([23]), torch.tensor([24, 25])]
    batch = assemble(prompts, completions, lengths, pad_token_id=0)
    x = -100
    assert batch["input_ids"].tolist() == [[20, 21, 22, 7, EOS], [23, 7, 8, 9, 10], [24, 25, EOS, 0, 0]]
    assert batch["labels"].tolist() == [[x, x, x, 7, EOS], [x, 7, 8, 9, 10], [x, x, EOS, x, x]]
    assert batch["attention_mask"].tolist() == [[1] * 5, [1] * 5, [1, 1, 1, 0, 0]]


def test_lmbda_is_the_share_of_micro_batches_and_the_same_on_every_rank(tmp_path, tokenizer, monkeypatch):
    trainer = trainer_for(tmp_path, tokenizer, lmbda=0.3, seq_kd=True)
    mixer = trainer._on_policy
    draws = [mixer.source(step, i) for step in range(500) for i in range(4)]
    assert set(draws) == {"student", "teacher"}  # seq_kd: the teacher completes the rest
    assert abs(draws.count("student") / len(draws) - 0.3) < 0.03
    monkeypatch.setattr(DistillationConfig, "process_index", property(lambda self: 1))  # as on rank 1
    assert trainer.args.process_index == 1  # the coin ignores the rank: all ranks complete the same micro-batches
    assert [mixer.source(step, i) for step in range(500) for i in range(4)] == draws


# --- the trainer ----------------------------------------------------------------------------------------------------

def test_lmbda_zero_is_todays_trainer_bit_for_bit(tmp_path, tokenizer, monkeypatch):
    runs = []
    for extra in ({}, dict(lmbda=0.0, max_new_tokens=5, num_generations=3, generation_top_k=4,
                           generation_temperature=0.7)):
        trainer = trainer_for(tmp_path / str(len(runs)), tokenizer, dataset=prompt_completion(slice(0, 16)),
                              learning_rate=1e-2, **extra)
        assert trainer._on_policy is None
        monkeypatch.setattr(trainer.model, "generate", lambda *a, **k: pytest.fail("lmbda=0 generated"))
        trainer.train()
        runs.append(([log["loss"] for log in trainer.state.log_history if "loss" in log],
                     torch.cat([p.detach().flatten() for p in trainer.model.parameters()])))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


def test_on_policy_loss_equals_a_hand_computed_reverse_kl_on_the_sampled_tokens(tmp_path, tokenizer):
    trainer = trainer_for(tmp_path, tokenizer, lmbda=1.0, alpha=0.0, kd_loss="reverse_kl", max_new_tokens=6,
                          num_generations=2, seed=5)
    batch = first_batch(trainer)
    (generated,), num_items = trainer.get_batch_samples(iter([batch]), 1, CPU)
    assert generated["input_ids"].shape[0] == 8  # 4 prompts x num_generations 2
    # Fixed seed: the same step samples the same tokens; another seed samples others.
    (again,), _ = trainer.get_batch_samples(iter([batch]), 1, CPU)
    assert torch.equal(again["input_ids"], generated["input_ids"])
    trainer.args.seed = 6
    (other,), _ = trainer.get_batch_samples(iter([batch]), 1, CPU)
    assert not torch.equal(other["input_ids"], generated["input_ids"])

    # The reference, from the sampled ids alone: each row is its prompt (twice), then the sample up to its first EOS.
    ids = generated["input_ids"]
    labels = torch.full_like(ids, -100)
    for row in range(8):
        source = trainer.train_dataset[row // 2]
        p = next(i for i, label in enumerate(source["labels"]) if label != -100)
        assert ids[row, :p].tolist() == source["input_ids"][:p]  # the dataset's prompt, its completion dropped
        sample = ids[row, p:p + 6].tolist()
        n = sample.index(EOS) + 1 if EOS in sample else len(sample)
        labels[row, p:p + n] = ids[row, p:p + n]
    assert torch.equal(generated["labels"], labels)  # no loss on the prompt or past the EOS
    mask = labels[:, 1:] != -100
    assert num_items == mask.sum()  # the generated loss tokens
    with torch.no_grad():
        t = trainer.teacher_model(input_ids=ids, attention_mask=generated["attention_mask"]).logits[:, :-1][mask]
    s = trainer.model(input_ids=ids, attention_mask=generated["attention_mask"]).logits[:, :-1][mask]
    want = (s.softmax(-1) * (s.log_softmax(-1) - t.log_softmax(-1))).sum() / mask.sum()  # KL(student || teacher)
    got = trainer.compute_loss(trainer.model, generated, num_items_in_batch=num_items)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_greedy_samples_match_hand_decoding_and_the_student_trains_on_after(tmp_path, tokenizer):
    student = eos_prone_student(tokenizer)
    trainer = trainer_for(tmp_path, tokenizer, student=student, lmbda=1.0, generation_top_k=1, max_new_tokens=10)
    batch = first_batch(trainer, 6)
    student.train()
    (generated,), _ = trainer.get_batch_samples(iter([batch]), 1, CPU)
    assert student.training  # back in train mode after generating in eval mode
    student.eval()
    for row, prompt in enumerate(prompts_of(batch)):  # left padding in generate changed nothing
        assert generated["input_ids"][row][generated["labels"][row] != -100].tolist() == greedy(student, prompt, 10)


def test_seq_kd_trains_on_the_teachers_completions(tmp_path, tokenizer):
    teacher = eos_prone_student(tokenizer, seed=4)  # any model with the vocabulary can teach
    trainer = trainer_for(tmp_path, tokenizer, teacher=teacher, seq_kd=True, generation_top_k=1, max_new_tokens=8)
    batch = first_batch(trainer)
    (generated,), _ = trainer.get_batch_samples(iter([batch]), 1, CPU)
    for row, prompt in enumerate(prompts_of(batch)):
        assert generated["input_ids"][row][generated["labels"][row] != -100].tolist() == greedy(teacher, prompt, 8)


def test_one_batch_of_8_and_four_micro_batches_of_2_give_the_same_on_policy_gradient(tmp_path, tokenizer):
    grads, counts = [], []
    for batch_size, accumulation in ((8, 1), (2, 4)):
        capture = GradCapture()
        trainer = trainer_for(tmp_path / str(batch_size), tokenizer, student=eos_prone_student(tokenizer),
                              lmbda=1.0, generation_top_k=1, max_new_tokens=10, max_steps=1, alpha=0.3,
                              kd_loss="reverse_kl",
                              per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation)
        trainer.add_callback(capture)
        complete = trainer._on_policy.complete
        trainer._on_policy.complete = lambda batches, step: counts.append(
            [int((b["labels"] != -100).sum()) for b in complete(batches, step)]) or complete(batches, step)
        trainer.train()
        grads.append(capture.grads[0])
    assert len(set(counts[1])) > 1  # the micro-batches hold different numbers of generated tokens
    assert sum(counts[1]) == counts[0][0]
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6)


def test_messages_prompt_is_the_conversation_before_the_last_reply_with_the_generation_prompt(tmp_path):
    tokenizer = make_tokenizer()
    tokenizer.backend_tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = (
        "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
        "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}")
    turns = [{"role": "user", "content": "Ann has 2 apples and buys 3 more?"}, {"role": "assistant", "content": "5"},
             {"role": "user", "content": "And 4 more?"}, {"role": "assistant", "content": "9"}]
    trainer = trainer_for(tmp_path, tokenizer, student=make_llama(len(tokenizer), 32, 1, seed=1),
                          teacher=make_llama(len(tokenizer), 32, 1, seed=2), lmbda=1.0, max_new_tokens=4,
                          dataset=Dataset.from_dict({"messages": [turns] * 4}))
    (generated,), _ = trainer.get_batch_samples(iter([first_batch(trainer, 2)]), 1, CPU)
    for ids, labels in zip(generated["input_ids"], generated["labels"]):
        completion = labels != -100
        start = int(completion.int().argmax())
        assert not completion[:start].any() and completion[start:].sum() == completion.sum()
        assert tokenizer.decode(ids[:start]) == tokenizer.apply_chat_template(turns[:-1], tokenize=False,
                                                                              add_generation_prompt=True)


def test_lora_student_generates_and_trains_only_its_adapters(tmp_path, tokenizer, teacher):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    trainer = DistillationTrainer(make_llama(len(tokenizer), 32, 1, seed=1),
                                  tiny_config(tmp_path, lmbda=1.0, alpha=0.0, max_new_tokens=6, learning_rate=1e-2,
                                              max_steps=1),
                                  train_dataset=varied_prompts(8), processing_class=tokenizer, teacher_model=teacher,
                                  peft_config=lora)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.state.log_history[0]["completion_length"] > 0
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all("lora_" in k for k in changed)


def test_feature_alignment_trains_on_generated_batches(tmp_path, tokenizer):
    trainer = trainer_for(tmp_path, tokenizer, lmbda=1.0, feature_weight=1.0, max_new_tokens=4, max_steps=1,
                          dataset=varied_prompts(8))
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["feature_loss"] > 0 and log["completion_length"] > 0


def test_bf16_generation_runs_the_student_in_bf16(tmp_path, tokenizer):
    student = make_llama(len(tokenizer), 32, 1, seed=1)
    trainer = trainer_for(tmp_path, tokenizer, student=student, lmbda=1.0, max_new_tokens=3, bf16=True, use_cpu=True)
    seen = set()
    student.model.layers[0].mlp.register_forward_hook(lambda _m, _a, out: seen.add(out.dtype))
    trainer.get_batch_samples(iter([first_batch(trainer)]), 1, CPU)
    assert seen == {torch.bfloat16}


def test_a_sample_of_completions_is_logged_every_logging_step(tmp_path, tokenizer):
    trainer = trainer_for(tmp_path, tokenizer, lmbda=1.0, max_new_tokens=4, num_completions_to_print=2,
                          dataset=varied_prompts(8))
    trainer.train()
    rows = [json.loads(line) for line in (tmp_path / "out" / "completions.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 1, 2, 2] and {row["source"] for row in rows} == {"student"}
    assert all(row["prompt"] and row["completion"] for row in rows)
    assert all(0 < log["completion_length"] <= 4 for log in trainer.state.log_history if "loss" in log)


# --- refused, with the reason ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("fields, match", [
    (dict(lmbda=0.5, teacher_cache="cache_dir"), "cannot score completions sampled during training"),
    (dict(seq_kd=True, teacher_cache="cache_dir"), "teacher cache"),
    (dict(lmbda=1.0, co_distill=True), "the student's own guesses"),
    (dict(lmbda=1.0, packing=True), "no single prompt"),
    (dict(seq_kd=True, teacher_url="http://localhost:1/v1"), "a served teacher"),
    (dict(lmbda=1.5), r"lmbda .* must be in \[0, 1\]"),
    (dict(lmbda=1.0, generation_top_p=0.0), "generation_top_p"),
])
def test_config_refuses_what_cannot_work_on_generated_batches(tmp_path, fields, match):
    with pytest.raises(ValueError, match=match):
        DistillationConfig(output_dir=str(tmp_path), **fields)


def test_plain_text_data_is_refused_at_construction(tmp_path, tokenizer, text_dataset):
    with pytest.raises(NoPromptError, match="no prompt"):
        trainer_for(tmp_path, tokenizer, lmbda=1.0, dataset=text_dataset)


