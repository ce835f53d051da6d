"""FSDP2 (``fully_shard=True``) with two CPU processes over gloo: tests/scripts/fsdp_distill.py under torchrun.

One launch trains 4 steps (2 ranks x batch 4) with checkpoints at steps 2 and 4, saves the student, resumes a fresh
trainer from checkpoint-2, then trains a LoRA student for 2 steps. The reference is the same script in this
process without ``fully_shard`` and with batch 8 (the same global batch).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    make_llama,
    make_tokenizer,
    prompt_completion,
    subprocess_env,
    tiny_config,
)
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "tests" / "scripts" / "fsdp_distill.py"
LOSS_RTOL, WEIGHT_ATOL = 1e-5, 1e-5  # float32; reduce-scatter sums in another order than one process


def _launch(out: Path, *flags: str) -> None:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
               str(SCRIPT), str(out), *flags]
    result = subprocess.run(command, cwd=ROOT, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-4000:]


def _script():
    spec = importlib.util.spec_from_file_location("fsdp_distill", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    return script


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("fsdp")
    (tmp / "fsdp").mkdir()
    _launch(tmp / "fsdp")
    (tmp / "single").mkdir()
    script = _script()
    script.main(tmp / "single", per_device_batch=8, fully_shard=False)  # 1 process x batch 8
    script.main_lora(tmp / "single", per_device_batch=8, fully_shard=False)

    def read(folder: str, pattern: str) -> list[dict]:
        return [json.loads(path.read_text()) for path in sorted((tmp / folder).glob(pattern))]

    return {"ranks": read("fsdp", "rank-*.json"), "single": read("single", "rank-*.json")[0], "tmp": tmp,
            "lora": read("fsdp", "lora-rank-*.json"), "lora_single": read("single", "lora-rank-*.json")[0]}


def test_student_and_teacher_are_sharded_across_the_two_ranks(runs):
    ranks, single = runs["ranks"], runs["single"]
    assert [r["rank"] for r in ranks] == [0, 1] and {r["world_size"] for r in ranks} == {2}
    for r in ranks:
        assert r["student_types"] == ["DTensor"] and r["teacher_types"] == ["DTensor"]
        assert r["student_wrapper"] != "DistributedDataParallel"  # accelerate did not add DDP on top
        assert r["teacher_trainable"] == 0  # frozen: no gradients, no optimizer state
    # each rank holds about half of every parameter, and of AdamW's moments (dim-0 shards of odd sizes round up)
    assert sum(r["student_local_numel"] for r in ranks) == single["student_local_numel"]
    assert sum(r["teacher_local_numel"] for r in ranks) == single["teacher_local_numel"]
    assert sum(r["optimizer_local_numel"] for r in ranks) == single["optimizer_local_numel"]
    assert max(r["student_local_numel"] for r in ranks) < 0.6 * single["student_local_numel"]


def test_two_sharded_ranks_train_like_one_process_of_the_global_batch(runs):
    ranks, single = runs["ranks"], runs["single"]
    assert len(single["losses"]) == 4 and ranks[0]["losses"] == ranks[1]["losses"]  # gathered logs agree
    assert ranks[0]["losses"] == pytest.approx(single["losses"], rel=LOSS_RTOL)
    assert ranks[0]["kd_losses"] == pytest.approx(single["kd_losses"], rel=LOSS_RTOL)
    sharded = load_file(runs["tmp"] / "fsdp" / "final" / "model.safetensors")
    reference = load_file(runs["tmp"] / "single" / "final" / "model.safetensors")
    assert sorted(sharded) == sorted(reference)
    start = make_llama(len(make_tokenizer()), 32, 2, seed=1).state_dict()
    for name, tensor in reference.items():
        assert not torch.equal(tensor, start[name]), name  # it trained
        torch.testing.assert_close(sharded[name], tensor, rtol=0, atol=WEIGHT_ATOL, msg=name)


def test_the_student_is_saved_once_as_a_plain_model(runs):
    from transformers import AutoModelForCausalLM

    final = runs["tmp"] / "fsdp" / "final"
    assert {p.name for p in final.glob("*.safetensors")} == {"model.safetensors"}
    model = AutoModelForCausalLM.from_pretrained(final)  # no FSDP, no process group
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())
    ids = torch.tensor([[3, 5, 7, 9]])
    assert torch.isfinite(model(ids).logits).all()


def test_a_checkpoint_holds_the_sharded_state_and_the_full_model(runs):
    checkpoint = runs["tmp"] / "fsdp" / "run" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file()  # full state dict, loadable alone
    assert (checkpoint / "fsdp_sharded" / ".metadata").is_file()  # DCP: model + optimizer shards
    assert sorted(p.name for p in (checkpoint / "fsdp_sharded").glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert (checkpoint / "scheduler.pt").is_file() and not (checkpoint / "optimizer.pt").exists()


def test_resuming_from_a_sharded_checkpoint_repeats_the_same_steps(runs):
    ranks, folder = runs["ranks"], runs["tmp"] / "fsdp"
    # the resumed log starts with the checkpoint's two steps, then logs steps 3 and 4 anew
    assert ranks[0]["resumed_losses"] == pytest.approx(ranks[0]["losses"], rel=LOSS_RTOL)
    resumed = load_file(folder / "resumed_final" / "model.safetensors")
    uninterrupted = load_file(folder / "final" / "model.safetensors")
    at_step_2 = load_file(folder / "run" / "checkpoint-2" / "model.safetensors")
    for name, tensor in uninterrupted.items():
        assert not torch.equal(at_step_2[name], tensor), name  # steps 3-4 changed the weights
        # AdamW's moments came back too: with fresh ones steps 3-4 would move the weights elsewhere
        torch.testing.assert_close(resumed[name], tensor, rtol=0, atol=WEIGHT_ATOL, msg=name)


def test_a_sharded_lora_student_trains_like_one_process_and_saves_its_adapter(runs):
    lora, single = runs["lora"], runs["lora_single"]
    assert [r["student_types"] for r in lora] == [["DTensor"]] * 2  # base and adapters sharded alike
    assert {r["trainable"] for r in lora} == {single["trainable"]} == {8}  # A and B of q/v in 2 layers
    assert lora[0]["losses"] == lora[1]["losses"] == pytest.approx(single["losses"], rel=LOSS_RTOL)
    sharded = load_file(runs["tmp"] / "fsdp" / "lora_final" / "adapter_model.safetensors")
    reference = load_file(runs["tmp"] / "single" / "lora_final" / "adapter_model.safetensors")
    assert sorted(sharded) == sorted(reference) and len(reference) == 8
    for name, tensor in reference.items():
        torch.testing.assert_close(sharded[name], tensor, rtol=0, atol=WEIGHT_ATOL, msg=name)


@pytest.mark.parametrize("setting", [dict(feature_weight=1.0), dict(co_distill=True), dict(fsdp="full_shard"),
                                     dict(teacher_quantization="4bit"), dict(lmbda=0.5)])
def test_fully_shard_refuses_what_it_does_not_shard(tmp_path, setting):
    name = next(iter(setting))
    with pytest.raises(ValueError, match=f"fully_shard=True with {name}="):
        tiny_config(tmp_path, fully_shard=True, **setting)


def test_fully_shard_in_one_process_asks_for_a_launcher(tmp_path, tokenizer):
    from hf_distill import DistillationTrainer

    model, config = make_llama(len(tokenizer), 32, 1), tiny_config(tmp_path, fully_shard=True)
    with pytest.raises(RuntimeError, match="torchrun --nproc_per_node"):
        DistillationTrainer(model, config, train_dataset=prompt_completion(slice(0, 8)), processing_class=tokenizer,
                            teacher_model=make_llama(len(tokenizer), 32, 1, seed=2))
