"""The shared helpers of hf_distill.utils: atomic writes, fingerprints, the shard manifest, device and dtype probes."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from datasets import Dataset
from helpers import make_llama

from hf_distill.cache.format import keys_fingerprint
from hf_distill.cache.writer import config_hash
from hf_distill.teacher.live import resolve_dtype as teacher_dtype
from hf_distill.teacher.vocab import tokenizer_fingerprint
from hf_distill.traces.collect import _dataset_fingerprint
from hf_distill.utils.device import has_bf16_accelerator, resolve_dtype
from hf_distill.utils.fingerprint import fingerprint, fingerprint_bytes
from hf_distill.utils.io import (
    atomic_dir,
    atomic_path,
    remove_partial,
    write_json_atomic,
)
from hf_distill.utils.manifest import ShardManifest, first_difference

# ------------------------------------------------------------------------------------------------------------------
# Fingerprints: persisted in cache and trace manifests and cascade stage hashes, so they must never change
# ------------------------------------------------------------------------------------------------------------------


def test_fingerprint_golden_values_include_non_ascii_text():
    value = {"stage": {"name": "schüler", "method": ["kd"]}, "seed": 0, "path": "/tmp/x", "root": None}
    assert fingerprint(value) == "f8d3727ed8922672"  # sha256(json.dumps(sort_keys=True, default=str))[:16]
    vocab = sorted({"<pad>": 0, "a": 1, "ü": 2, "Ġthe": 3}.items())
    assert fingerprint(vocab, ensure_ascii=False) == "14e6946127130be9"  # the tokenizer fingerprint's UTF-8 form
    assert fingerprint(vocab) != fingerprint(vocab, ensure_ascii=False)
    assert len(fingerprint(value, length=12)) == 12 and fingerprint(value).startswith(fingerprint(value, length=12))


def test_fingerprint_of_parts_equals_the_fingerprint_of_their_concatenation():
    parts = [b"abc", b"", "ü".encode(), bytes(range(256))]
    assert fingerprint_bytes(iter(parts)) == fingerprint_bytes(b"".join(parts)) == \
        hashlib.sha256(b"".join(parts)).hexdigest()[:16]


def test_persisted_fingerprints_equal_the_formulas_they_were_written_with(tokenizer):
    """The naive versions, as the code computed them before it used hf_distill.utils.fingerprint."""
    vocab = sorted(tokenizer.get_vocab().items())
    assert tokenizer_fingerprint(tokenizer) == \
        hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]
    model = make_llama(len(tokenizer), 16, 1)
    model.config.id2label = {0: "négatif", 1: "positif"}  # non-ASCII text in a config
    config = {k: v for k, v in model.config.to_dict().items()
              if k not in ("_name_or_path", "transformers_version", "use_cache") and not k.endswith("token_id")}
    assert config_hash(model) == hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
    keys = np.array([5, -3, 5, 2**62], dtype=np.int64)
    assert keys_fingerprint(keys) == hashlib.sha256(np.unique(keys).astype("<i8").tobytes()).hexdigest()[:16]
    problems = Dataset.from_dict({"question": ["Ann a 3 pommes ?", "Wie viele Äpfel?"], "answer": ["#### 3", "#### 4"]})
    digest = hashlib.sha256()
    for question, answer in zip(problems["question"], problems["answer"]):
        digest.update(json.dumps([question, answer]).encode())
    assert _dataset_fingerprint(problems) == digest.hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------------------
# Atomic writes
# ------------------------------------------------------------------------------------------------------------------


def test_atomic_path_replaces_the_file_on_success_and_keeps_the_old_one_on_error(tmp_path):
    target = tmp_path / "data.json"
    write_json_atomic(target, {"version": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half a fi")
        raise RuntimeError("killed mid-write")
    assert json.loads(target.read_text()) == {"version": 1}
    with atomic_path(target) as tmp:
        tmp.write_text('{"version": 2}')
        assert tmp.parent == target.parent and tmp.name.startswith(".")  # same file system, hidden
    assert json.loads(target.read_text()) == {"version": 2}
    assert sorted(os.listdir(tmp_path)) == ["data.json"]  # no temporary file left either way


def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"
    with atomic_dir(target) as staging:
        (staging / "config.json").write_text("{}")
    with pytest.raises(RuntimeError), atomic_dir(target) as staging:
        (staging / "weights").write_text("partial")
        raise RuntimeError("killed mid-save")
    assert sorted(os.listdir(target)) == ["config.json"] and oct(target.stat().st_mode & 0o777) == "0o755"
    with atomic_dir(target) as staging:
        (staging / "weights").write_text("new")
    assert sorted(os.listdir(target)) == ["weights"]
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_remove_partial_deletes_what_a_killed_write_left_and_nothing_else(tmp_path):
    (tmp_path / "shard-00000.arrow").write_text("finished")
    (tmp_path / "notes.tmp").write_text("the user's")
    (tmp_path / f".shard-00001.arrow.tmp{os.getpid()}").write_text("torn")  # what atomic_path leaves on kill -9
    (tmp_path / ".dataset.tmpab12").mkdir()  # what atomic_dir leaves
    (tmp_path / ".dataset.tmpab12" / "data.arrow").write_text("torn")
    remove_partial(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["notes.tmp", "shard-00000.arrow"]


# ------------------------------------------------------------------------------------------------------------------
# The shard manifest
# ------------------------------------------------------------------------------------------------------------------


class Mismatch(ValueError):
    pass


def _open(path, fields, **kwargs):
    return ShardManifest.open(path, fields, mismatch=lambda field, old, new: Mismatch(field, old, new), **kwargs)


def test_first_difference_names_the_dotted_field():
    old = {"format": 1, "teacher": {"name": "a", "dtype": "float32"}, "extra": "ignored"}
    assert first_difference(old, {"format": 1, "teacher": {"name": "a", "dtype": "bfloat16"}}) == \
        ("teacher.dtype", "float32", "bfloat16")
    assert first_difference(old, {"format": 1, "top_k": 4}) == ("top_k", None, 4)
    assert first_difference(old, {"teacher": {"name": "a"}}) is None


def test_manifest_records_shards_one_by_one_and_resumes_only_with_the_same_fields(tmp_path):
    path, fields = tmp_path / "manifest.json", {"format": "x", "settings": {"k": 4}}
    manifest = _open(path, fields, new={"complete": False})
    assert json.loads(path.read_text()) == {**fields, "complete": False, "shards": []}  # written at once
    manifest.record({"index": 1, "file": "b"})
    manifest.record({"index": 0, "file": "a"})
    manifest.record({"index": 1, "file": "b2"})  # a redone shard replaces its entry
    assert json.loads(path.read_text())["shards"] == [{"index": 0, "file": "a"}, {"index": 1, "file": "b2"}]

    resumed = _open(path, fields, new={"complete": False})
    assert resumed.finished() == {0: {"index": 0, "file": "a"}, 1: {"index": 1, "file": "b2"}}
    assert list(resumed.finished(lambda entry: entry["file"] != "a")) == [1]  # False: redo that shard
    with pytest.raises(Mismatch, match="settings.k"):
        _open(path, {"format": "x", "settings": {"k": 8}})
    resumed.save(complete=True)
    assert json.loads(path.read_text())["complete"] is True


def test_manifest_open_removes_partial_writes_beside_it_and_in_shard_folders(tmp_path):
    (tmp_path / "shards").mkdir()
    (tmp_path / ".manifest.json.tmp99").write_text("torn")
    (tmp_path / "shards" / ".shard-00000.parquet.tmp99").write_text("torn")
    _open(tmp_path / "manifest.json", {"format": "x"}, shard_folders=[tmp_path / "shards"])
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "shards"] and not os.listdir(tmp_path / "shards")


# ------------------------------------------------------------------------------------------------------------------
# Device and dtype
# ------------------------------------------------------------------------------------------------------------------


def test_resolve_dtype_maps_names_and_names_the_setting_in_its_error():
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16
    assert resolve_dtype(None) is None and resolve_dtype("auto") == "auto"
    with pytest.raises(ValueError, match="Unknown dtype 'fp8'. Use one of: auto, float32, bfloat16, float16"):
        resolve_dtype("fp8")
    with pytest.raises(ValueError, match="Unknown teacher dtype 'half'"):
        teacher_dtype("half")


def test_bf16_probe_matches_training_arguments_and_starts_no_distributed_state():
    from accelerate import PartialState
    from transformers import TrainingArguments

    before = dict(PartialState._shared_state)
    available = has_bf16_accelerator()
    assert PartialState._shared_state == before  # a launcher's process group is left to TrainingArguments
    if available:
        TrainingArguments(output_dir="unused", bf16=True, report_to=[])  # accepted: no ValueError
    else:
        with pytest.raises(ValueError, match="bf16"):
            TrainingArguments(output_dir="unused", bf16=True, report_to=[])
