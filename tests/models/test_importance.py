"""Importance pruning: layers, neurons and heads scored on calibration batches (hf_distill.models.importance), and
shrink's `importance`/`activation` strategies keeping the ones that matter."""

from __future__ import annotations

import pytest
import torch
from helpers import make_llama, skipping_layers

from hf_distill.models.importance import (
    activation_importance,
    block_influence,
    calibration_batches,
    layer_importance,
    skip_kl,
)
from hf_distill.models.shrink import ShrinkSpec, plan_shrink, shrink_model

VOCAB = 97


def _batches(n: int = 6, length: int = 12) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    rows = [{"input_ids": torch.randint(3, VOCAB, (length - i % 3,), generator=generator).tolist()} for i in range(n)]
    return calibration_batches(rows, batch_size=4)


def _teacher(layers: int = 4):
    return make_llama(VOCAB, hidden=64, layers=layers, seed=3).eval()


def _make_identity(model, index: int) -> None:
    """Both residual branches of layer ``index`` write zeros: its output is exactly its input."""
    layer = model.model.layers[index]
    with torch.no_grad():
        layer.self_attn.o_proj.weight.zero_()
        layer.mlp.down_proj.weight.zero_()


def test_calibration_batches_pad_on_the_right_and_mask_the_padding():
    batches = calibration_batches([{"input_ids": [5, 6, 7]}, {"input_ids": [8]}], batch_size=2, pad_token_id=0)
    assert batches[0]["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batches[0]["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


@pytest.mark.parametrize("metric", ["block_influence", "skip_kl"])
def test_a_layer_made_an_exact_identity_scores_zero_and_is_the_first_dropped(metric):
    teacher = _teacher()
    _make_identity(teacher, 2)
    batches = _batches()
    scores = layer_importance(teacher, batches, metric)
    assert scores[2] == pytest.approx(0.0, abs=1e-6)
    assert (scores[[0, 1, 3]] > 1e-4).all()  # the other layers do change the stream
    student, plan = shrink_model(teacher, ShrinkSpec(num_layers=3, layer_strategy="importance",
                                                     layer_importance=metric), calibration=batches)
    assert plan.layers == [0, 1, 3]
    assert plan.scores["layer_importance"] == metric and len(plan.scores["layer_scores"]) == 4
    with torch.no_grad(), skipping_layers(teacher.model.layers, plan.layers):  # dropping it changes nothing
        expected = teacher(batches[0]["input_ids"]).logits
        torch.testing.assert_close(student.eval()(batches[0]["input_ids"]).logits, expected)


def test_block_influence_and_skip_kl_rank_a_nearly_idle_layer_below_the_others():
    teacher = _teacher()
    with torch.no_grad():  # layer 1 writes 1% of what it did: close to, but not exactly, an identity
        teacher.model.layers[1].self_attn.o_proj.weight.mul_(0.01)
        teacher.model.layers[1].mlp.down_proj.weight.mul_(0.01)
    batches = _batches()
    for scores in (block_influence(teacher, batches), skip_kl(teacher, batches)):
        assert int(scores.argmin()) == 1 and scores[1] > 0


def test_padding_does_not_count_towards_the_scores():
    teacher = _teacher(layers=2)
    ids = torch.randint(3, VOCAB, (1, 8), generator=torch.Generator().manual_seed(2))
    alone = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)}]
    padded_ids = torch.cat([ids, torch.full((1, 5), 9)], 1)  # right padding: the real tokens see the same context
    padded = [{"input_ids": padded_ids, "attention_mask": torch.cat([torch.ones_like(ids), torch.zeros(1, 5,
                                                                                                  dtype=torch.long)],
                                                                    1)}]
    torch.testing.assert_close(block_influence(teacher, padded), block_influence(teacher, alone))
    torch.testing.assert_close(activation_importance(teacher, padded).hidden,
                               activation_importance(teacher, alone).hidden)


