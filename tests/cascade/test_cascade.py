"""A 3-stage toy cascade end to end: SFT root -> shrink + logit KD -> shrink + LoRA KD; reruns, resume, cards."""

from __future__ import annotations

import copy
import json

import pytest
from huggingface_hub import ModelCard
from transformers import TrainerCallback

from hf_distill.cascade import parse_recipe
from hf_distill.cascade.runner import run_cascade

STEPS = {"max_steps": 4, "per_device_train_batch_size": 8, "learning_rate": 3e-3, "logging_steps": 1,
         "save_steps": 2}
RAW = {
    "name": "toy", "seed": 0, "license": "apache-2.0", "tokenizer": {"vocab_size": 300},
    "data": {"dataset": "arithmetic", "generator": {"n_train": 32, "n_test": 4, "min_steps": 1, "max_steps": 1}},
    "evaluation": {"num_examples": 4, "max_new_tokens": 8},
    "stages": [
        {"name": "root", "method": "sft", "training": STEPS,
         "student": {"config": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                                "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 2}}},
        {"name": "s1", "method": "logit", "training": {**STEPS, "alpha": 0.5},
         "student": {"shrink": {"num_layers": 2, "hidden_size": 32, "num_attention_heads": 2,
                                "num_key_value_heads": 1, "intermediate_size": 64}}},
        {"name": "s2", "method": "logit", "training": STEPS, "peft": {"r": 4, "lora_alpha": 8},
         "student": {"shrink": {"num_layers": 1, "layer_strategy": "last", "intermediate_size": 32}}},
    ],
}


class KillAt(TrainerCallback):
    """Stands in for a crash (OOM, pre-emption) at a given step of one stage."""

    def __init__(self, stage: str, step: int):
        self.stage, self.step = stage, step

    def on_step_end(self, args, state, control, **kwargs):
        if f"/{self.stage}/" in args.output_dir and state.global_step == self.step:
            raise RuntimeError("killed")


def run(out, raw=RAW, **kwargs):
    logs: list[str] = []
    manifest = run_cascade(parse_recipe(copy.deepcopy(raw)), out, log=logs.append, **kwargs)
    return manifest, logs


def weights_mtime(out, stage):
    return (out / "stages" / stage / "model" / "model.safetensors").stat().st_mtime_ns


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    out = tmp_path_factory.mktemp("cascade")
    manifest, logs = run(out)
    return out, manifest, logs


def test_three_stages_train_in_a_chain_of_shrinking_students(cascade):
    out, manifest, _ = cascade
    stages = manifest["stages"]
    assert [stages[name]["status"] for name in ("root", "s1", "s2")] == ["done"] * 3
    params = [stages[name]["metrics"]["parameters"] for name in ("root", "s1", "s2")]
    assert params[0] > params[1] > params[2]
    assert stages["s1"]["teacher"] == str(out / "stages" / "root" / "model")  # stage i's teacher: stage i-1
    assert stages["s2"]["teacher"] == str(out / "stages" / "s1" / "model")
    assert stages["s1"]["shrink"]["teacher_layers_kept"] == [0, 3]
    assert stages["s2"]["adapter"]["merged"] is True and stages["s2"]["adapter"]["r"] == 4
    for name in ("root", "s1", "s2"):
        folder = out / "stages" / name / "model"
        assert (folder / "model.safetensors").exists() and not list(folder.glob("*.bin"))
        assert not (out / "stages" / name / "run").exists()  # checkpoints are dropped once a stage is done
        assert 0.0 <= stages[name]["metrics"]["accuracy"] <= 1.0
    assert "agreement_with_teacher" in stages["s1"]["metrics"] and "agreement_with_teacher" not in stages["root"][
        "metrics"]
    assert (out / "cascade.png").stat().st_size > 1000
    lineage = json.loads((out / "results.json").read_text())["lineage"]
    assert [row["name"] for row in lineage] == ["root", "s1", "s2"]


def test_each_student_card_tells_its_lineage(cascade):
    out, manifest, _ = cascade
    card = ModelCard.load(out / "stages" / "s2" / "model" / "README.md")
    # pruned from its teacher, a local folder: named in the text by its place in the cascade, never by this
    # machine's absolute path, and not as hub metadata
    assert card.data.base_model is None and str(out) not in card.content and "stages/s1/model" in card.text
    assert "distillation" in card.data.tags and "lora" in card.data.tags and card.data.license == "apache-2.0"
    text = card.text
    assert text.index("| 0 | root") < text.index("| 1 | s1") < text.index("| 2 | s2")
    assert "teacher layers kept: [1]" in text and "LORA adapter (r=4" in text
    assert "![training curves](training_curves.png)" in text
    assert (out / "stages" / "s2" / "model" / "training_curves.png").exists()
    root_card = ModelCard.load(out / "stages" / "root" / "model" / "README.md")
    assert root_card.data.base_model is None and "base_model: None" not in root_card.content  # trained from scratch


def test_rerun_skips_finished_stages_and_from_stage_redoes_the_rest(cascade):
    out, _, _ = cascade
    before = {name: weights_mtime(out, name) for name in ("root", "s1", "s2")}
    _, logs = run(out)
    assert sum("finished earlier with the same inputs, skipped" in line for line in logs) == 3
    assert {name: weights_mtime(out, name) for name in before} == before
    _, logs = run(out, from_stage="s2")
    assert weights_mtime(out, "s1") == before["s1"] and weights_mtime(out, "s2") != before["s2"]
    assert any(line.startswith("stage 3/3 s2") for line in logs)


def test_a_killed_stage_resumes_from_its_checkpoint_without_redoing_earlier_stages(tmp_path):
    raw = copy.deepcopy(RAW)
    raw["stages"], raw["evaluation"] = raw["stages"][:2], False  # no generation: this test is about resuming
    with pytest.raises(RuntimeError, match="killed"):
        run(tmp_path, raw, callbacks=[KillAt("s1", step=3)])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stages"]["root"]["status"] == "done" and manifest["stages"]["s1"]["status"] == "running"
    assert (tmp_path / "stages" / "s1" / "run" / "checkpoint-2").is_dir()
    root_weights = weights_mtime(tmp_path, "root")

    manifest, logs = run(tmp_path, raw)
    assert "stage root: finished earlier with the same inputs, skipped" in logs
    assert any("s1" in line and "resuming from checkpoint-2" in line for line in logs)
    assert weights_mtime(tmp_path, "root") == root_weights
    assert manifest["stages"]["s1"]["status"] == "done"
    history = json.loads((tmp_path / "stages" / "s1" / "model" / "log_history.json").read_text())
    assert max(row["step"] for row in history) == 4
