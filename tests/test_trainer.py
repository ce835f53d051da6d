"""DistillationTrainer end to end on tiny models: loss parity, accumulation, teacher handling, early errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from helpers import (
    CORPUS,
    GradCapture,
    make_llama,
    make_tokenizer,
    prompt_completion,
    tiny_config,
)
from transformers import (
    AutoModelForCausalLM,
    DataCollatorForLanguageModeling,
    Trainer,
    TrainerCallback,
    TrainingArguments,
)

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.models.introspect import has_plain_output_head
from hf_distill.teacher.vocab import VocabularyMismatchError


def _reference_loss(student, teacher, batch, temperature, alpha, vocab):
    """Full logits from both models, shifted and masked by hand, naive formula."""
    with torch.no_grad():
        t_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    s_logits = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    s, t, y = s_logits[:, :-1][mask], t_logits[:, :-1][mask], targets[mask]
    kd = F.kl_div((s[:, :vocab] / temperature).log_softmax(-1), (t[:, :vocab] / temperature).log_softmax(-1),
                  log_target=True, reduction="sum") * temperature**2
    ce = F.cross_entropy(s, y, reduction="sum")
    return (alpha * ce + (1 - alpha) * kd) / mask.sum(), mask


def test_loss_matches_full_logit_reference_and_masks_prompt_tokens(tmp_path, tokenizer, student, teacher):
    trainer = DistillationTrainer(student, tiny_config(tmp_path, temperature=2.0, alpha=0.25, kd_chunk_size=5),
                                  train_dataset=prompt_completion(), processing_class=tokenizer, teacher_model=teacher)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    want, mask = _reference_loss(student, teacher, batch, 2.0, 0.25, len(tokenizer))
    assert 0 < mask.sum() < (batch["attention_mask"][:, 1:] == 1).sum()  # prompt tokens really are masked
    got = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got_grad = torch.autograd.grad(got, [student.lm_head.weight, student.model.embed_tokens.weight])
    want_grad = torch.autograd.grad(want, [student.lm_head.weight, student.model.embed_tokens.weight])
    for a, b in zip(got_grad, want_grad):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)


def test_teacher_with_padded_vocabulary_is_sliced_to_the_tokenizer(tmp_path, tokenizer, student):
    padded_teacher = make_llama(len(tokenizer) + 8, hidden=64, layers=2, seed=5)  # like 151936 vs 152064
    trainer = DistillationTrainer(student, tiny_config(tmp_path, alpha=0.0), train_dataset=prompt_completion(),
                                  processing_class=tokenizer, teacher_model=padded_teacher)
    assert trainer.vocab_size == len(tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    want, _ = _reference_loss(student, padded_teacher, batch, 1.0, 0.0, len(tokenizer))
    torch.testing.assert_close(trainer.compute_loss(trainer.model, batch), want, rtol=1e-5, atol=1e-6)


def test_one_batch_of_8_and_four_micro_batches_of_2_give_the_same_gradient(tmp_path, tokenizer):
    # Lengths differ a lot between rows, so a per-micro-batch mean would weight tokens unequally.
    texts = [" ".join(CORPUS[i : i + 1 + (i % 4)]) for i in range(16)]
    dataset = Dataset.from_dict({"text": texts})
    grads = []
    for batch_size, accumulation in ((8, 1), (2, 4)):
        capture = GradCapture()
        trainer = DistillationTrainer(
            make_llama(len(tokenizer), 32, 1, seed=1),
            tiny_config(tmp_path, max_steps=1, per_device_train_batch_size=batch_size,
                    gradient_accumulation_steps=accumulation, temperature=2.0, alpha=0.3),
            train_dataset=dataset, processing_class=tokenizer, teacher_model=make_llama(len(tokenizer), 64, 2, seed=2),
            callbacks=[capture],
        )
        trainer.train()
        grads.append(capture.grads[-1])
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_training_lowers_held_out_student_teacher_kl(tmp_path, tokenizer, student, teacher):
    data = Dataset.from_dict({"text": CORPUS})
    split = data.train_test_split(test_size=0.2, seed=0)
    trainer = DistillationTrainer(
        student, tiny_config(tmp_path, max_steps=40, learning_rate=3e-3, alpha=0.0, logging_steps=10),
        train_dataset=split["train"], eval_dataset=split["test"], processing_class=tokenizer, teacher_model=teacher,
    )
    before = trainer.evaluate()["eval_kd_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_kd_loss"]
    assert after < 0.5 * before, (before, after)
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"kd_loss", "ce_loss", "top1_agreement", "eval_top1_agreement"} <= logged


def _stock_transformers_script(trainer_cls, tmp_path, tokenizer, model, **trainer_kwargs):
    """A training script written the way the transformers docs write one."""

    class StepCounter(TrainerCallback):
        steps = 0

        def on_step_end(self, args, state, control, **kwargs):
            StepCounter.steps += 1

    raw = Dataset.from_dict({"text": CORPUS[:40]}).train_test_split(test_size=0.2, seed=0)
    tokenized = raw.map(lambda batch: tokenizer(batch["text"], truncation=True, max_length=64), batched=True,
                        remove_columns=["text"])
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=2, per_device_train_batch_size=4,
                             save_strategy="steps", save_steps=2, report_to=[], use_cpu=True, logging_steps=1)
    trainer = trainer_cls(
        model=model, args=args, train_dataset=tokenized["train"], eval_dataset=tokenized["test"],
        data_collator=DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False), processing_class=tokenizer,
        callbacks=[StepCounter()], **trainer_kwargs,
    )
    trainer.train()
    metrics = trainer.evaluate()
    trainer.save_model(str(tmp_path / "final"))
    return trainer, metrics, StepCounter.steps


def test_drop_in_replacement_for_a_stock_transformers_script(tmp_path, tokenizer, teacher):
    base = make_llama(len(tokenizer), 32, 1, seed=1)
    _, plain_metrics, plain_steps = _stock_transformers_script(Trainer, tmp_path / "plain", tokenizer,
                                                               copy.deepcopy(base))
    trainer, metrics, steps = _stock_transformers_script(DistillationTrainer, tmp_path / "kd", tokenizer,
                                                         copy.deepcopy(base), teacher_model=teacher)
    assert isinstance(trainer.args, DistillationConfig) and trainer.args.kd_loss == "forward_kl"
    assert steps == plain_steps == 2
    assert "eval_loss" in plain_metrics and {"eval_loss", "eval_kd_loss"} <= metrics.keys()
    assert (tmp_path / "kd" / "run" / "checkpoint-2" / "model.safetensors").exists()

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "kd" / "final")
    assert reloaded.config.hidden_size == 32  # the student, not the 64-wide teacher
    saved = set(reloaded.state_dict())
    assert saved == set(base.state_dict())
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in base.parameters())
    for name, tensor in trainer.model.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor.cpu(), msg=name)


def test_teacher_from_local_path_is_frozen_and_unchanged(tmp_path, tokenizer, student, teacher):
    teacher_dir = tmp_path / "teacher"
    teacher.save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    before = {name: p.clone() for name, p in teacher.state_dict().items()}
    trainer = DistillationTrainer(student, tiny_config(tmp_path, max_steps=3, learning_rate=1e-2),
                                  train_dataset=Dataset.from_dict({"text": CORPUS[:32]}), processing_class=tokenizer,
                                  teacher_model=str(teacher_dir))
    trainer.train()
    loaded = trainer.teacher_model
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for name, tensor in loaded.state_dict().items():
        torch.testing.assert_close(tensor, before[name], msg=name)
    assert trainer.state.log_history[0]["kd_loss"] > 0


def test_teacher_path_can_come_from_the_config(tmp_path, tokenizer, student, teacher):
    teacher.save_pretrained(tmp_path / "t")
    trainer = DistillationTrainer(student, tiny_config(tmp_path, teacher_model_name_or_path=str(tmp_path / "t"),
                                                   teacher_dtype="bfloat16"),
                                  train_dataset=Dataset.from_dict({"text": CORPUS[:8]}), processing_class=tokenizer)
    assert trainer.teacher_model.dtype == torch.bfloat16
    trainer.train()


def test_missing_teacher_is_an_error(tmp_path, tokenizer, student):
    with pytest.raises(ValueError, match="teacher_model"):
        DistillationTrainer(student, tiny_config(tmp_path), train_dataset=Dataset.from_dict({"text": CORPUS[:8]}),
                            processing_class=tokenizer)


def test_different_tokenizer_is_rejected_with_the_fix(tmp_path, tokenizer, student, teacher):
    other = make_tokenizer(vocab_size=len(tokenizer))
    other.backend_tokenizer.add_tokens(["<zzz>"])  # one token moves: ids no longer mean the same thing
    other_teacher = make_llama(len(other), 64, 2, seed=3)
    with pytest.raises(VocabularyMismatchError, match="traces"):
        DistillationTrainer(student, tiny_config(tmp_path), train_dataset=Dataset.from_dict({"text": CORPUS[:8]}),
                            processing_class=tokenizer, teacher_model=other_teacher, teacher_processing_class=other)


def test_untokenized_data_with_a_stock_collator_fails_at_construction(tmp_path, tokenizer, student, teacher):
    # TRL tokenizes the text and adds ragged `labels`, which transformers' collator cannot pad: fail now, not at step 1
    ragged = Dataset.from_dict({"text": [CORPUS[0], CORPUS[1] + " " + CORPUS[2]]})
    with pytest.raises(ValueError, match="data collator cannot batch"):
        DistillationTrainer(student, tiny_config(tmp_path), train_dataset=ragged,
                            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
                            processing_class=tokenizer, teacher_model=teacher)


def test_messages_dataset_without_chat_template_fails_at_construction(tmp_path, tokenizer, student, teacher):
    messages = Dataset.from_dict({"messages": [[{"role": "user", "content": "hi"},
                                                {"role": "assistant", "content": "Ann has 3 apples."}]] * 4})
    no_template = copy.deepcopy(tokenizer)
    no_template.chat_template = None
    with pytest.raises(ValueError, match="chat.template|chat_template"):
        DistillationTrainer(student, tiny_config(tmp_path), train_dataset=messages, processing_class=no_template,
                            teacher_model=teacher)


def test_empty_dataset_is_rejected(tmp_path, tokenizer, student, teacher):
    with pytest.raises(ValueError, match="empty"):
        DistillationTrainer(student, tiny_config(tmp_path), train_dataset=Dataset.from_dict({"text": []}),
                            processing_class=tokenizer, teacher_model=teacher)


def test_config_validates_ranges():
    with pytest.raises(ValueError, match="temperature"):
        DistillationConfig("x", temperature=0)
    with pytest.raises(ValueError, match="Unknown distillation loss"):
        DistillationConfig("x", kd_loss="kl")


def test_output_head_detection(tokenizer):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    assert has_plain_output_head(make_llama(len(tokenizer)))
    gemma = Gemma2ForCausalLM(Gemma2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                           num_attention_heads=2, num_key_value_heads=1, head_dim=8))
    assert not has_plain_output_head(gemma)  # soft-capped logits: the trainer uses the model's own logits
