"""Shrinking a teacher: which layers/channels/heads are kept, and that every student weight is the intended slice."""

from __future__ import annotations

import pytest
import torch
import yaml
from helpers import make_llama, skipping_layers
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from hf_distill.cascade.plan import parameter_count
from hf_distill.cli.cascade import main as cascade_main
from hf_distill.models.build import count_parameters
from hf_distill.models.shrink import (
    ShrinkSpec,
    check_shrinkable,
    select_layers,
    shrink_model,
    shrunk_config,
)

# Tiny decoders of each family transformers ships (hidden 64, 4 layers, 4 heads of 16, 2 kv heads), with the
# per-layer variety that a shrink must carry over: sliding/full layer types (window 4 < the 9 test tokens), NoPE layers.
FAMILIES = {
    "llama": {}, "mistral": {}, "qwen3": {}, "gemma": {}, "phi3": {}, "phi": {}, "olmo2": {}, "starcoder2": {},
    "glm4": {}, "granite": {}, "cohere": {"use_qk_norm": True},  # q_norm/k_norm of shape (heads, head_dim)
    "qwen2": {"use_sliding_window": True, "sliding_window": 4, "max_window_layers": 2},
    "gemma2": {"sliding_window": 4}, "olmo3": {"sliding_window": 4},
    "gemma3_text": {"sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"] * 2},
    "smollm3": {"no_rope_layer_interval": 2},
}
IDS = torch.randint(3, 97, (2, 9), generator=torch.Generator().manual_seed(0))


def family_model(model_type: str) -> nn.Module:
    """A tiny random model of the family, with every weight (norms too) perturbed so that a wrong slice shows."""
    config = AutoConfig.for_model(model_type, vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
                                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, pad_token_id=0,
                                  bos_token_id=1, eos_token_id=2, **FAMILIES[model_type])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


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


@pytest.mark.parametrize("model_type", FAMILIES)
def test_each_family_shrinks_in_depth_and_width_then_saves_reloads_and_runs(model_type, tmp_path):
    teacher = family_model(model_type)
    spec = ShrinkSpec(layer_strategy="explicit", layers=[3, 0, 2], hidden_size=40, intermediate_size=48,
                      num_attention_heads=2, num_key_value_heads=1)
    planned = check_shrinkable(teacher.config, spec)  # what the cascade's plan (and --dry-run) checks
    student, plan = shrink_model(teacher, spec)
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    logits = reloaded(IDS).logits
    torch.testing.assert_close(logits, student.eval()(IDS).logits, rtol=0, atol=0)
    assert logits.shape == (2, 9, 97) and torch.isfinite(logits).all()
    assert (reloaded.config.num_hidden_layers, reloaded.config.hidden_size, reloaded.config.head_dim) == (3, 40, 16)
    assert count_parameters(reloaded) == parameter_count(planned) < count_parameters(teacher) / 2
    torch.testing.assert_close(reloaded.get_input_embeddings().weight,
                               teacher.get_input_embeddings().weight[:, plan.hidden])


def _output_projections(layer: nn.Module) -> tuple[nn.Linear, nn.Linear]:
    """The attention output and MLP output projections of a decoder layer, whatever the family calls them."""
    attn = next(getattr(layer.self_attn, n) for n in ("o_proj", "dense") if hasattr(layer.self_attn, n))
    mlp = next(getattr(layer.mlp, n) for n in ("down_proj", "fc2", "c_proj") if hasattr(layer.mlp, n))
    return attn, mlp


@pytest.mark.parametrize("model_type", FAMILIES)
def test_dropping_heads_and_neurons_equals_zeroing_them_in_the_teacher(model_type):
    """Exact: a head or an MLP neuron reaches the residual stream only through its columns of the output projection.
    This checks every fused or per-head slice (Phi3's qkv_proj and gate_up_proj, q_norm, biases) against the teacher."""
    teacher = family_model(model_type)
    # OLMo2/3 normalise q and k over all heads at once, so dropping heads there changes the kept ones: MLP only
    heads = {} if model_type in ("olmo2", "olmo3") else {"num_attention_heads": 2, "num_key_value_heads": 1}
    student, plan = shrink_model(teacher, ShrinkSpec(intermediate_size=40, **heads))
    assert all(len(kept) == 40 for kept in plan.intermediate.values())
    with torch.no_grad():
        for i, layer in enumerate(teacher.model.layers):
            attn_out, mlp_out = _output_projections(layer)
            mlp_out.weight[:, [n for n in range(96) if n not in plan.intermediate[i]]] = 0
            for head in set(range(4)) - set(plan.heads[i]):
                attn_out.weight[:, head * 16:(head + 1) * 16] = 0
    assert heads == {} or all(len(kept) == 2 for kept in plan.heads.values())
    torch.testing.assert_close(student.eval()(IDS).logits, teacher(IDS).logits, rtol=1e-4, atol=2e-5)


@pytest.mark.parametrize("model_type", FAMILIES)
def test_dropping_layers_equals_the_teacher_skipping_them(model_type):
    teacher = family_model(model_type)
    student, plan = shrink_model(teacher, ShrinkSpec(num_layers=3, layer_strategy="last"))  # each FAMILIES list
    with skipping_layers(teacher.model.layers, plan.layers):  # differs on layers 1-3 and 0-2
        expected = teacher(IDS).logits
    torch.testing.assert_close(student.eval()(IDS).logits, expected, rtol=0, atol=0)


