"""The embedded demo: a seconds-long run of the full pipeline, resumability, and the real sizes' ratio."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_distill.cli.main import main
from hf_distill.data.tokenizer import train_tokenizer
from hf_distill.demo import DemoSettings, run_demo, settings_with
from hf_distill.models.build import build_llama, count_parameters
from hf_distill.models.shrink import shrink_model


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, DemoSettings.fast(), log=lambda *_: None)


@pytest.fixture
def demo_copy(finished_demo, tmp_path):
    shutil.copytree(finished_demo[0], tmp_path / "demo")
    return tmp_path / "demo"


def test_fast_demo_writes_reloadable_models_and_results(finished_demo):
    tmp_path, result = finished_demo
    assert set(result.rows) == {"teacher", "student-kd", "student-sft"}
    for row in result.rows.values():
        assert 0.0 <= row["accuracy"] <= 1.0 and row["parameters"] > 0 and row["tokens_per_second"] > 0
    assert result.rows["teacher"]["agreement_with_teacher"] in (0.0, 1.0)  # 1.0 unless it never answers
    for name in ("teacher", "student-kd", "student-sft"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / name)
        assert count_parameters(model) == result.rows[name]["parameters"]
        assert AutoTokenizer.from_pretrained(tmp_path / name).chat_template
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"]["student-kd"]["parameters"] == result.rows["student-kd"]["parameters"]
    assert not list(tmp_path.glob(".*.partial"))


def test_rerun_reuses_finished_stages(demo_copy):
    tmp_path = demo_copy
    weights = tmp_path / "teacher" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    logged = []
    second = run_demo(tmp_path, DemoSettings.fast(), log=logged.append)
    assert weights.stat().st_mtime_ns == stamp
    assert not any("teacher: SFT" in line or "student-kd:" in line for line in logged)
    assert "teacher" not in second.seconds  # no training time: the stage was reused


def test_changed_settings_retrain_the_affected_stages(demo_copy):
    tmp_path = demo_copy
    logged = []
    run_demo(tmp_path, settings_with(DemoSettings.fast(), alpha=0.9), log=logged.append)
    assert any("student-kd" in line for line in logged)
    assert not any("teacher: SFT" in line or "student-sft:" in line for line in logged)  # KD knobs only


def test_default_student_is_at_least_4x_smaller_than_teacher():
    settings = DemoSettings()
    tokenizer = train_tokenizer(["Tom has 12 apples. He has 12+3 = <<12+3=15>>15 apples.\n#### 15"] * 20,
                                vocab_size=settings.vocab_size)
    teacher = build_llama(tokenizer, settings.teacher)
    student, _ = shrink_model(teacher, settings.student)
    assert count_parameters(teacher) >= 4 * count_parameters(student)


def test_cli_demo_fast_prints_the_table(demo_copy, capsys):
    assert main(["demo", "--fast", "--out", str(demo_copy)]) == 0
    out = capsys.readouterr().out
    assert "student, logit KD" in out and "exact match" in out


def test_cli_without_command_prints_usage(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out
