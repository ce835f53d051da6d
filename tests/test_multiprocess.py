"""Distillation under `accelerate launch` with two processes (DDP over gloo on the CPU).

The launched script is tests/scripts/ddp_distill.py. Note on the command: in accelerate 1.15, ``accelerate launch
--cpu --num_processes 2`` goes to the *simple* launcher, which starts one process (multi-CPU needs an MPI hostfile);
the shipped DDP config (``distributed_type: MULTI_GPU``, torchrun) plus ``use_cpu=True`` in the training arguments is
what starts two CPU processes joined by gloo (accelerate's ``MULTI_CPU``).
"""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from helpers import subprocess_env
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "ddp_distill.py"


def _run(command: list[str], out: Path, batch_size: int, *flags: str) -> list[dict]:
    out.mkdir()
    result = subprocess.run([*command, str(out), str(batch_size), *flags], cwd=ROOT, env=subprocess_env(),
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads(path.read_text()) for path in sorted(out.glob("rank-*.json"))]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("multiprocess")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(ROOT / "recipes" / "accelerate" / "ddp.yaml"), "--num_processes", "2", str(SCRIPT)]
    ddp = _run(launch, tmp / "ddp", 4, "--bf16")  # 2 processes x batch 4, then one bf16 step
    spec = importlib.util.spec_from_file_location("ddp_distill", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp / "single").mkdir()
    script.main(tmp / "single", per_device_batch=8)  # 1 process x batch 8, here (saves a process start-up)
    single = [json.loads((tmp / "single" / "rank-0.json").read_text())]
    return {"ddp": ddp, "single": single, "tmp": tmp}


def test_two_processes_form_one_ddp_group_and_agree(runs):
    ranks = runs["ddp"]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    assert {r["distributed_type"] for r in ranks} == {"DistributedType.MULTI_CPU"}
    assert {r["student_wrapper"] for r in ranks} == {"DistributedDataParallel"}
    assert {r["teacher_wrapper"] for r in ranks} == {"LlamaForCausalLM"}  # frozen teacher: not wrapped under DDP
    assert len(ranks[0]["losses"]) == 3 and ranks[0]["losses"] == ranks[1]["losses"]  # gathered, identical logs
    assert ranks[0]["kd_losses"] == ranks[1]["kd_losses"]
    assert ranks[0]["weights_sum"] == ranks[1]["weights_sum"]  # gradients were all-reduced: identical students
    assert ranks[0]["weights_sq_sum"] == ranks[1]["weights_sq_sum"]


def test_two_processes_of_batch_4_train_like_one_process_of_batch_8(runs):
    # The loss is normalised by the loss tokens of the global batch, so DDP must not change the optimisation.
    (ddp, *_), (single,) = runs["ddp"], runs["single"]
    assert single["world_size"] == 1
    assert ddp["losses"] == pytest.approx(single["losses"], rel=1e-5)
    assert ddp["weights_sum"] == pytest.approx(single["weights_sum"], rel=1e-6)
    assert ddp["weights_sq_sum"] == pytest.approx(single["weights_sq_sum"], rel=1e-6)


def test_two_processes_run_the_student_and_teacher_layers_in_bf16(runs):
    # accelerate puts its autocast on the student's forward, which the loss replaces (under DDP's forward) for a step.
    ranks = runs["ddp"]
    assert [r["bf16_dtypes"] for r in ranks] == [{"student": ["torch.bfloat16"], "teacher": ["torch.bfloat16"]}] * 2
    assert math.isfinite(ranks[0]["bf16_loss"]) and ranks[0]["bf16_loss"] == ranks[1]["bf16_loss"]


def test_the_student_is_saved_once_by_the_main_process(runs):
    out = runs["tmp"] / "ddp"
    assert (out / "saves.txt").read_text().split() == ["0"]  # rank 1 never wrote weights
    final = out / "final"
    assert (final / "model.safetensors").is_file()
    assert {p.name for p in [*final.glob("*.bin"), *final.glob("*.pt")]} == {"training_args.bin"}  # no pickled weights
    weights = load_file(final / "model.safetensors")
    total = sum(tensor.double().sum().item() for tensor in weights.values())
    assert total == pytest.approx(runs["ddp"][0]["weights_sum"], rel=1e-9)


def test_shipped_accelerate_configs_load_as_the_intended_setup():
    paths = sorted((ROOT / "recipes" / "accelerate").rglob("*.yaml"))
    configs = {path.stem: load_config_from_file(str(path)) for path in paths}
    assert sorted(configs) == ["ddp", "deepspeed_zero3", "fsdp"]
    assert configs["ddp"].distributed_type == "MULTI_GPU"
    assert configs["fsdp"].distributed_type == "FSDP" and configs["fsdp"].fsdp_config["fsdp_version"] == 2
    assert configs["deepspeed_zero3"].distributed_type == "DEEPSPEED"
    assert configs["deepspeed_zero3"].deepspeed_config["zero_stage"] == 3
    for config in configs.values():
        assert config.num_processes >= 2 and config.compute_environment == "LOCAL_MACHINE"
    for path in paths:  # the first line is the command that runs it
        assert path.read_text().startswith("# accelerate launch --config_file recipes/accelerate/" + path.name)
