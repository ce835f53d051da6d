"""`hf-distill train` / `cache-logits` on a real teacher (SmolLM2-135M-Instruct): GGUF paths, resuming, evaluation,
subsets of any dataset, cache preparation mismatches, and the lines a user reads."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from helpers import gsm8k_folder, small_student_of
from transformers import AutoTokenizer

from hf_distill.cache.format import CacheMismatchError
from hf_distill.cli.main import main
from hf_distill.models.gguf import load_causal_lm

pytestmark = pytest.mark.real_model

COMMON = ["--per_device_train_batch_size", "2", "--max_length", "96", "--report_to", "none", "--logging_steps", "1",
          "--gradient_checkpointing", "false", "--dataloader_num_workers", "0", "--use_cpu", "true"]


@pytest.fixture(scope="module")
def student_dir(smollm2_dir, tmp_path_factory):
    """A 2-layer student with SmolLM2's architecture and tokenizer, saved like any local checkpoint."""
    path = tmp_path_factory.mktemp("smol-student")
    small_student_of(smollm2_dir).save_pretrained(path)
    AutoTokenizer.from_pretrained(smollm2_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gsm8k(tmp_path_factory):
    return gsm8k_folder(tmp_path_factory.mktemp("gsm8k"))


def _state(folder):
    return json.loads((folder / "trainer_state.json").read_text())


def test_gguf_file_is_a_model_path_with_the_converted_logits(smollm2_gguf, smollm2_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="hf_distill.models.gguf"):
        from_gguf = load_causal_lm(smollm2_gguf)
    assert "dequantised to float32" in caplog.text
    converted = load_causal_lm(smollm2_dir)
    ids = AutoTokenizer.from_pretrained(smollm2_dir)("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(from_gguf(ids).logits, converted(ids).logits)
    assert from_gguf.name_or_path.endswith(".gguf")


def test_train_with_a_gguf_teacher_evaluates_on_the_test_split_and_says_where_it_saved(
    student_dir, smollm2_gguf, gsm8k, tmp_path, capsys
):
    out = tmp_path / "out"
    code = main(["train", "--model_name_or_path", str(student_dir), "--teacher_model_name_or_path",
                 str(smollm2_gguf), "--dataset_name", str(gsm8k), "--dataset_test_split", "test[:4]", "--output_dir",
                 str(out), "--max_steps", "2", "--eval_strategy", "steps", "--eval_steps", "2", *COMMON])
    assert code == 0
    evals = [entry for entry in _state(out)["log_history"] if "eval_loss" in entry]
    assert evals and evals[-1]["step"] == 2 and evals[-1]["eval_kd_loss"] > 0
    assert f"Saved the distilled student to {out}" in capsys.readouterr().out


def test_num_examples_and_split_slices_subset_any_dataset(student_dir, smollm2_dir, gsm8k, tmp_path):
    for extra, steps in ((["--num_examples", "6"], 3), (["--dataset_train_split", "train[:4]"], 2),
                         (["--dataset_train_split", "train[:50%]", "--num_examples", "2"], 1)):
        out = tmp_path / f"out{steps}"
        code = main(["train", "--model_name_or_path", str(student_dir), "--teacher_model_name_or_path",
                     str(smollm2_dir), "--dataset_name", str(gsm8k), "--output_dir", str(out), "--num_train_epochs", "1",
                     "--save_strategy", "steps", "--save_steps", "100", *extra, *COMMON])
        assert code == 0
        assert _state(out)["global_step"] == steps, extra


def test_resume_from_checkpoint_continues_instead_of_retraining(student_dir, smollm2_dir, gsm8k, tmp_path):
    out = tmp_path / "run"
    base = ["train", "--model_name_or_path", str(student_dir), "--teacher_model_name_or_path", str(smollm2_dir),
            "--dataset_name", str(gsm8k), "--output_dir", str(out), "--save_strategy", "steps", "--save_steps", "1",
            *COMMON]
    assert main([*base, "--max_steps", "2", "--seed", "1"]) == 0
    first = [e["loss"] for e in _state(out / "checkpoint-2")["log_history"] if "loss" in e]
    # Another seed reorders the data: a run that ignored the checkpoint would log other losses for steps 1-2.
    assert main([*base, "--max_steps", "3", "--seed", "7", "--resume_from_checkpoint", "true"]) == 0
    history = [e for e in _state(out / "checkpoint-3")["log_history"] if "loss" in e]
    assert [e["step"] for e in history] == [1, 2, 3]
    assert [e["loss"] for e in history[:2]] == first


def test_cache_collected_at_another_max_length_names_the_field_and_both_values(student_dir, smollm2_dir, gsm8k,
                                                                               tmp_path):
    cache = tmp_path / "cache"
    assert main(["cache-logits", "--teacher_model_name_or_path", str(smollm2_dir), "--dataset_name", str(gsm8k),
                 "--num_examples", "4", "--output_dir", str(cache), "--max_length", "128", "--top_k", "8",
                 "--batch_size", "2"]) == 0
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["dataset"]["num_examples"] == 4 and manifest["preparation"]["max_length"] == 128
    with pytest.raises(CacheMismatchError) as error:
        main(["train", "--model_name_or_path", str(student_dir), "--teacher_cache", str(cache), "--dataset_name",
              str(gsm8k), "--num_examples", "4", "--output_dir", str(tmp_path / "out"), "--max_steps", "1",
              "--max_length", "256", "--report_to", "none", "--use_cpu", "true"])
    message = str(error.value)
    assert "preparation.max_length" in message and "max_length=128" in message and "max_length=256" in message
    assert "dataset_fingerprint" not in message
