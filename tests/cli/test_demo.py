"""The embedded demo: the shipped recipe run by the cascade, a seconds-long run of it, reuse, the real sizes' ratio."""

from __future__ import annotations

import json
import re
import shutil
from importlib import resources
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_distill.cascade.plan import build_plan
from hf_distill.cli.main import main
from hf_distill.data.tokenizer import train_tokenizer
from hf_distill.demo import RECIPE, DemoSettings, demo_recipe, run_demo, settings_with
from hf_distill.models.build import build_llama, count_parameters
from hf_distill.models.shrink import shrink_model

ROOT = Path(__file__).resolve().parents[2]


def trained(logged: list[str]) -> list[str]:
    """The stages a run trained, from the cascade's "stage 2/3 student-kd: logit, ..." lines (skips say otherwise)."""
    return [m.group(1) for line in logged if (m := re.match(r"stage \d+/\d+ (\S+): ", line))]


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, DemoSettings.fast(), log=lambda *_: None)


@pytest.fixture
def demo_copy(finished_demo, tmp_path):
    shutil.copytree(finished_demo[0], tmp_path / "demo", symlinks=True)  # teacher/ etc. stay links into stages/
    return tmp_path / "demo"


def test_fast_demo_reports_standard_errors_and_the_paired_difference(finished_demo):
    tmp_path, result = finished_demo
    n = DemoSettings.fast().n_test
    for row in result.rows.values():
        assert row["n"] == n and row["accuracy_se"] == pytest.approx(
            (row["accuracy"] * (1 - row["accuracy"]) / (n - 1)) ** 0.5)
    assert result.comparison["n"] == n
    assert result.comparison["difference"] == pytest.approx(
        result.rows["student-kd"]["accuracy"] - result.rows["student-sft"]["accuracy"])


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
    assert not list(tmp_path.rglob("*.partial"))


def test_rerun_reuses_finished_stages(demo_copy):
    tmp_path = demo_copy
    weights = tmp_path / "teacher" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    logged = []
    second = run_demo(tmp_path, DemoSettings.fast(), log=logged.append)
    assert weights.stat().st_mtime_ns == stamp
    assert trained(logged) == [] and sum("finished earlier with the same inputs, skipped" in line
                                         for line in logged) == 3
    assert "teacher" not in second.seconds  # no training time: the stage was reused


def test_changed_settings_retrain_the_affected_stages(demo_copy):
    tmp_path = demo_copy
    logged = []
    run_demo(tmp_path, settings_with(DemoSettings.fast(), alpha=0.9), log=logged.append)
    assert trained(logged) == ["student-kd"]  # KD knobs only: the baseline branches from the teacher, not from it


def test_default_student_is_at_least_4x_smaller_than_teacher():
    settings = DemoSettings()
    tokenizer = train_tokenizer(["Tom has 12 apples. He has 12+3 = <<12+3=15>>15 apples.\n#### 15"] * 20,
                                vocab_size=settings.vocab_size)
    teacher = build_llama(tokenizer, settings.teacher)
    student, _ = shrink_model(teacher, settings.student)
    assert count_parameters(teacher) >= 4 * count_parameters(student)


def test_cli_demo_fast_prints_the_table(demo_copy, capsys):
    assert main(["demo", "--fast", "--output_dir", str(demo_copy)]) == 0
    out = capsys.readouterr().out
    assert "student, KD" in out and "exact match" in out and "paired s.e." in out


def test_cli_without_command_prints_usage(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().out


def test_shipped_recipe_holds_the_default_settings_and_ships_in_the_wheel():
    shipped = yaml.safe_load(resources.files("hf_distill").joinpath(RECIPE).read_text())
    assert demo_recipe(DemoSettings()).raw == shipped  # the defaults change nothing: no second copy to drift
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(Path(RECIPE).match(pattern) for pattern in package_data["hf_distill"])


def test_default_recipe_is_the_measured_demo():
    recipe = demo_recipe()
    teacher, kd, sft = recipe.stages
    assert (teacher.methods, kd.methods, sft.methods) == (["sft"], ["traces", "logit"], ["sft"])
    assert teacher.training["max_steps"] == 900 and kd.training["max_steps"] == sft.training["max_steps"] == 300
    assert (kd.training["kd_loss"], kd.training["alpha"], kd.training["temperature"]) == ("forward_kl", 0.5, 1.0)
    # the few-labels setting: the teacher's labelled problems, unlabelled questions after them, the student's labels
    assert (teacher.data.train_split, kd.data.train_split, sft.data.train_split) == (
        "train[:4000]", "train[4000:6000]", "train[:300]")
    assert kd.traces["keep_only_verified"] is False  # the unlabelled questions' gold answers are never read
    assert kd.student.shrink == sft.student.shrink == DemoSettings().student
    assert (kd.teacher_stage, sft.teacher_stage, sft.baseline, kd.baseline) == ("teacher", "teacher", True, False)
    plans = build_plan(recipe)
    assert plans[0].student_params >= 4 * plans[1].student_params == 4 * plans[2].student_params


def test_options_land_in_the_recipe():
    settings = settings_with(DemoSettings(), seed=3, teacher_steps=40, student_steps=20, temperature=2.0, alpha=0.5)
    recipe = demo_recipe(settings)
    teacher, kd, sft = recipe.stages
    assert recipe.seed == 3 and teacher.training["max_steps"] == 40 and teacher.training["warmup_steps"] == 2
    assert kd.training["max_steps"] == sft.training["max_steps"] == 20
    assert (kd.training["temperature"], kd.training["alpha"]) == (2.0, 0.5) and "alpha" not in sft.training


def test_baseline_is_a_branch_from_the_teacher(finished_demo):
    tmp_path, _ = finished_demo
    manifest = json.loads((tmp_path / "manifest.json").read_text())["stages"]
    teacher_dir = str(tmp_path / "stages" / "teacher" / "model")
    assert manifest["student-kd"]["teacher"] == manifest["student-sft"]["teacher"] == teacher_dir
    results = json.loads((tmp_path / "results.json").read_text())
    assert [row["name"] for row in results["lineage"]] == ["teacher", "student-kd"]
    assert [(row["name"], row["teacher_stage"], row["baseline"]) for row in results["branches"]] == [
        ("student-sft", "teacher", True)]
    card = (tmp_path / "stages" / "student-sft" / "model" / "README.md").read_text()
    assert "| 0 | teacher (`stages/teacher/model`)" in card and "student-kd" not in card
    assert (tmp_path / "data" / "dataset" / "train").is_dir()  # what benchmarks/ reuse: data, tokenizer, teacher
    assert AutoTokenizer.from_pretrained(tmp_path / "data" / "tokenizer").chat_template
