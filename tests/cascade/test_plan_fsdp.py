"""The cascade's dry-run memory per rank under fully_shard (FSDP2): `--num_processes N`."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import LlamaConfig

from hf_distill.cascade.plan import (
    build_plan,
    parameter_count,
    parameter_layout,
    smallest_gpu,
)
from hf_distill.cascade.recipe import load_recipe
from hf_distill.cli.cascade import main as cascade_main

LLAMA_70B = Path(__file__).resolve().parents[2] / "recipes" / "llama3.1-70b-to-1b-to-100m.yaml"


def test_parameter_layout_splits_the_model_into_its_fsdp_units():
    config = LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    layout = parameter_layout(config)
    layer = 2 * 32 * 32 + 2 * 32 * 16 + 3 * 32 * 64 + 2 * 32  # q, o + k, v (2 heads of 8) + MLP + 2 norms
    assert layout.num_layers == 3 and layout.largest_layer == layer
    assert layout.root == 2 * 100 * 32 + 32  # embeddings + lm_head + final norm
    assert layout.root + 3 * layout.largest_layer == parameter_count(config)


@pytest.fixture(scope="module")
def plans():
    return build_plan(load_recipe(LLAMA_70B))


def test_memory_per_rank_divides_the_sharded_state_and_adds_the_gathered_units(plans):
    plan = plans[0]  # 70B teacher -> 1B student
    assert plan.memory_per_rank(1) == plan.memory
    eight = plan.memory_per_rank(8)
    assert eight["student (train)"] == pytest.approx(plan.memory["student (train)"] / 8)
    assert eight["teacher"] == pytest.approx(plan.memory["teacher"] / 8)
    assert eight["activations"] == plan.memory["activations"] and eight["kd loss"] == plan.memory["kd loss"]
    teacher = plan.teacher_layout  # bf16: the teacher's root (embeddings + head) and two of its 80 layers at once
    assert teacher.num_layers == 80
    assert eight["teacher gathered"] == pytest.approx(2 * (teacher.root + 2 * teacher.largest_layer))
    student = plan.student_layout  # fp32 weights + gradients of the student's root and two layers
    assert eight["student gathered"] == pytest.approx(8 * (student.root + 2 * student.largest_layer))
    totals = [sum(plan.memory_per_rank(n).values()) for n in (1, 2, 8, 64)]
    assert totals == sorted(totals, reverse=True)  # more ranks, less per rank...
    assert totals[3] > plan.total_memory / 64  # ...but never below what every rank gathers and computes


def test_smallest_gpu_leaves_headroom():
    assert smallest_gpu(20 * 2**30) == "24 GiB"
    assert smallest_gpu(23 * 2**30) == "40 GiB"  # 23 > 0.9 x 24
    assert smallest_gpu(200 * 2**30) == "> 141 GiB"


def test_dry_run_prints_memory_per_rank_for_num_processes(capsys, plans):
    assert cascade_main([str(LLAMA_70B), "--dry_run", "--num_processes", "8"]) == 0
    out = capsys.readouterr().out
    assert "per rank x8" in out and "over 8 ranks" in out
    per_rank = sum(plans[0].memory_per_rank(8).values()) / 2**30
    assert f"{per_rank:.1f} GiB" in out and f"8 x {smallest_gpu(per_rank * 2**30)}" in out


def test_dry_run_without_num_processes_has_no_per_rank_column(capsys):
    assert cascade_main([str(LLAMA_70B), "--dry_run"]) == 0
    assert "per rank" not in capsys.readouterr().out


def test_num_processes_below_one_is_refused(capsys):
    with pytest.raises(SystemExit):
        cascade_main([str(LLAMA_70B), "--dry_run", "--num_processes", "0"])
    assert "--num_processes must be at least 1" in capsys.readouterr().err
