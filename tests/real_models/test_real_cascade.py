"""A cascade whose root teacher is a real GGUF file: planned, shrunk, distilled, evaluated and carded."""

from __future__ import annotations

import json

import pytest
import yaml
from huggingface_hub import ModelCard

from hf_distill.cascade import parse_recipe
from hf_distill.cascade.plan import build_plan
from hf_distill.cascade.recipe import load_recipe
from hf_distill.cascade.runner import run_cascade

pytestmark = pytest.mark.real_model

TRAINING = {"max_steps": 1, "per_device_train_batch_size": 2, "max_length": 96, "logging_steps": 1,
            "save_steps": 1, "learning_rate": 1e-4}


def _recipe(teacher: str, shrink: dict) -> dict:
    return {
        "name": "real", "seed": 0, "license": "apache-2.0", "teacher": {"model": teacher},
        "data": {"dataset": "arithmetic", "generator": {"n_train": 4, "n_test": 2, "min_steps": 1, "max_steps": 1}},
        "evaluation": {"num_examples": 2, "max_new_tokens": 4},
        "stages": [{"name": "small", "method": "logit", "training": TRAINING, "student": {"shrink": shrink}}],
    }


def test_a_gguf_teacher_roots_a_cascade_that_trains_evaluates_and_cards_its_student(smollm2_gguf, tmp_path):
    logs: list[str] = []
    manifest = run_cascade(parse_recipe(_recipe(str(smollm2_gguf), {"num_layers": 2})), tmp_path / "out",
                           log=logs.append)
    stage = manifest["stages"]["small"]
    assert stage["status"] == "done" and stage["metrics"]["parameters"] < 0.5 * 134_515_008
    assert manifest["root"]["metrics"]["eval_examples"] == 2
    assert any(line.startswith("root teacher") and "evaluating" in line for line in logs)  # progress, not silence
    card = ModelCard.load(tmp_path / "out" / "stages" / "small" / "model" / "README.md")
    assert "SmolLM2-135M-Instruct.Q4_1.gguf" in card.text and str(tmp_path) not in card.content
    assert str(smollm2_gguf.parent) not in card.content  # no absolute path of this machine
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [row["name"] for row in results["lineage"]] == ["root teacher", "small"]


def test_dry_run_plans_a_width_shrink_of_a_gemma3_gguf_teacher(tmp_path):
    from hf_distill.models.real import real_model_gguf

    recipe = _recipe(str(real_model_gguf("gemma-3-270m")), {"num_layers": 6, "hidden_size": 320,
                                                            "intermediate_size": 1024})
    path = tmp_path / "gemma.yaml"
    path.write_text(yaml.safe_dump(recipe))  # as `hf-distill cascade gemma.yaml --dry-run` reads it
    (plan,) = build_plan(load_recipe(path))
    assert plan.teacher_config.model_type == "gemma3_text" and plan.teacher_params > 260e6
    assert plan.student_config.hidden_size == 320 and len(plan.student_config.layer_types) == 6
    assert plan.student_params < 0.5 * plan.teacher_params
