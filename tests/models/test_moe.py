"""MoE students upcycled from a dense Llama: Mixtral experts that start as the teacher's MLP (copies compute the
teacher's function exactly; slices hold its neurons), honest active/total parameter counts, and the load-balancing
loss reaching the gradients even when the loss is computed from the backbone's hidden states (DistillationTrainer)."""

from __future__ import annotations

import pytest
import torch
from helpers import distillation_trainer, make_llama
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from hf_distill.models.introspect import final_hidden_states
from hf_distill.models.moe import (
    attach_load_balancing_loss,
    expert_slices,
    parameter_counts,
    upcycle_to_mixtral,
)


@pytest.fixture
def dense(tokenizer):
    return make_llama(len(tokenizer), hidden=32, layers=2, seed=3).eval()


def test_copied_experts_compute_the_dense_model_exactly(dense):
    moe = upcycle_to_mixtral(dense, num_experts=4, top_k=2).eval()
    ids = torch.randint(3, dense.config.vocab_size, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(moe(ids).logits, dense(ids).logits, rtol=1e-5, atol=1e-5)
    assert type(moe).__name__ == "MixtralForCausalLM" and moe.config.num_local_experts == 4


def test_sliced_experts_hold_blocks_of_the_dense_mlp(dense):
    moe = upcycle_to_mixtral(dense, num_experts=4, top_k=1, expert_intermediate_size=16)  # dense MLP: 64 wide
    mlp, experts = dense.model.layers[1].mlp, moe.model.layers[1].mlp.experts
    assert expert_slices(64, 4, 16) == [slice(0, 16), slice(16, 32), slice(32, 48), slice(48, 64)]
    torch.testing.assert_close(experts.gate_up_proj[2], torch.cat([mlp.gate_proj.weight[32:48],
                                                                   mlp.up_proj.weight[32:48]]))
    torch.testing.assert_close(experts.down_proj[3], mlp.down_proj.weight[:, 48:64])


def test_active_parameters_exclude_the_experts_a_token_skips(dense):
    moe = upcycle_to_mixtral(dense, num_experts=4, top_k=1, expert_intermediate_size=16)
    counts = parameter_counts(moe)
    expert = 3 * 32 * 16  # gate, up, down of one expert
    assert counts["total"] == sum(p.numel() for p in moe.parameters())
    assert counts["total"] - counts["active"] == 3 * expert * 2  # 3 idle experts in each of 2 layers
    # four 16-wide slices with one active: the active MLP is a quarter of the dense one, attention etc. unchanged
    dense_mlp = 2 * 3 * 32 * 64
    routers = 2 * 4 * 32
    assert counts["active"] == parameter_counts(dense)["active"] - dense_mlp + dense_mlp // 4 + routers


def test_load_balancing_loss_reaches_gradients_through_the_backbone(dense):
    """The trainer's loss is computed from `model.model`'s hidden states; with the hook attached, the router's
    gradient is the loss's plus exactly coef x the gradient of Mixtral's own load-balancing loss."""
    ids, mask = torch.randint(3, dense.config.vocab_size, (2, 9)), torch.ones(2, 9, dtype=torch.long)
    mask[1, :3] = 0
    inputs = {"input_ids": ids, "attention_mask": mask}

    def router_grad(model):
        model.zero_grad()
        final_hidden_states(model, inputs, use_head=True).square().mean().backward()
        return model.model.layers[0].mlp.gate.weight.grad.clone()

    moe = upcycle_to_mixtral(dense, num_experts=4, top_k=2, router_aux_loss_coef=0.5).train()
    without = router_grad(moe)
    handles = attach_load_balancing_loss(moe)
    with_aux = router_grad(moe)
    moe.zero_grad()
    router_logits = []
    hooks = [m.mlp.gate.register_forward_hook(lambda mod, a, out: router_logits.append(out[0]))
             for m in moe.model.layers]
    moe.model(**inputs)
    (0.5 * load_balancing_loss_func(tuple(router_logits), 4, 2, mask)).backward()
    torch.testing.assert_close(with_aux - without, moe.model.layers[0].mlp.gate.weight.grad, rtol=1e-4, atol=1e-7)
    assert moe.last_aux_loss > 0
    for handle in handles + hooks:
        handle.remove()


def test_moe_student_distils_with_its_aux_loss(tokenizer, dense, tmp_path):
    moe = upcycle_to_mixtral(make_llama(len(tokenizer), hidden=32, layers=1, seed=1), num_experts=4, top_k=2)
    attach_load_balancing_loss(moe)
    trainer = distillation_trainer(tmp_path, tokenizer, student=moe, teacher=dense)
    router_before = moe.model.layers[0].mlp.gate.weight.detach().clone()
    trainer.train()
    assert trainer.state.global_step == 2 and torch.isfinite(moe.last_aux_loss)
    assert not torch.equal(router_before, moe.model.layers[0].mlp.gate.weight)


def test_upcycling_refuses_what_mixtral_cannot_hold(dense):
    from transformers import GPT2Config, GPT2LMHeadModel

    with pytest.raises(ValueError, match="Llama or Mistral"):
        upcycle_to_mixtral(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)))
    with pytest.raises(ValueError, match="top_k"):
        upcycle_to_mixtral(dense, num_experts=2, top_k=3)
    with pytest.raises(ValueError, match="expert_intermediate_size"):
        upcycle_to_mixtral(dense, expert_intermediate_size=65)
