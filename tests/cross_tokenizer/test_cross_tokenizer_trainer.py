"""DistillationTrainer with a teacher of another tokenizer (cross_tokenizer="align"/"uld"), on tiny Llamas: a ByteLevel
BPE student, a SentencePiece-style (Unigram, Metaspace, <bos>) teacher."""

from __future__ import annotations

import pytest
import torch
from cross_tokenizer_helpers import naive_loss
from datasets import Dataset
from helpers import CORPUS, GradCapture, make_llama, make_tokenizer, tiny_config

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.cross_tokenizer.collator import (
    ALIGNED_POSITIONS,
    TEACHER_IDS,
    TEACHER_MASK,
)
from hf_distill.cross_tokenizer.vocabulary import shared_vocabulary
from hf_distill.teacher.vocab import VocabularyMismatchError


def cross_trainer(tmp_path, student_tokenizer, teacher_tokenizer, method="align", dataset=None, teacher_kwargs=None,
                  **config):
    return DistillationTrainer(
        make_llama(len(student_tokenizer), 32, 1, seed=1),
        tiny_config(tmp_path, cross_tokenizer=method, **config),
        train_dataset=dataset if dataset is not None else Dataset.from_dict({"text": CORPUS[:48]}),
        processing_class=student_tokenizer, teacher_model=make_llama(len(teacher_tokenizer), 64, 2, seed=2),
        **({"teacher_processing_class": teacher_tokenizer} if teacher_kwargs is None else teacher_kwargs),
    )


@pytest.mark.parametrize("method", ["align", "uld"])
def test_compute_loss_is_the_dense_loss_at_the_positions_that_read_the_same_text(
    tmp_path, bytelevel_tokenizer, metaspace_tokenizer, method
):
    trainer = cross_trainer(tmp_path, bytelevel_tokenizer, metaspace_tokenizer, method, temperature=2.0, alpha=0.3)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in (0, 7, 30)])
    assert batch[ALIGNED_POSITIONS].shape[0] == 3 and (batch[ALIGNED_POSITIONS][..., 0] >= 0).sum() > 30
    loss = trainer.compute_loss(trainer.model, dict(batch))

    with torch.no_grad():
        student_logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        teacher_logits = trainer.teacher_model(input_ids=batch[TEACHER_IDS], attention_mask=batch[TEACHER_MASK]).logits
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    row_of = torch.full(mask.shape, -1)
    row_of[mask] = torch.arange(int(mask.sum()))
    index, teacher_rows = torch.full((int(mask.sum()),), -1), []
    for b, pairs in enumerate(batch[ALIGNED_POSITIONS].tolist()):
        for s, t in pairs:
            if s >= 0 and mask[b, s]:
                index[row_of[b, s]] = len(teacher_rows)
                teacher_rows.append(teacher_logits[b, t])
    vocab = shared_vocabulary(bytelevel_tokenizer, metaspace_tokenizer, len(bytelevel_tokenizer),
                              len(metaspace_tokenizer))
    want, _ = naive_loss(student_logits[:, :-1][mask], torch.stack(teacher_rows), index, labels[mask], vocab, method,
                         2.0, 0.3, int(mask.sum()))
    torch.testing.assert_close(loss, want.float(), rtol=1e-5, atol=1e-6)


def test_distilling_across_tokenizers_moves_the_student_towards_the_teacher(
    tmp_path, bytelevel_tokenizer, metaspace_tokenizer
):
    split = Dataset.from_dict({"text": CORPUS}).train_test_split(test_size=0.2, seed=0)
    trainer = DistillationTrainer(
        make_llama(len(bytelevel_tokenizer), 32, 1, seed=1),
        tiny_config(tmp_path, cross_tokenizer="align", max_steps=20, learning_rate=1e-2, alpha=0.0, logging_steps=5,
                    per_device_eval_batch_size=8),
        train_dataset=split["train"], eval_dataset=split["test"], processing_class=bytelevel_tokenizer,
        teacher_model=make_llama(len(metaspace_tokenizer), 64, 2, seed=2), teacher_processing_class=metaspace_tokenizer,
    )
    before = trainer.evaluate()["eval_kd_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_kd_loss"]
    assert after < 0.7 * before, (before, after)
    logged = {key for entry in trainer.state.log_history for key in entry}
    assert {"kd_loss", "ce_loss", "top1_agreement", "eval_top1_agreement"} <= logged
    trainer.save_model()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "cross-tokenizer method" in card and "`align`: span alignment" in card


def test_one_batch_of_8_and_four_micro_batches_of_2_give_the_same_gradient(
    tmp_path, bytelevel_tokenizer, metaspace_tokenizer
):
    texts = [" ".join(CORPUS[i : i + 1 + (i % 4)]) for i in range(16)]  # rows of very different lengths
    grads = []
    for batch_size, accumulation in ((8, 1), (2, 4)):
        capture = GradCapture()
        trainer = cross_trainer(tmp_path, bytelevel_tokenizer, metaspace_tokenizer, "align",
                                Dataset.from_dict({"text": texts}), max_steps=1, per_device_train_batch_size=batch_size,
                                gradient_accumulation_steps=accumulation, temperature=2.0, alpha=0.3)
        trainer.add_callback(capture)
        trainer.train()
        grads.append(capture.grads[-1])
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 0
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_a_teacher_with_another_tokenizer_is_still_refused_by_default(tmp_path, bytelevel_tokenizer,
                                                                        metaspace_tokenizer):
    with pytest.raises(VocabularyMismatchError):
        cross_trainer(tmp_path, bytelevel_tokenizer, metaspace_tokenizer, method=None)


