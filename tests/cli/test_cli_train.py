"""`hf-distill train`: a whole run from command-line flags and from `--config FILE.yaml`, on local checkpoints."""

from __future__ import annotations

import json

import yaml
from helpers import saved_student_and_teacher
from transformers import AutoModelForCausalLM

from hf_distill.cli.main import main


def test_train_from_flags_writes_a_reloadable_student(tmp_path):
    student, teacher = saved_student_and_teacher(tmp_path)
    code = main(["train", "--model_name_or_path", str(student), "--teacher_model_name_or_path", str(teacher),
                 "--dataset_name", "arithmetic", "--num_examples", "16", "--output_dir", str(tmp_path / "out"),
                 "--max_steps", "2", "--per_device_train_batch_size", "4", "--report_to", "none",
                 "--kd_loss", "jsd", "--beta", "0.3", "--gradient_checkpointing", "false"])
    assert code == 0
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "out").config.hidden_size == 16


def test_train_from_a_config_file_whose_values_flags_override(tmp_path):
    student, teacher = saved_student_and_teacher(tmp_path)
    recipe = {"model_name_or_path": str(student), "teacher_model_name_or_path": str(teacher),
              "dataset_name": "arithmetic", "num_examples": 8, "output_dir": str(tmp_path / "yaml-out"),
              "max_steps": 3, "report_to": "none", "per_device_train_batch_size": 4, "temperature": 2.0,
              "gradient_checkpointing": False}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", "--config", str(path), "--max_steps", "1"]) == 0
    assert (tmp_path / "yaml-out" / "model.safetensors").exists()
    assert json.loads((tmp_path / "yaml-out" / "trainer_state.json").read_text())["global_step"] == 1