def _dead_neuron_and_head(model, neuron: int, head: int) -> None:
    """In every layer: MLP neuron ``neuron`` reads only residual channel 0, which the MLP's norm zeroes, so it never
    fires, yet its weights are the largest (weight magnitude would keep it first); query head ``head``'s value rows
    (its kv head's) are zero in layer 0 while its output columns are large."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.post_attention_layernorm.weight[0] = 0.0
            layer.mlp.gate_proj.weight[neuron] = 0.0
            layer.mlp.gate_proj.weight[neuron, 0] = 50.0
            layer.mlp.up_proj.weight[neuron] *= 20
            layer.mlp.down_proj.weight[:, neuron] *= 20
        attention = model.model.layers[0].self_attn
        d = model.config.head_dim
        group = model.config.num_attention_heads // model.config.num_key_value_heads
        attention.v_proj.weight[(head // group) * d:(head // group + 1) * d] = 0.0
        attention.o_proj.weight[:, head * d:(head + 1) * d] *= 20


def test_a_dead_neuron_is_pruned_first_by_activation_and_kept_by_weight_magnitude():
    teacher = _teacher(layers=2)
    _dead_neuron_and_head(teacher, neuron=5, head=0)
    batches = _batches()
    width = activation_importance(teacher, batches)
    assert width.neurons[0][5] == 0 and (width.neurons[0][torch.arange(128) != 5] > 0).all()
    inter = teacher.config.intermediate_size - 1
    by_activation = plan_shrink(teacher, ShrinkSpec(intermediate_size=inter, width_strategy="activation"), batches)
    by_magnitude = plan_shrink(teacher, ShrinkSpec(intermediate_size=inter, width_strategy="magnitude"))
    assert all(5 not in kept for kept in by_activation.intermediate.values())
    assert all(5 in kept for kept in by_magnitude.intermediate.values())
    assert by_activation.scores["activation_kept"]["neurons"] == pytest.approx(1.0)  # the dead one carried nothing


def test_a_silent_head_is_pruned_first_with_its_kv_group_and_a_narrower_residual_keeps_the_loudest_channels():
    teacher = _teacher(layers=2)
    _dead_neuron_and_head(teacher, neuron=5, head=0)
    batches = _batches()
    width = activation_importance(teacher, batches)
    assert width.heads[0][:2].tolist() == [0.0, 0.0]  # heads 0 and 1 share the zeroed kv head
    assert (width.heads[0][2:] > 0).all()
    plan = plan_shrink(teacher, ShrinkSpec(num_attention_heads=2, num_key_value_heads=1, hidden_size=48,
                                           width_strategy="activation"), batches)
    assert plan.heads[0] == [2, 3] and plan.kv_heads[0] == [1]
    assert plan.hidden == sorted(width.hidden.topk(48).indices.tolist())


def test_calibrated_strategies_need_calibration_data_and_name_the_fix():
    teacher = _teacher(layers=2)
    with pytest.raises(ValueError, match="calibration"):
        shrink_model(teacher, ShrinkSpec(num_layers=1, layer_strategy="importance"))
    with pytest.raises(ValueError, match="layer_importance"):
        ShrinkSpec(layer_strategy="importance", layer_importance="cosine")


def test_the_spec_records_calibration_keys_only_for_the_calibrated_strategies():
    assert ShrinkSpec(num_layers=2).to_dict() == {"num_layers": 2, "layer_strategy": "uniform",
                                                  "width_strategy": "magnitude"}
    spec = ShrinkSpec(num_layers=2, layer_strategy="importance", calibration_examples=64)
    assert spec.to_dict()["layer_importance"] == "block_influence" and spec.to_dict()["calibration_examples"] == 64


def test_a_cascade_stage_prunes_by_importance_on_its_training_set_and_records_the_scores(tmp_path):
    from helpers import make_tokenizer, prompt_completion

    from hf_distill.cascade import parse_recipe
    from hf_distill.cascade.stage import build_student

    tokenizer = make_tokenizer()
    teacher = make_llama(len(tokenizer), hidden=64, layers=4, seed=3)
    _make_identity(teacher, 1)
    teacher.save_pretrained(tmp_path / "teacher")
    shrink = {"num_layers": 3, "layer_strategy": "importance", "width_strategy": "activation",
              "intermediate_size": 96, "calibration_examples": 16}
    recipe = parse_recipe({"name": "t", "teacher": {"model": str(tmp_path / "teacher")}, "stages": [
        {"name": "s", "method": "logit", "student": {"shrink": shrink}, "training": {"max_steps": 1}}]})
    student, plan = build_student(recipe.stages[0], str(tmp_path / "teacher"), tokenizer, 0, prompt_completion())
    assert plan.layers == [0, 2, 3] and plan.scores["layer_scores"][1] == pytest.approx(0.0, abs=1e-6)
    assert set(plan.scores["activation_kept"]) == {"hidden", "neurons", "heads"}
    assert student.config.intermediate_size == 96
