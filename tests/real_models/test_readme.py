"""The README's quickstart runs as written, with the hub ids pointed at a local SmolLM2-135M-Instruct."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import subprocess_env

pytestmark = pytest.mark.real_model

README = Path(__file__).resolve().parents[2] / "README.md"


def quickstart() -> str:
    section = README.read_text().split("## Quickstart", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_quickstart_trains_on_a_real_model(smollm2_dir, tmp_path):
    data = tmp_path / "capybara.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"What is {a} plus {a}?"},
                          {"role": "assistant", "content": f"{a} plus {a} is {2 * a}."}]} for a in range(4)]
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    code = quickstart()
    substitutions = {
        '"HuggingFaceTB/SmolLM2-135M-Instruct"': repr(str(smollm2_dir)),
        '"HuggingFaceTB/SmolLM2-1.7B-Instruct"': repr(str(smollm2_dir)),
        'load_dataset("trl-lib/Capybara", split="train")': f'load_dataset("json", data_files={str(data)!r}, '
                                                             'split="train")',
        "DistillationConfig(": "DistillationConfig(max_steps=1, per_device_train_batch_size=2, max_length=64, "
                               "report_to=[], use_cpu=True, save_strategy='no',",
    }
    for old, new in substitutions.items():
        assert old in code, f"the README's quickstart no longer contains {old}"
        code = code.replace(old, new)
    code += "\nassert trainer.state.global_step == 1\nprint('KD_LOSS=', trainer.state.log_history[0]['kd_loss'])\n"
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                            env=subprocess_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    # teacher and student are the same checkpoint (the teacher in bfloat16): the first step's KL is near zero
    assert 0 <= float(result.stdout.split("KD_LOSS=", 1)[1].split()[0]) < 0.05
