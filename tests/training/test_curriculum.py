"""Curriculum: the sampler's easy-to-hard order, the difficulty measures, and the trainer switch."""

import pytest
import torch
from datasets import Dataset
from helpers import prompt_completion, tiny_config

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.training.curriculum import (
    CurriculumSampler,
    length_difficulty,
    steps_difficulty,
    teacher_loss_difficulty,
)


def test_first_epoch_goes_from_easy_to_hard_bucket_by_bucket():
    difficulty = [3, 0, 2, 1, 3, 0, 1, 2]  # two examples per level
    order = list(CurriculumSampler(difficulty, num_buckets=4, seed=0))
    assert sorted(order) == list(range(8))
    assert [difficulty[i] for i in order] == [0, 0, 1, 1, 2, 2, 3, 3]


def test_buckets_are_shuffled_inside_and_seeded():
    difficulty = list(range(40))
    orders = {tuple(CurriculumSampler(difficulty, num_buckets=2, seed=seed)) for seed in range(5)}
    assert len(orders) > 1  # not a fixed sort
    for order in orders:
        assert set(order[:20]) == set(range(20)) and set(order[20:]) == set(range(20, 40))
    assert list(CurriculumSampler(difficulty, seed=7)) == list(CurriculumSampler(difficulty, seed=7))


def test_after_the_curriculum_epochs_order_is_uniformly_shuffled():
    sampler = CurriculumSampler(list(range(64)), num_buckets=4, curriculum_epochs=1, seed=0)
    first = list(sampler)
    sampler.set_epoch(1)
    later = list(sampler)
    assert sorted(later) == list(range(64))
    assert max(later[:16]) > 16  # hard examples appear in the first quarter
    assert max(first[:16]) < 16


def test_steps_difficulty_uses_num_steps_or_counts_equations():
    assert steps_difficulty(Dataset.from_dict({"num_steps": [2, 1]})) == [2.0, 1.0]
    data = Dataset.from_dict({"completion": [[{"role": "assistant", "content": "2+3 = 5\n5*2 = 10\n#### 10"}],
                                             [{"role": "assistant", "content": "#### 4"}]]})
    assert steps_difficulty(data) == [2.0, 0.0]
    with pytest.raises(ValueError, match="curriculum='length'"):
        steps_difficulty(Dataset.from_dict({"text": ["x"]}))


def test_length_difficulty_counts_tokens(tokenizer):
    assert length_difficulty(Dataset.from_dict({"input_ids": [[1, 2, 3], [4]]})) == [3.0, 1.0]
    data = prompt_completion(slice(0, 2))
    expected = [len(tokenizer(p + c)["input_ids"]) for p, c in zip(data["prompt"], data["completion"])]
    assert length_difficulty(data, tokenizer) == expected


def test_teacher_loss_difficulty_is_the_mean_loss_on_label_tokens(tokenizer, teacher):
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 0]])
    labels = torch.tensor([[-100, -100, 7, 8], [-100, 10, 11, -100]])
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": labels.tolist()})

    def collate(rows):
        return {key: torch.tensor([row[key] for row in rows]) for key in ("input_ids", "labels")}

    scores = teacher_loss_difficulty(teacher, data, collate, batch_size=2)
    logits = teacher(input_ids=ids).logits
    for row in range(2):
        targets = labels[row, 1:]
        keep = targets != -100
        expected = torch.nn.functional.cross_entropy(logits[row, :-1][keep], targets[keep])
        assert scores[row] == pytest.approx(expected.item(), rel=1e-5)


def test_config_rejects_curriculum_with_another_sampler(tmp_path):
    with pytest.raises(ValueError, match="train_sampling_strategy"):
        DistillationConfig(output_dir=str(tmp_path), curriculum="length", train_sampling_strategy="group_by_length")


@pytest.mark.parametrize("by", ["num_steps", "length", "teacher_loss"])
def test_trainer_draws_batches_easy_to_hard(tmp_path, tokenizer, student, teacher, by):
    base = prompt_completion(slice(0, 16))  # completions of 1-4 sentences: length follows num_steps
    data = Dataset.from_dict({"prompt": base["prompt"], "num_steps": [i % 4 for i in range(16)],
                              "completion": [c * (1 + i % 4) for i, c in enumerate(base["completion"])]})
    trainer = DistillationTrainer(student, tiny_config(tmp_path, curriculum=by), train_dataset=data,
                                  processing_class=tokenizer, teacher_model=teacher)
    sampler = trainer._get_train_sampler()
    assert isinstance(sampler, CurriculumSampler)
    order = list(sampler)
    difficulty = sampler.difficulty.tolist()
    assert difficulty[order[0]] <= sorted(difficulty)[len(difficulty) // 10]
    quarters = [sum(difficulty[i] for i in order[k : k + 4]) for k in range(0, 16, 4)]
    assert quarters == sorted(quarters) and quarters[0] < quarters[-1]
    if by == "num_steps":
        assert difficulty == [float(i % 4) for i in range(16)]  # read from the column the Trainer prunes
    trainer.train()


def test_unknown_curriculum_names_the_choices(tmp_path, tokenizer, student, teacher):
    trainer = DistillationTrainer(student, tiny_config(tmp_path, curriculum="nope"), train_dataset=prompt_completion(),
                                  processing_class=tokenizer, teacher_model=teacher)
    with pytest.raises(ValueError, match="teacher_loss"):
        trainer._get_train_sampler()
