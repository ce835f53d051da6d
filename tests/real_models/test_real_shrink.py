"""Shrinking real checkpoints (SmolLM2-135M-Instruct: Llama layout; Gemma-3-270M: pre/post feedforward norms, q/k norms,
sliding and full layers, head_dim 256 decoupled from hidden 640): the student is the teacher's slices, runs like the
teacher on its kept layers, reloads, and is the size the cascade's dry-run plan announced."""

from __future__ import annotations

import re

import pytest
import torch
from helpers import skipping_layers
from transformers import AutoModelForCausalLM

from hf_distill.cascade import parse_recipe
from hf_distill.cascade.plan import build_plan
from hf_distill.models.build import count_parameters
from hf_distill.models.shrink import ShrinkSpec, shrink_model

pytestmark = pytest.mark.real_model

# half the width, 3 layers; SmolLM2 has 9 heads in 3 kv groups of 3, Gemma-3 4 heads sharing 1 kv head
SPECS = {"smollm2": ShrinkSpec(num_layers=3, hidden_size=288, intermediate_size=768, num_attention_heads=6,
                               num_key_value_heads=2),
         "gemma3": ShrinkSpec(num_layers=3, hidden_size=320, intermediate_size=1024, num_attention_heads=2)}
IDS = torch.randint(10, 40000, (1, 24), generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def real(request):
    path = request.getfixturevalue(f"{request.param}_dir")
    # Gemma-3 slides a 512-token window: 8 here, so that its sliding and full layers differ on 24 tokens
    overrides = {"sliding_window": 8} if request.param == "gemma3" else {}
    return request.param, path, AutoModelForCausalLM.from_pretrained(path, **overrides).eval()


def test_a_layer_drop_of_a_real_model_runs_exactly_like_the_teacher_skipping_the_other_layers(real):
    name, _, teacher = real
    student, plan = shrink_model(teacher, ShrinkSpec(num_layers=4))  # uniform: first, last and two between
    if name == "gemma3":
        assert plan.layers == [0, 6, 11, 17]  # sliding, sliding, full, full: the first 4 layer types are all sliding
        assert student.config.layer_types == ["sliding_attention"] * 2 + ["full_attention"] * 2
    with torch.no_grad(), skipping_layers(teacher.model.layers, plan.layers):
        expected = teacher(IDS).logits  # (1, 24, V)
    with torch.no_grad():
        torch.testing.assert_close(student.eval()(IDS).logits, expected)


def _teacher_slice(teacher: dict, name: str, plan, d: int) -> torch.Tensor:
    """What the student tensor ``name`` must be, written out for the Llama/Gemma-3 layout."""
    h = torch.tensor(plan.hidden)
    layer = re.match(r"model\.layers\.(\d+)\.(.+)", name)
    if layer is None:
        return teacher[name][h] if name == "model.norm.weight" else teacher[name][:, h]  # norm; embed_tokens, lm_head
    new, part = int(layer.group(1)), layer.group(2)
    t = teacher[f"model.layers.{plan.layers[new]}.{part}"]
    i = torch.tensor(plan.intermediate[new])
    q, kv = ([head * d + c for head in heads for c in range(d)] for heads in (plan.heads[new], plan.kv_heads[new]))
    if part.endswith("layernorm.weight"):
        return t[h]
    if part in ("self_attn.q_norm.weight", "self_attn.k_norm.weight"):
        return t  # one head's channels, shared by all heads
    rows = {"self_attn.q_proj.weight": q, "self_attn.k_proj.weight": kv, "self_attn.v_proj.weight": kv,
            "mlp.gate_proj.weight": i, "mlp.up_proj.weight": i}
    if part in rows:
        return t[rows[part]][:, h]
    return t[h][:, {"self_attn.o_proj.weight": q, "mlp.down_proj.weight": i}[part]]


def test_a_narrower_real_student_is_the_teachers_slices_reloads_and_has_the_planned_size(real, tmp_path):
    name, path, teacher = real
    spec = SPECS[name]
    student, plan = shrink_model(teacher, spec)
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    config = reloaded.config
    assert (config.num_hidden_layers, config.hidden_size, config.intermediate_size, config.num_attention_heads,
            config.num_key_value_heads, config.head_dim) == (3, spec.hidden_size, spec.intermediate_size,
                                                             spec.num_attention_heads, spec.num_key_value_heads or 1,
                                                             teacher.config.head_dim)
    source, tensors = teacher.state_dict(), reloaded.state_dict()
    if name == "gemma3":
        assert config.layer_types == [teacher.config.layer_types[i] for i in plan.layers]
        assert {"model.layers.2.pre_feedforward_layernorm.weight", "model.layers.2.self_attn.q_norm.weight"} <= set(tensors)
    for tensor_name, value in tensors.items():
        torch.testing.assert_close(value, _teacher_slice(source, tensor_name, plan, teacher.config.head_dim),
                                   rtol=0, atol=0, msg=tensor_name)
    with torch.no_grad():
        logits = reloaded(IDS).logits
        torch.testing.assert_close(logits, student.eval()(IDS).logits, rtol=0, atol=0)
    assert torch.isfinite(logits).all()
    # the cascade's plan (and --dry-run) of this shrink, from the checkpoint's config alone, agrees with the real run
    recipe = parse_recipe({"name": "real", "teacher": {"model": str(path)}, "stages": [
        {"name": "narrow", "method": "logit", "student": {"shrink": spec.to_dict()}, "training": {"max_steps": 1}}]})
    assert build_plan(recipe)[0].student_params == count_parameters(reloaded) < count_parameters(teacher) / 2


CALIBRATION = ["Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
               "clips did Natalia sell altogether in April and May? Natalia sold 48/2 = 24 clips in May.",
               "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. How much "
               "did she earn? Weng earns 12/60 = $0.2 per minute. Working 50 minutes, she earned 0.2 x 50 = $10."]
HELD_OUT = ("Betty is saving money for a new wallet which costs $100. Betty has only half of the money she needs. Her "
            "parents decided to give her $15 for that purpose, and her grandparents twice as much as her parents.")


def test_importance_pruning_of_smollm2_keeps_far_more_of_the_teacher_than_uniform_pruning(smollm2_dir):
    from transformers import AutoTokenizer

    from hf_distill.models.importance import calibration_batches

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    teacher = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    calibration = calibration_batches([{"input_ids": tokenizer(t)["input_ids"][:48]} for t in CALIBRATION], 2,
                                      tokenizer.pad_token_id)
    ids = tokenizer(HELD_OUT, return_tensors="pt")["input_ids"]  # (1, ~45)

    def held_out_ce(model) -> float:
        with torch.no_grad():
            logits = model.eval()(ids).logits[0, :-1]
        return float(torch.nn.functional.cross_entropy(logits, ids[0, 1:]))

    size = dict(num_layers=20, intermediate_size=1024)  # ~1/2 of the non-embedding parameters
    uniform, _ = shrink_model(teacher, ShrinkSpec(**size))
    ranked, plan = shrink_model(teacher, ShrinkSpec(**size, layer_strategy="importance", width_strategy="activation"),
                                calibration=calibration)
    assert len(plan.layers) == 20 and len(plan.scores["layer_scores"]) == 30 and 0 in plan.layers
    assert 0.5 < plan.scores["activation_kept"]["neurons"] < 1.0
    teacher_ce, uniform_ce, ranked_ce = held_out_ce(teacher), held_out_ce(uniform), held_out_ce(ranked)
    # measured: teacher ~2, uniform ~12, importance ~4 nats/token (benchmarks/prune_recover.py: 12.8 vs 4.3)
    assert ranked_ce < uniform_ce - 3 and ranked_ce < 3 * teacher_ce
