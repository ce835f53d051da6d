"""On-policy batches under DDP (two CPU processes over gloo, launched as tests/test_multiprocess.py does): each rank
samples its own completions, and the loss is normalised by the generated tokens of the whole global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import subprocess_env

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("ddp_on_policy.py")


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("on_policy_ddp")
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(ROOT / "recipes" / "accelerate" / "ddp.yaml"), "--num_processes", "2", str(SCRIPT), str(out)]
    result = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads(path.read_text()) for path in sorted(out.glob("rank-*.json"))]


def test_ranks_sample_different_completions_of_the_same_prompts(ranks):
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    first, second = (r["completions"] for r in ranks)
    assert len(first) == len(second) == 4  # 2 steps x batch 2 per rank, every batch generated
    assert all(first) and first != second  # the prompts are all the same: only the sampling streams differ


def test_the_normaliser_counts_the_generated_tokens_of_both_ranks_and_the_ranks_stay_in_sync(ranks):
    first, second = ranks
    global_counts = [a + b for a, b in zip(first["local_tokens"], second["local_tokens"])]
    assert first["num_items"] == second["num_items"] == global_counts
    assert first["losses"] == second["losses"]
    assert first["weights_sum"] == second["weights_sum"] and first["weights_sq_sum"] == second["weights_sq_sum"]
