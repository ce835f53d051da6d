"""MoE students in a cascade (`student: {moe: {...}}`): upcycled from the stage's dense teacher (or its shrink) into a
Mixtral, distilled like any other student, with active vs total parameters in the manifest and the card."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import make_llama, save_arithmetic_teacher
from huggingface_hub import ModelCard
from transformers import AutoConfig

from hf_distill.cascade import parse_recipe
from hf_distill.cascade.plan import build_plan, parameter_count
from hf_distill.cascade.recipe import RecipeError
from hf_distill.cascade.runner import run_cascade
from hf_distill.cascade.stage import build_student
from hf_distill.models.moe import parameter_counts

STEPS = {"max_steps": 2, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1}
DATA = {"dataset": "arithmetic", "generator": {"n_train": 16, "n_test": 2, "min_steps": 1, "max_steps": 1}}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny dense Llama (2 layers, MLP 64 wide) and a byte-level BPE with a chat template, saved as a teacher."""
    return save_arithmetic_teacher(tmp_path_factory.mktemp("teacher"))


def recipe(teacher, student: dict, **stage) -> dict:
    return {"name": "moe", "teacher": str(teacher), "data": DATA, "evaluation": {"num_examples": 2,
                                                                                "max_new_tokens": 8},
            "stages": [{"name": "sparse", "method": "logit", "student": student, "training": STEPS, **stage}]}


def test_moe_stage_distils_an_upcycled_shrink_and_reports_active_parameters(teacher_dir, tmp_path):
    student = {"shrink": {"num_layers": 1}, "moe": {"num_experts": 4, "top_k": 1, "expert_intermediate_size": 16}}
    logs: list[str] = []
    manifest = run_cascade(parse_recipe(recipe(teacher_dir, student)), tmp_path, log=logs.append)
    entry = manifest["stages"]["sparse"]
    assert entry["status"] == "done" and any("upcycled to 4 experts" in line for line in logs)
    model_dir = tmp_path / "stages" / "sparse" / "model"
    config = AutoConfig.from_pretrained(model_dir)
    assert config.model_type == "mixtral" and config.num_local_experts == 4 and config.num_experts_per_tok == 1
    assert config.num_hidden_layers == 1 and config.intermediate_size == 16  # shrunk first, then sliced experts
    metrics = entry["metrics"]
    idle = 3 * (3 * 32 * 16)  # 3 of 4 experts (gate, up, down: 32 x 16 each) skipped per token, in 1 layer
    assert metrics["parameters"] - metrics["active_parameters"] == idle
    assert metrics["experts"] == {"num_experts": 4, "top_k": 1}
    assert entry["shrink"]["teacher_layers_kept"] == [0]
    card = ModelCard.load(model_dir / "README.md")
    assert {"moe", "mixture-of-experts"} <= set(card.data.tags)
    text = card.text
    assert "as a mixture of experts upcycled from a shrink of that teacher" in text
    assert "4 experts per layer, 1 used per token (Mixtral layout), each expert a 16-neuron slice" in text
    assert "| active parameters per token (mixture of experts) |" in text


def test_moe_alone_upcycles_the_teacher_itself_into_copies_that_compute_it(teacher_dir):
    raw = recipe(teacher_dir, {"moe": {"num_experts": 2, "top_k": 2}})
    stage = parse_recipe(raw).stages[0]
    student, plan = build_student(stage, str(teacher_dir), None, seed=0)
    assert plan is None and type(student).__name__ == "MixtralForCausalLM"
    teacher = make_llama(student.config.vocab_size, hidden=32, layers=2, seed=0)  # the saved teacher's weights
    ids = torch.randint(3, student.config.vocab_size, (2, 7))
    with torch.no_grad():
        torch.testing.assert_close(student.eval()(ids).logits, teacher.eval()(ids).logits, rtol=1e-5, atol=1e-5)
    counts = parameter_counts(student)
    assert counts["active"] == counts["total"]  # top_k == num_experts: every expert runs
    student.train()(ids)
    assert student.last_aux_loss > 0  # the load-balancing loss is attached (DistillationTrainer never sees routers)


def test_dry_run_plan_sizes_the_upcycled_student_and_refuses_what_cannot_be_upcycled():
    """The plan counts the Mixtral the stage will train (every expert and router), not its dense base, and a
    teacher that cannot be upcycled fails the dry run, before any training."""
    config = {"model_type": "llama", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    raw = recipe("some/teacher", {"shrink": {"num_layers": 1}, "moe": {"num_experts": 4}})
    raw["teacher"] = {"model": "some/teacher", "config": config}
    alone = copy.deepcopy(raw)
    alone["stages"][0]["student"] = {"moe": {"num_experts": 4}}
    shrunk, whole = build_plan(parse_recipe(raw))[0], build_plan(parse_recipe(alone))[0]
    assert shrunk.student_config.num_hidden_layers == 1 and whole.student_config.num_hidden_layers == 2
    assert whole.student_config.model_type == "mixtral" and whole.student_config.num_local_experts == 4
    dense = parameter_count(AutoConfig.for_model(**config))
    assert whole.teacher_params == dense
    extra_per_layer = 3 * (3 * 32 * 64) + 32 * 4  # three more copies of the MLP, and the router
    assert whole.student_params == dense + 2 * extra_per_layer
    assert whole.student.startswith("4-expert upcycle of")
    qwen = copy.deepcopy(alone)
    qwen["teacher"]["config"] = {**config, "model_type": "qwen2"}
    with pytest.raises(RecipeError, match=r"student\.moe: Upcycling to a Mixtral student needs a Llama or Mistral"):
        build_plan(parse_recipe(qwen))
