"""Shrinking a teacher: which layers/channels/heads are kept, and that every student weight is the intended slice."""

from __future__ import annotations

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from hf_distill.models import count_parameters
from hf_distill.shrink import ShrinkSpec, select_layers, shrink_model, shrunk_config
from tests.conftest import make_llama


@pytest.mark.parametrize(
    ("strategy", "keep", "expected"),
    [("uniform", 4, [0, 4, 7, 11]), ("uniform", 2, [0, 11]), ("first", 3, [0, 1, 2]), ("last", 3, [9, 10, 11]),
     ("uniform", 1, [0])],
)
def test_select_layers_by_strategy(strategy, keep, expected):
    assert select_layers(12, ShrinkSpec(num_layers=keep, layer_strategy=strategy)) == expected


def test_explicit_layers_keep_the_given_order_and_reject_bad_indices():
    assert select_layers(6, ShrinkSpec(layer_strategy="explicit", layers=[5, 0, 2])) == [5, 0, 2]
    with pytest.raises(ValueError, match=r"distinct indices in \[0, 6\)"):
        select_layers(6, ShrinkSpec(layer_strategy="explicit", layers=[1, 6]))
    with pytest.raises(ValueError, match="layer_strategy: explicit"):
        ShrinkSpec(layers=[0, 1])
    with pytest.raises(ValueError, match="use one of"):
        ShrinkSpec(layer_strategy="random")


def test_identity_shrink_reproduces_the_teacher_exactly():
    teacher = make_llama(97, hidden=32, layers=3).eval()
    student, _ = shrink_model(teacher, ShrinkSpec())
    ids = torch.randint(0, 97, (2, 11))
    torch.testing.assert_close(student(ids).logits, teacher(ids).logits, rtol=0, atol=0)


def test_shrink_copies_the_planned_slices_of_the_planned_layers():
    teacher = make_llama(97, hidden=64, layers=4)  # 4 heads of 16, 2 kv heads
    spec = ShrinkSpec(layer_strategy="explicit", layers=[3, 1], hidden_size=40, intermediate_size=48,
                      num_attention_heads=2, num_key_value_heads=1)
    student, plan = shrink_model(teacher, spec)
    d = 16  # teacher head_dim, kept
    assert plan.layers == [3, 1] and len(plan.hidden) == 40 and student.config.head_dim == d
    h = torch.tensor(plan.hidden)
    torch.testing.assert_close(student.model.embed_tokens.weight, teacher.model.embed_tokens.weight[:, h])
    torch.testing.assert_close(student.lm_head.weight, teacher.lm_head.weight[:, h])
    torch.testing.assert_close(student.model.norm.weight, teacher.model.norm.weight[h])
    for new, old in enumerate(plan.layers):
        s, t = student.model.layers[new], teacher.model.layers[old]
        i = torch.tensor(plan.intermediate[new])
        torch.testing.assert_close(s.mlp.gate_proj.weight, t.mlp.gate_proj.weight[i][:, h])
        torch.testing.assert_close(s.mlp.down_proj.weight, t.mlp.down_proj.weight[h][:, i])
        torch.testing.assert_close(s.input_layernorm.weight, t.input_layernorm.weight[h])
        q_rows = torch.cat([torch.arange(head * d, (head + 1) * d) for head in plan.heads[new]])
        kv_rows = torch.cat([torch.arange(head * d, (head + 1) * d) for head in plan.kv_heads[new]])
        torch.testing.assert_close(s.self_attn.q_proj.weight, t.self_attn.q_proj.weight[q_rows][:, h])
        torch.testing.assert_close(s.self_attn.k_proj.weight, t.self_attn.k_proj.weight[kv_rows][:, h])
        torch.testing.assert_close(s.self_attn.o_proj.weight, t.self_attn.o_proj.weight[h][:, q_rows])
        # grouped-query attention stays consistent: each kept query head belongs to a kept kv head's group
        assert all(head // 2 in plan.kv_heads[new] for head in plan.heads[new])
    assert count_parameters(student) < count_parameters(teacher) / 3


def test_magnitude_strategy_keeps_the_largest_neurons_and_channels():
    teacher = make_llama(97, hidden=32, layers=1)
    with torch.no_grad():
        teacher.model.layers[0].mlp.gate_proj.weight[[5, 50]] *= 100  # two obviously important neurons
        teacher.model.embed_tokens.weight[:, [3, 30]] *= 100  # two obviously important residual channels
    _, plan = shrink_model(teacher, ShrinkSpec(intermediate_size=2, hidden_size=2))
    assert plan.intermediate[0] == [5, 50] and plan.hidden == [3, 30]
    _, first = shrink_model(teacher, ShrinkSpec(intermediate_size=2, hidden_size=2, width_strategy="first"))
    assert first.intermediate[0] == [0, 1] and first.hidden == [0, 1]


def test_qwen2_biases_are_sliced_with_their_heads():
    torch.manual_seed(0)
    teacher = Qwen2ForCausalLM(Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                           num_attention_heads=4, num_key_value_heads=2))
    student, plan = shrink_model(teacher, ShrinkSpec(num_attention_heads=2, num_key_value_heads=1))
    rows = torch.cat([torch.arange(h * 16, (h + 1) * 16) for h in plan.heads[0]])
    torch.testing.assert_close(student.model.layers[0].self_attn.q_proj.bias,
                               teacher.model.layers[0].self_attn.q_proj.bias[rows])
    assert student(torch.randint(0, 97, (1, 5))).logits.shape == (1, 5, 97)


def test_shrunk_config_rejects_growing_or_inconsistent_sizes():
    config = make_llama(97, hidden=32, layers=2).config
    with pytest.raises(ValueError, match="hidden_size=64 exceeds"):
        shrunk_config(config, ShrinkSpec(hidden_size=64))
    with pytest.raises(ValueError, match="multiple of kv heads"):
        shrunk_config(config, ShrinkSpec(num_attention_heads=3, num_key_value_heads=2))
    with pytest.raises(ValueError, match="num_layers=3 exceeds"):
        shrunk_config(config, ShrinkSpec(num_layers=3))
