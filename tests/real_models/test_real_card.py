"""The trainer's card on a real run: SmolLM2-135M-Instruct teaches a narrow 2-layer student with its vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets import Dataset
from helpers import CORPUS, tiny_config
from huggingface_hub import ModelCard
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from hf_distill import DistillationTrainer


@pytest.mark.real_model
def test_card_of_a_real_smollm2_run_names_the_teacher_and_its_metrics(tmp_path, smollm2_dir):
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = AutoConfig.from_pretrained(smollm2_dir, num_hidden_layers=2, hidden_size=64, intermediate_size=128,
                                        num_attention_heads=2, num_key_value_heads=1, head_dim=32)  # its vocabulary
    student = AutoModelForCausalLM.from_config(config)
    args = tiny_config(tmp_path, max_steps=1, per_device_train_batch_size=2, max_length=24, kd_loss="skew_forward_kl",
                       beta=0.1, temperature=2.0)
    trainer = DistillationTrainer(student, args, train_dataset=Dataset.from_dict({"text": CORPUS[:4]}),
                                  processing_class=tokenizer, teacher_model=str(smollm2_dir))
    trainer.train()
    trainer.save_model()
    card = ModelCard.load(tmp_path / "out" / "README.md")
    last = [entry for entry in trainer.state.log_history if "kd_loss" in entry][-1]
    assert "from the teacher `smollm2-135m-instruct` (a local checkpoint; 134.5M parameters)" in card.text
    assert "is a 3.2M-parameter student" in card.text
    assert "| KD loss | `skew_forward_kl` |" in card.text and "| beta | 0.1 |" in card.text
    assert f"| kd_loss | {last['kd_loss']:.4g} | 1 |" in card.text and last["kd_loss"] > 0
    assert f"| top1_agreement | {last['top1_agreement']:.1%} | 1 |" in card.text
    for local in (str(tmp_path), str(smollm2_dir), str(Path.home())):
        assert local not in card.content
    assert "None" not in card.content and card.data.base_model is None
