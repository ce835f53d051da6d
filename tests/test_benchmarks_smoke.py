"""The benchmark scripts run end to end at tiny sizes (no timing asserts)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_kd_loss_benchmark_quick(tmp_path):
    markdown = tmp_path / "kd_loss.md"
    proc = _run("kd_loss.py", "--quick", "--markdown", str(markdown))
    for method in ("ce", "seed_dense", "ours_chunked", "trl_chunked"):
        assert method in proc.stdout, f"{method} missing from the table:\n{proc.stdout}"
    assert "memory vs ce" in proc.stdout
    assert "the goal" in proc.stdout  # the final verdict line
    table = markdown.read_text()
    assert "| method | vocab | seq | chunk |" in table and "ours_chunked" in table


def test_train_step_benchmark_quick(tmp_path):
    """Every arm (SFT x2, teacher forward, our live and cached KD, TRL GKD) trains at a tiny size and gets a verdict."""
    markdown, raw = tmp_path / "train_step.md", tmp_path / "train_step.json"
    _run("train_step.py", "--quick", "--markdown", str(markdown), "--json", str(raw))
    arms = json.loads(raw.read_text())["arms"]
    assert set(arms) == {"sft", "trainer_ce", "teacher_forward", "ours_live", "ours_cached", "trl_gkd"}
    assert all(arm["cpu"] > 0 and arm["n"] == 1 for arm in arms.values())
    table = markdown.read_text()
    for goal in ("cached KD step", "online KD step", "TRL GKD", "B/token"):
        assert goal in table, f"{goal!r} missing:\n{table}"


def test_cache_benchmark_tiny():
    proc = _run("cache.py", "--vocab", "512", "--examples", "8", "--seq", "16", "--batch", "4", "--teachers", "64x2",
                "--steps", "1", "--repeats", "1")
    for line in ("B/token", "collection, whole call", "step: DistillationTrainer, cache", "the goal"):
        assert line in proc.stdout, f"{line!r} missing:\n{proc.stdout}"


def test_demo_based_experiments_run_on_a_fast_demo(tmp_path):
    """The scripts that reuse a finished demo (features, traces, ablation) run end to end on `demo --fast` output."""
    from hf_distill.demo import DemoSettings, run_demo

    demo = tmp_path / "demo"
    run_demo(demo, DemoSettings.fast(), log=lambda *_: None)
    _run("feature_alignment.py", "--demo-dir", str(demo), "--out", str(tmp_path / "features"), "--steps", "2",
         "--n-test", "4", "--timing-steps", "1")
    assert {"kd", "kd+features"} <= {p.name for p in (tmp_path / "features").iterdir()}
    proc = _run("traces_vs_kd.py", "--demo-dir", str(demo), "--out", str(tmp_path / "traces"), "--problems", "8",
                "--steps", "2", "--batch-size", "4", "--student", "16,1,2", "--max-new-tokens", "16",
                "--keep-unverified")  # a 3-step toy teacher may verify none of its traces
    assert "traces+kd" in proc.stdout


def test_teacher_memory_benchmark_runs_at_toy_size():
    pytest.importorskip("bitsandbytes")
    proc = _run("teacher_memory.py", "--quick", "--in-process")
    for mode in ("float32", "bfloat16", "8bit", "4bit"):
        assert f"| {mode} " in proc.stdout, proc.stdout
    assert "vs float32" in proc.stdout
