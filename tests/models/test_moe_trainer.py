"""An upcycled MoE student trained by `DistillationTrainer` directly (not through the cascade): TRL's `SFTTrainer`
switches `output_router_logits` on for any MoE with a non-zero aux-loss coefficient; ours reads hidden states only,
so the flag is switched off again, and the saved student generates in batches with left padding."""

from __future__ import annotations

import torch
from helpers import distillation_trainer, make_llama
from transformers import AutoModelForCausalLM

from hf_distill.models.moe import attach_load_balancing_loss, upcycle_to_mixtral


def test_distilled_moe_student_saves_without_router_logits_and_generates_in_batches(tmp_path, tokenizer):
    dense = make_llama(len(tokenizer), hidden=32, layers=1, seed=1)
    student = upcycle_to_mixtral(dense, num_experts=4, top_k=2)
    assert student.config.router_aux_loss_coef > 0  # what makes TRL switch the router logits on
    attach_load_balancing_loss(student)
    trainer = distillation_trainer(tmp_path, tokenizer, student=student, max_steps=1)
    assert student.config.output_router_logits is False
    trainer.train()
    assert torch.isfinite(student.last_aux_loss)  # the load-balancing loss still ran, through the hooks
    trainer.save_model(str(tmp_path / "final"))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    assert reloaded.config.output_router_logits is False
    tokenizer.padding_side = "left"
    batch = tokenizer(["Question: 1 + 2?", "Question: what is 12 + 30 and then 4?"], return_tensors="pt",
                      padding=True)
    out = reloaded.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[0] == 2 and out.shape[1] > batch["input_ids"].shape[1]  # it wrote, for both rows
