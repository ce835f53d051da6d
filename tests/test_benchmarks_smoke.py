"""The benchmark scripts run end to end at tiny sizes (no timing asserts)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_kd_loss_benchmark_quick(tmp_path):
    markdown = tmp_path / "kd_loss.md"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kd_loss.py"), "--quick", "--markdown", str(markdown)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for method in ("ce", "seed_dense", "ours_chunked", "trl_chunked"):
        assert method in proc.stdout, f"{method} missing from the table:\n{proc.stdout}"
    assert "memory vs ce" in proc.stdout
    assert "the goal" in proc.stdout  # the final verdict line
    table = markdown.read_text()
    assert "| method | vocab | seq | chunk |" in table and "ours_chunked" in table