def test_cross_tokenizer_errors_name_the_fix(tmp_path, bytelevel_tokenizer, metaspace_tokenizer):
    with pytest.raises(ValueError, match="teacher_cache"):
        DistillationConfig(output_dir=str(tmp_path), cross_tokenizer="align", teacher_cache=str(tmp_path))
    with pytest.raises(ValueError, match="one of"):
        DistillationConfig(output_dir=str(tmp_path), cross_tokenizer="gold")
    with pytest.raises(ValueError, match="kd_loss"):
        DistillationConfig(output_dir=str(tmp_path), cross_tokenizer="uld", kd_loss="jsd")
    with pytest.raises(ValueError, match="teacher_processing_class="):  # a model object: no tokenizer beside it
        cross_trainer(tmp_path, bytelevel_tokenizer, metaspace_tokenizer, teacher_kwargs={})
    no_decoder = make_tokenizer(400)  # ByteLevel pieces without a ByteLevel decoder: "Ġ" would reach the teacher
    with pytest.raises(ValueError, match="decoder"):
        cross_trainer(tmp_path, no_decoder, metaspace_tokenizer)


def test_conversations_train_with_the_teachers_chat_template(tmp_path, chat_pair):
    student_tokenizer, teacher_tokenizer = chat_pair
    conversations = [[{"role": "user", "content": text.split(", so ")[0] + "."},
                      {"role": "assistant", "content": "so " + text.split(", so ")[1]}] for text in CORPUS[:16]]
    trainer = cross_trainer(tmp_path, student_tokenizer, teacher_tokenizer, "align",
                            Dataset.from_dict({"messages": conversations}), max_steps=2)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    start_of_turn = teacher_tokenizer.convert_tokens_to_ids("<start_of_turn>")
    assert ((batch[TEACHER_IDS] == start_of_turn).sum(1) == 2).all()  # Gemma-style turns for the teacher
    labels = batch["labels"][:, 1:]
    pairs = batch[ALIGNED_POSITIONS]
    with_loss = [(b, s) for b in range(2) for s, _ in pairs[b].tolist() if s >= 0 and labels[b, s] != -100]
    answer_tokens = int((labels != -100).sum())
    assert answer_tokens // 2 <= len(with_loss) <= answer_tokens  # most assistant tokens have a teacher position
    trainer.train()
    assert any("kd_loss" in entry for entry in trainer.state.log_history)


@pytest.mark.real_model
def test_a_gemma_vocabulary_teacher_trains_a_smollm2_vocabulary_student(tmp_path, smollm2_tokenizer, gemma_tokenizer):
    """The real tokenizers and vocabulary sizes (262,144 and 49,152) on random one-layer models: the 262k-wide
    teacher head is applied chunk by chunk at the aligned positions only."""
    texts = ["Natalia sold clips to 48 of her friends in April.", "Then she sold half as many clips in May."] * 2
    trainer = DistillationTrainer(
        make_llama(len(smollm2_tokenizer), 16, 1, seed=1, pad_token_id=smollm2_tokenizer.pad_token_id,
                   eos_token_id=smollm2_tokenizer.eos_token_id),
        tiny_config(tmp_path, cross_tokenizer="uld", max_steps=1, per_device_train_batch_size=2),
        train_dataset=Dataset.from_dict({"text": texts}), processing_class=smollm2_tokenizer,
        teacher_model=make_llama(len(gemma_tokenizer), 16, 1, seed=2), teacher_processing_class=gemma_tokenizer,
    )
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    teacher_ids = batch[TEACHER_IDS][0, : int(batch[TEACHER_MASK][0].sum())].tolist()
    assert teacher_ids == gemma_tokenizer(texts[0])["input_ids"] + [gemma_tokenizer.eos_token_id]
    trainer.train()
    logged = trainer.state.log_history[0]
    assert torch.isfinite(torch.tensor(logged["loss"])) and logged["kd_loss"] > 0


def test_a_teacher_cache_given_to_the_trainer_is_refused_with_cross_tokenizer(tmp_path, bytelevel_tokenizer):
    # the config-level check only sees `args.teacher_cache`; `teacher_cache=` passed to the trainer is checked there
    with pytest.raises(ValueError, match="cannot use a teacher cache"):
        DistillationTrainer(make_llama(len(bytelevel_tokenizer), 32, 1), tiny_config(tmp_path, cross_tokenizer="uld"),
                            train_dataset=Dataset.from_dict({"text": CORPUS[:8]}),
                            processing_class=bytelevel_tokenizer, teacher_cache=str(tmp_path / "no-cache-here"))