@pytest.mark.parametrize(("model_type", "name"), [("qwen2", "layer_types"), ("gemma2", "layer_types"),
                                                  ("gemma3_text", "layer_types"), ("olmo3", "layer_types"),
                                                  ("smollm3", "no_rope_layers")])
def test_per_layer_config_lists_follow_the_kept_layers(model_type, name):
    config = family_model(model_type).config
    teacher_list = getattr(config, name)
    last, picked = teacher_list[1:], [teacher_list[3], teacher_list[0]]
    assert last != teacher_list[:3] and picked != teacher_list[:2]  # so a list cut from the front would be wrong
    assert getattr(shrunk_config(config, ShrinkSpec(num_layers=3, layer_strategy="last")), name) == last
    assert getattr(shrunk_config(config, ShrinkSpec(layer_strategy="explicit", layers=[3, 0])), name) == picked


def test_layer_index_lists_are_renumbered_and_unknown_per_layer_lists_refused():
    moe = AutoConfig.for_model("qwen3_moe", num_hidden_layers=6, mlp_only_layers=[1, 4, 5])
    assert shrunk_config(moe, ShrinkSpec(layer_strategy="explicit", layers=[0, 4, 5])).mlp_only_layers == [1, 2]
    config = make_llama(97, layers=4).config
    config.attention_layer_scales = [1.0, 2.0, 3.0, 4.0]  # a per-layer list shrink does not know
    with pytest.raises(ValueError, match=r"attention_layer_scales=\[1\.0, 2\.0, 3\.0, 4\.0\]"):
        shrunk_config(config, ShrinkSpec(num_layers=2))
    assert shrunk_config(config, ShrinkSpec(hidden_size=16)).attention_layer_scales == [1.0, 2.0, 3.0, 4.0]


def test_qk_norms_are_cut_per_head_dim_or_per_row_as_the_family_defines_them():
    spec = ShrinkSpec(num_attention_heads=2, num_key_value_heads=1)
    qwen3 = family_model("qwen3")  # q_norm/k_norm over one head's 16 channels, shared by all heads: kept whole
    student, _ = shrink_model(qwen3, spec)
    torch.testing.assert_close(student.model.layers[1].self_attn.q_norm.weight,
                               qwen3.model.layers[1].self_attn.q_norm.weight)
    olmo2 = family_model("olmo2")  # over the whole projection (heads x 16): the kept heads' rows
    student, plan = shrink_model(olmo2, spec)
    rows = torch.cat([torch.arange(h * 16, (h + 1) * 16) for h in plan.heads[1]])
    kv_rows = torch.cat([torch.arange(h * 16, (h + 1) * 16) for h in plan.kv_heads[1]])
    t, s = olmo2.model.layers[1].self_attn, student.model.layers[1].self_attn
    assert s.q_norm.weight.shape == (32,) and s.k_norm.weight.shape == (16,)
    torch.testing.assert_close(s.q_norm.weight, t.q_norm.weight[rows])
    torch.testing.assert_close(s.k_norm.weight, t.k_norm.weight[kv_rows])


def test_phi3_fused_projections_keep_the_planned_rows_of_each_part():
    teacher = family_model("phi3")
    student, plan = shrink_model(teacher, ShrinkSpec(intermediate_size=40, num_attention_heads=2,
                                                     num_key_value_heads=1))
    rows = lambda heads, offset: torch.cat([torch.arange(offset + h * 16, offset + (h + 1) * 16) for h in heads])
    t, s = teacher.model.layers[0], student.model.layers[0]
    qkv = torch.cat([rows(plan.heads[0], 0), rows(plan.kv_heads[0], 64), rows(plan.kv_heads[0], 96)])
    torch.testing.assert_close(s.self_attn.qkv_proj.weight, t.self_attn.qkv_proj.weight[qkv])
    neurons = torch.tensor(plan.intermediate[0])
    torch.testing.assert_close(s.mlp.gate_up_proj.weight, t.mlp.gate_up_proj.weight[torch.cat([neurons, 96 + neurons])])


def test_an_architecture_shrink_cannot_slice_is_refused_by_the_dry_run_naming_the_tensor(tmp_path, capsys):
    """GPT-2's Conv1D weights are stored transposed and its attention is one fused c_attn: no rule fits them."""
    recipe = {"name": "t", "teacher": {"model": "some/gpt2", "config": {"model_type": "gpt2", "vocab_size": 100,
                                                                        "n_embd": 64, "n_layer": 4, "n_head": 4}},
              "stages": [{"name": "s1", "method": "logit", "student": {"shrink": {"hidden_size": 32}},
                          "training": {"max_steps": 2}}]}
    path = tmp_path / "gpt2.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert cascade_main([str(path), "--dry-run"]) == 2
    assert "stage s1: shrink does not know how to slice 'transformer.wte.weight'" in capsys.readouterr().err
    # dropping layers only copies every tensor whole, so that GPT-2 shrink plans, and equals skipping the layers
    recipe["stages"][0]["student"]["shrink"] = {"num_layers": 2}
    path.write_text(yaml.safe_dump(recipe))
    assert cascade_main([str(path), "--dry-run"]) == 0
    teacher = AutoModelForCausalLM.from_config(AutoConfig.for_model("gpt2", vocab_size=97, n_embd=32, n_layer=4,
                                                                    n_head=4)).eval()
    student, plan = shrink_model(teacher, ShrinkSpec(num_layers=2))
    with skipping_layers(teacher.transformer.h, plan.layers):
        torch.testing.assert_close(student.eval()(IDS).logits, teacher(IDS).logits, rtol=0, atol=0)
