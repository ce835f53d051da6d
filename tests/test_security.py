"""Security: no pickle loading of untrusted files, no remote code unless asked, Hub tokens never written or logged."""

from __future__ import annotations

import copy
import logging
import re
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from helpers import make_llama, prompt_completion, tiny_config
from transformers import AutoModelForCausalLM, TrainingArguments

import hf_distill.teacher.live as live_module
from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.cache.writer import collect_teacher_cache
from hf_distill.teacher.live import load_teacher

PACKAGE = Path(__file__).resolve().parents[1] / "hf_distill"
SECRET = "hf_NotARealTokenButUnique0123456789"


def test_package_source_never_unpickles_nor_trusts_remote_code():
    # A guard against regressions: these calls execute code from files or repos that may come from anyone.
    # `torch.load(..., weights_only=True)` is torch's restricted unpickler (tensors and plain containers only).
    unsafe = re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)|pickle\.loads?\(|weights_only\s*=\s*False|"
                        r"trust_remote_code\s*=\s*True|use_safetensors\s*=\s*False\)")
    sources = sorted(PACKAGE.rglob("*.py"))
    assert len(sources) > 20  # the scan really covers the package's subfolders
    found = [f"{path.relative_to(PACKAGE)}:{number}" for path in sources
             for number, line in enumerate(path.read_text().splitlines(), 1) if unsafe.search(line)]
    assert found == []


@pytest.fixture
def recorded_loads(monkeypatch):
    """Keyword arguments of every `from_pretrained` call made by the teacher loader."""
    calls, real = [], AutoModelForCausalLM.from_pretrained

    def record(path, **kwargs):
        calls.append(kwargs)
        return real(path, **kwargs)

    monkeypatch.setattr(live_module.AutoModelForCausalLM, "from_pretrained", record)
    return calls


def test_trust_remote_code_is_off_unless_set_and_then_passed_through(tmp_path, tokenizer, teacher, recorded_loads):
    teacher.save_pretrained(tmp_path / "teacher")
    assert DistillationConfig("x", report_to=[]).trust_remote_code is False
    load_teacher(tmp_path / "teacher")
    DistillationTrainer(make_llama(len(tokenizer), 32, 1), tiny_config(tmp_path), train_dataset=prompt_completion(),
                        processing_class=tokenizer, teacher_model=str(tmp_path / "teacher"))
    DistillationTrainer(make_llama(len(tokenizer), 32, 1), tiny_config(tmp_path, trust_remote_code=True),
                        train_dataset=prompt_completion(), processing_class=tokenizer,
                        teacher_model=str(tmp_path / "teacher"))
    assert [call["trust_remote_code"] for call in recorded_loads] == [False, False, True]
    assert all(call["use_safetensors"] is True for call in recorded_loads)


def test_teacher_with_only_pickled_weights_is_refused_with_the_fix(tmp_path, teacher, recorded_loads):
    teacher.save_pretrained(tmp_path / "teacher")
    weights = tmp_path / "teacher" / "model.safetensors"
    torch.save(teacher.state_dict(), tmp_path / "teacher" / "pytorch_model.bin")  # an old-style pickled checkpoint
    weights.unlink()
    with pytest.raises(OSError, match="safetensors only.*use_safetensors': False"):
        load_teacher(tmp_path / "teacher")
    loaded = load_teacher(tmp_path / "teacher", init_kwargs={"use_safetensors": False})  # an explicit opt-in
    torch.testing.assert_close(loaded.lm_head.weight, teacher.lm_head.weight)


def test_saved_students_and_checkpoints_hold_safetensors_weights(tmp_path, tokenizer, student, teacher):
    trainer = DistillationTrainer(student, tiny_config(tmp_path, save_strategy="steps", save_steps=2),
                                  train_dataset=prompt_completion(), processing_class=tokenizer, teacher_model=teacher)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    for directory in (tmp_path / "final", tmp_path / "out" / "checkpoint-2"):
        names = {path.name for path in directory.iterdir()}
        assert "model.safetensors" in names and not {"pytorch_model.bin", "model.pt"} & names
    assert not list((tmp_path / "final").glob("*teacher*"))  # the teacher is never saved with the student


def test_teacher_cache_is_json_and_arrow_only(tmp_path, tokenizer, teacher):
    cache = tmp_path / "cache"
    collect_teacher_cache(teacher, prompt_completion(slice(0, 12)), cache, tokenizer, args=tiny_config(tmp_path),
                          top_k=4, shard_size=4, log=lambda _: None)
    names = sorted(path.name for path in cache.iterdir())
    assert names == ["manifest.json", "shard-00000.arrow", "shard-00001.arrow", "shard-00002.arrow"]
    for shard in cache.glob("*.arrow"):
        assert shard.read_bytes()[:4] == b"\xff\xff\xff\xff"  # Arrow IPC stream continuation marker, not a pickle
        assert pa.ipc.open_stream(pa.memory_map(str(shard))).read_all().num_rows == 4


@pytest.mark.parametrize("how", ["distillation_config", "plain_training_arguments"])
def test_hub_token_is_never_written_to_disk_or_logs(tmp_path, tokenizer, student, teacher, how, caplog, capsys):
    values = dict(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4, report_to=[],
                  logging_steps=1, save_strategy="steps", save_steps=1, hub_token=SECRET, use_cpu=True)
    args = DistillationConfig(**values) if how == "distillation_config" else TrainingArguments(**values)
    caplog.set_level(logging.INFO)
    trainer = DistillationTrainer(student, args, train_dataset=prompt_completion(), processing_class=tokenizer,
                                  teacher_model=teacher)
    logging.getLogger("test").info("args: %r / %s", trainer.args, trainer.args)
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))

    assert trainer.args.hub_token == SECRET  # still usable by push_to_hub in this process
    assert copy.deepcopy(trainer.args).hub_token == SECRET and copy.copy(trainer.args).hub_token == SECRET
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert any(path.name == "training_args.bin" for path in written)  # Trainer's pickle of the arguments
    assert [path for path in written if SECRET.encode() in path.read_bytes()] == []
    saved = torch.load(tmp_path / "final" / "training_args.bin", weights_only=False)  # our own file, in a test
    assert saved.hub_token is None and saved.temperature == trainer.args.temperature
    captured = capsys.readouterr()
    assert SECRET not in caplog.text + captured.out + captured.err
    assert SECRET not in repr(trainer.args) + str(trainer.args) + trainer.args.to_json_string()
