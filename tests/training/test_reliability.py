"""Bad input and faults: each fails early with an error that says what is wrong and how to fix it, or is survived.

docs/reliability.md lists every case with the test that proves it; the cases already covered by the feature tests
(test_trainer.py, test_losses.py, test_cache.py, test_data.py) are not repeated here.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from datasets import Dataset
from helpers import (
    distillation_trainer,
    make_llama,
    prompt_completion,
    subprocess_env,
    tiny_config,
)
from safetensors.torch import load_file
from transformers import Trainer

import hf_distill.cache.writer as collect_module
from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.cache.format import CacheMismatchError, TeacherCacheError
from hf_distill.cache.reader import TeacherCache
from hf_distill.cache.writer import collect_teacher_cache
from hf_distill.losses.targets import NonFiniteTeacherError
from hf_distill.teacher.vocab import VocabularyMismatchError

ROOT = Path(__file__).resolve().parents[2]


def _trainer(tmp_path, tokenizer, student=None, teacher=None, dataset=None, **config):
    dataset = dataset if dataset is not None else prompt_completion(slice(0, 16))
    return distillation_trainer(tmp_path, tokenizer, student, teacher, dataset, **config)


# ------------------------------------------------------------------------------------------------------------------
# Bad input: caught at construction, before any training step
# ------------------------------------------------------------------------------------------------------------------


def test_student_without_a_row_for_every_token_is_rejected_with_the_fix(tmp_path, tokenizer):
    short = make_llama(len(tokenizer) - 4, 32, 1)  # 4 tokens have no logit in the student
    with pytest.raises(VocabularyMismatchError, match=r"resize_token_embeddings\(len\(tokenizer\)\)"):
        _trainer(tmp_path, tokenizer, student=short, teacher=make_llama(len(tokenizer) + 8, 64, 2))


def test_dataset_without_a_known_format_names_its_columns_and_the_fix(tmp_path, tokenizer):
    data = Dataset.from_dict({"question": ["Ann has 2 apples"] * 4, "answer": ["so Ann has 2 apples."] * 4})
    with pytest.raises(ValueError, match=r"\['question', 'answer'\].*prompt` \+ `completion`.*to_prompt_completion"):
        _trainer(tmp_path, tokenizer, dataset=data)


def test_a_custom_text_field_is_accepted(tmp_path, tokenizer):
    data = Dataset.from_dict({"body": prompt_completion(slice(0, 8))["prompt"]})
    trainer = _trainer(tmp_path, tokenizer, dataset=data, dataset_text_field="body")
    assert len(trainer.train_dataset) == 8


@pytest.mark.parametrize("source", ["truncated_completions", "tokenized_all_masked"])
def test_every_label_masked_fails_at_construction_with_the_fix(tmp_path, tokenizer, source):
    if source == "truncated_completions":  # the prompt alone fills max_length: no completion token survives
        data, config = prompt_completion(slice(0, 8)), {"max_length": 4}
    else:
        data, config = Dataset.from_dict({"input_ids": [[5, 6, 7, 8]] * 4, "labels": [[-100] * 4] * 4}), {}
    with pytest.raises(ValueError, match="every label is -100.*max_length"):
        _trainer(tmp_path, tokenizer, dataset=data, **config)


@pytest.mark.parametrize(
    "field, value, message",
    [("alpha", 1.5, r"alpha .* must be in \[0, 1\], got 1.5. Fix"), ("alpha", -0.1, r"got -0.1. Fix"),
     ("temperature", -1.0, r"temperature must be > 0, got -1.0. Fix"), ("beta", 2.0, r"beta .* got 2.0. Fix"),
     ("kd_loss", "kl", r"Unknown distillation loss 'kl'.*forward_kl.*set `kd_loss`")],
)
def test_config_rejects_out_of_range_values_naming_the_fix(field, value, message):
    with pytest.raises(ValueError, match=message):
        DistillationConfig("x", report_to=[], **{field: value})


def test_nan_in_the_teacher_stops_training_at_the_first_step_with_the_fix(tmp_path, tokenizer):
    teacher = make_llama(len(tokenizer), 64, 2, seed=2)
    with torch.no_grad():
        teacher.lm_head.weight[3, 0] = float("inf")  # one poisoned output row: inf/NaN logits everywhere
    trainer = _trainer(tmp_path, tokenizer, teacher=teacher)
    before = trainer.model.lm_head.weight.detach().clone()
    with pytest.raises(NonFiniteTeacherError, match="teacher_dtype"):
        trainer.train()
    torch.testing.assert_close(trainer.model.lm_head.weight, before)  # no step was taken with a poisoned loss


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_cache_collection_rejects_a_non_positive_temperature(tmp_path, tokenizer, teacher, temperature):
    with pytest.raises(ValueError, match=f"temperature must be > 0, got {temperature}. Fix"):
        collect_teacher_cache(teacher, prompt_completion(slice(0, 4)), tmp_path / "cache", tokenizer,
                              args=tiny_config(tmp_path), temperature=temperature)


def test_nan_in_the_teacher_stops_cache_collection_before_any_shard_is_written(tmp_path, tokenizer):
    teacher = make_llama(len(tokenizer), 64, 2, seed=2)
    with torch.no_grad():
        teacher.lm_head.weight[3, 0] = float("nan")
    with pytest.raises(NonFiniteTeacherError, match="teacher_dtype"):
        collect_teacher_cache(teacher, prompt_completion(slice(0, 8)), tmp_path / "cache", tokenizer,
                              args=tiny_config(tmp_path), top_k=4, log=lambda _: None)
    assert not list((tmp_path / "cache").glob("shard-*"))
    with pytest.raises(TeacherCacheError, match="incomplete"):
        TeacherCache(tmp_path / "cache")


def test_cache_for_a_student_with_fewer_rows_names_the_field(tmp_path, tokenizer, teacher):
    cache = tmp_path / "cache"
    data = prompt_completion(slice(0, 8))
    collect_teacher_cache(teacher, data, cache, tokenizer, args=tiny_config(tmp_path), top_k=4, log=lambda _: None)
    with pytest.raises(CacheMismatchError, match="vocab_size.*resize_token_embeddings") as error:
        DistillationTrainer(make_llama(len(tokenizer) - 4, 32, 1), tiny_config(tmp_path), train_dataset=data,
                            processing_class=tokenizer, teacher_cache=str(cache))
    assert error.value.field == "vocab_size"


# ------------------------------------------------------------------------------------------------------------------
# Disk full (simulated ENOSPC)
# ------------------------------------------------------------------------------------------------------------------


class _FullDisk(io.RawIOBase):
    """A file that accepts ``budget`` bytes, then fails like a full disk."""

    def __init__(self, file, budget: int):
        self.file, self.budget = file, budget

    def writable(self):
        return True

    def write(self, data):
        data = bytes(data)
        if len(data) > self.budget:
            self.file.write(data[: self.budget])
            self.file.flush()
            self.budget = 0
            raise OSError(errno.ENOSPC, "No space left on device")
        self.budget -= len(data)
        return self.file.write(data)


def _digests(directory: Path) -> dict[str, str]:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(directory.iterdir())}


def test_disk_full_while_writing_a_cache_shard_keeps_finished_shards_and_a_rerun_completes(tmp_path, tokenizer,
                                                                                         teacher, monkeypatch):
    data = prompt_completion(slice(0, 24))

    def collect(name):
        return collect_teacher_cache(teacher, data, tmp_path / name, tokenizer, args=tiny_config(tmp_path), top_k=6,
                                     shard_size=8, batch_size=4, log=lambda _: None)

    reference = collect("reference")
    real_new_stream = pa.ipc.new_stream

    def new_stream(sink, schema, **options):
        if "shard-00001" in sink.name:  # the second shard runs out of space half-way
            return real_new_stream(_FullDisk(sink, budget=600), schema, **options)
        return real_new_stream(sink, schema, **options)

    monkeypatch.setattr(collect_module.pa.ipc, "new_stream", new_stream)
    with pytest.raises(OSError, match="shard-00001.arrow failed.*No space left.*Fix: free disk space.*re-run") as error:
        collect("cache")
    assert error.value.errno == errno.ENOSPC
    directory = tmp_path / "cache"
    assert sorted(_digests(directory)) == ["manifest.json", "shard-00000.arrow"]  # no partial or temporary file
    with pytest.raises(TeacherCacheError, match="incomplete.*re-run"):  # a reader refuses the unfinished cache
        TeacherCache(directory)
    finished = _digests(directory)["shard-00000.arrow"]

    monkeypatch.setattr(collect_module.pa.ipc, "new_stream", real_new_stream)  # space freed
    assert collect("cache") == reference
    assert _digests(directory) == _digests(tmp_path / "reference")
    assert _digests(directory)["shard-00000.arrow"] == finished


def _checkpointing_trainer(tmp_path, tokenizer, max_steps=4):
    return _trainer(tmp_path, tokenizer, max_steps=max_steps, save_strategy="steps", save_steps=2, learning_rate=1e-2,
                    data_seed=0)


def test_disk_full_while_saving_a_checkpoint_keeps_the_previous_one_and_resume_completes(tmp_path, tokenizer,
                                                                                       monkeypatch):
    reference = _checkpointing_trainer(tmp_path / "reference", tokenizer)
    reference.train()
    real_save = Trainer._save_optimizer_and_scheduler

    def save_then_fill_the_disk(self, output_dir):
        if self.state.global_step == 4:
            Path(output_dir, "optimizer.pt").write_bytes(b"\0" * 100)  # a partial write
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", save_then_fill_the_disk)
    run = tmp_path / "out"
    with pytest.raises(OSError, match="checkpoint-4 failed: the disk is full.*earlier checkpoints are intact.*"
                                      "resume_from_checkpoint=True") as error:
        _checkpointing_trainer(tmp_path, tokenizer).train()
    assert error.value.errno == errno.ENOSPC
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2"]
    kept = _digests(run / "checkpoint-2")
    assert "trainer_state.json" in kept and "model.safetensors" in kept

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", real_save)  # space freed
    resumed = _checkpointing_trainer(tmp_path, tokenizer)
    resumed.train(resume_from_checkpoint=True)
    assert _digests(run / "checkpoint-2") == kept
    assert resumed.state.global_step == 4
    for name, tensor in reference.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], tensor, rtol=1e-6, atol=1e-7)


def test_resume_skips_a_checkpoint_whose_save_never_finished(tmp_path, tokenizer, caplog):
    _checkpointing_trainer(tmp_path, tokenizer).train()  # checkpoint-2 and checkpoint-4
    (tmp_path / "out" / "checkpoint-4" / "trainer_state.json").unlink()  # as if killed while saving step 4
    resumed = _checkpointing_trainer(tmp_path, tokenizer, max_steps=6)
    resumed.train(resume_from_checkpoint=True)
    assert "Skipping" in caplog.text and "checkpoint-4" in caplog.text
    logged_steps = [log["step"] for log in resumed.state.log_history if "loss" in log]
    assert logged_steps == [1, 2, 3, 4, 5, 6]  # steps 1-2 from checkpoint-2's history, then 3-6 trained again


def test_resume_without_any_checkpoint_names_the_fix(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="no complete checkpoint.*Fix: pass the path"):
        _checkpointing_trainer(tmp_path, tokenizer).train(resume_from_checkpoint=True)


# ------------------------------------------------------------------------------------------------------------------
# kill -9 during training
# ------------------------------------------------------------------------------------------------------------------


def _load_script():
    path = ROOT / "tests" / "scripts" / "train_checkpointed.py"
    spec = importlib.util.spec_from_file_location("train_checkpointed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_kill_9_during_training_then_resume_equals_an_uninterrupted_run(tmp_path):
    log = tmp_path / "crash.log"
    with open(log, "w") as stderr:  # a file, not a pipe: a full pipe would block the process
        crashed = subprocess.Popen([sys.executable, str(ROOT / "tests" / "scripts" / "train_checkpointed.py"),
                                    str(tmp_path / "crash"), "crash"], cwd=ROOT, env=subprocess_env(), stdout=stderr,
                                   stderr=stderr)
    script = _load_script()
    script.main(tmp_path / "full", "full")  # the uninterrupted reference, here while the other process starts
    deadline = time.monotonic() + 120
    while not (tmp_path / "crash" / "ready").exists():  # step 4 done, checkpoint-3 on disk
        assert crashed.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.1)
    os.kill(crashed.pid, signal.SIGKILL)
    crashed.wait(timeout=30)
    assert crashed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (tmp_path / "crash" / "run").glob("checkpoint-*")) == ["checkpoint-3"]
    script.main(tmp_path / "crash", "resume")  # a new trainer: nothing survives from the killed process but its files

    # Exact on this CPU: same data order (the sampler and RNG states are restored), same optimizer and scheduler.
    want, got = (load_file(tmp_path / name / "final" / "model.safetensors") for name in ("full", "crash"))
    assert want.keys() == got.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7)
    want_losses, got_losses = (json.loads((tmp_path / name / "losses.json").read_text()) for name in ("full", "crash"))
    assert list(got_losses) == [str(step) for step in range(1, 9)]  # steps 1-3 from the checkpoint, 4-8 retrained
    assert got_losses == pytest.approx(want_losses, rel=1e-6)
