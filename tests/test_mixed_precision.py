"""Mixed precision: with ``bf16=True`` the student's layers run in the dtype they run in under `SFTTrainer` (and a
teacher whose dtype allows it follows), while the distillation loss is still reduced in float32.

On the CPU, ``use_cpu=True, bf16=True`` gives accelerate's CPU bfloat16 autocast (without ``use_cpu``,
`DistillationConfig` turns TRL's default bf16 off on a machine with no accelerator). The dtypes are read by forward
hooks on one MLP and one attention block of each model.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import make_llama, prompt_completion
from trl import SFTConfig, SFTTrainer

from hf_distill import DistillationConfig, DistillationTrainer
from hf_distill.losses import LossSpec, fused_distillation_loss
from hf_distill.losses.targets import DenseTeacherSignal
from hf_distill.teacher.live import LiveTeacher, load_teacher

BF16, FP32 = {torch.bfloat16}, {torch.float32}


def _record_dtypes(model: torch.nn.Module, who: str, seen: dict) -> dict:
    """Hooks on layer 0's MLP and attention that add their output dtype to ``seen[f"{who}_mlp"]`` etc."""
    layer = model.model.layers[0]
    for name, module in (("mlp", layer.mlp), ("attention", layer.self_attn)):
        dtypes = seen.setdefault(f"{who}_{name}", set())
        module.register_forward_hook(
            lambda _module, _args, out, dtypes=dtypes: dtypes.add((out[0] if isinstance(out, tuple) else out).dtype)
        )
    return seen


def _train(out, tokenizer, kind: str, bf16: bool, **overrides) -> tuple[dict, dict, object]:
    """One optimiser step of SFT or KD; returns the dtypes the layers saw in it, its first log and the trainer."""
    student, teacher = make_llama(len(tokenizer), 32, 1, seed=1), make_llama(len(tokenizer), 64, 2, seed=2)
    seen = _record_dtypes(student, "student", {})
    values = dict(output_dir=str(out), max_steps=1, per_device_train_batch_size=4, report_to=[], logging_steps=1,
                  save_strategy="no", seed=0, dataloader_num_workers=0, use_cpu=True, bf16=bf16, **overrides)
    data = prompt_completion(slice(0, 8))
    if kind == "sft":
        trainer = SFTTrainer(student, SFTConfig(**values), train_dataset=data, processing_class=tokenizer)
    else:
        _record_dtypes(teacher, "teacher", seen)
        trainer = DistillationTrainer(student, DistillationConfig(**values), train_dataset=data,
                                      processing_class=tokenizer, teacher_model=teacher)
    for dtypes in seen.values():
        dtypes.clear()  # the dtypes of the training step only
    trainer.train()
    return seen, trainer.state.log_history[0], trainer


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tokenizer) -> dict:
    tmp = tmp_path_factory.mktemp("mixed_precision")
    return {name: _train(tmp / name, tokenizer, kind, bf16)[:2]
            for name, kind, bf16 in (("sft_bf16", "sft", True), ("kd_bf16", "kd", True), ("kd_fp32", "kd", False))}


def test_bf16_student_layers_run_in_the_dtype_they_have_under_sft_trainer(runs):
    sft, kd = runs["sft_bf16"][0], runs["kd_bf16"][0]
    assert sft == {"student_mlp": BF16, "student_attention": BF16}
    assert {name: kd[name] for name in sft} == sft


def test_bf16_float32_teacher_runs_under_the_same_autocast(runs):
    dtypes = runs["kd_bf16"][0]
    assert dtypes["teacher_mlp"] == BF16 and dtypes["teacher_attention"] == BF16


def test_float32_run_keeps_every_layer_in_float32(runs):
    dtypes = runs["kd_fp32"][0]
    assert set(dtypes) == {"student_mlp", "student_attention", "teacher_mlp", "teacher_attention"}
    assert all(seen == FP32 for seen in dtypes.values()), dtypes


def test_bf16_loss_is_finite_and_close_to_the_float32_loss(runs):
    bf16, fp32 = runs["kd_bf16"][1], runs["kd_fp32"][1]
    for key in ("loss", "kd_loss", "ce_loss"):
        assert math.isfinite(bf16[key]) and bf16[key] == pytest.approx(fp32[key], rel=2e-3), key


def test_feature_alignment_and_co_distillation_run_under_bf16(tmp_path, tokenizer):
    # Both go through AlignedObjective: the student, the co-trained teacher and the projector all under autocast.
    settings = dict(feature_weight=1.0, co_distill=True, teacher_learning_rate=1e-3)
    projected = set()
    dtypes, bf16, trainer = _train(tmp_path / "bf16", tokenizer, "kd", True, **settings)
    aligner = trainer._extra_modules["feature_projectors"]
    aligner.projectors[0].register_forward_hook(lambda _module, _args, out: projected.add(out.dtype))
    trainer.compute_loss(trainer.model, next(iter(trainer.get_train_dataloader())))
    assert all(seen == BF16 for seen in dtypes.values()), dtypes
    assert projected == BF16
    _, fp32, _ = _train(tmp_path / "fp32", tokenizer, "kd", False, **settings)
    for key in ("loss", "kd_loss", "feature_loss", "teacher_kd_loss"):
        assert math.isfinite(bf16[key]) and bf16[key] == pytest.approx(fp32[key], rel=5e-3), key


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_chunked_loss_under_autocast_projects_in_bf16_and_reduces_in_float32(temperature):
    # Under autocast, the loss equals the float32 loss of bf16-projected student logits: the head runs in bf16 (as
    # lm_head does in SFTTrainer), the divergence does not (bf16 `vecdot`s would move kd by ~1e-3 relative here).
    torch.manual_seed(0)
    rows, width, vocab = 141, 40, 123  # odd shapes, 3 chunks of 47
    teacher_weight = torch.randn(vocab, width) * 3 / width**0.5
    weight = (teacher_weight + torch.randn(vocab, width) / width**0.5).requires_grad_()
    teacher_hidden = torch.randn(rows, width)
    hidden = (teacher_hidden + 0.3 * torch.randn(rows, width)).requires_grad_()
    targets = torch.randint(0, vocab, (rows,))
    spec = LossSpec("forward_kl", temperature, 0.5, 0.5, 47)
    teacher = DenseTeacherSignal(teacher_hidden, vocab, teacher_weight)  # float32 head: projects in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = fused_distillation_loss(hidden, weight, None, teacher, targets, spec)
    mixed.loss.backward()
    bf16_logits = F.linear(hidden.detach().bfloat16(), weight.detach().bfloat16()).float()  # (N, V)
    reference = fused_distillation_loss(bf16_logits, None, None, teacher, targets, spec)
    assert mixed.kd_sum.item() == pytest.approx(reference.kd_sum.item(), rel=1e-5)
    assert mixed.ce_sum.item() == pytest.approx(reference.ce_sum.item(), rel=1e-5)
    fp32_hidden, fp32_weight = hidden.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    fp32 = fused_distillation_loss(fp32_hidden, fp32_weight, None, teacher, targets, spec)
    fp32.loss.backward()
    assert mixed.loss.dtype == torch.float32 and mixed.loss.item() == pytest.approx(fp32.loss.item(), rel=1e-2)
    for grad, fp32_grad in ((hidden.grad, fp32_hidden.grad), (weight.grad, fp32_weight.grad)):
        assert grad.dtype == torch.float32 and ((grad - fp32_grad).norm() / fp32_grad.norm()).item() < 1e-2


@pytest.mark.parametrize(
    ("autocast", "teacher_dtype", "quantised", "trainable", "expected"),
    [
        (torch.bfloat16, torch.float32, False, False, torch.bfloat16),  # a float32 teacher follows bf16 autocast
        (torch.bfloat16, torch.float16, False, False, torch.float16),  # fp16 weights: not rounded further to bf16
        (torch.bfloat16, torch.float32, True, False, torch.float32),  # quantised: its own compute dtype
        (torch.float16, torch.float32, False, False, torch.float32),  # frozen: never pushed into fp16's range
        (torch.float16, torch.float32, False, True, torch.float16),  # co-trained: mixed precision like the student
        (None, torch.float32, False, False, torch.float32),  # no autocast: unchanged
    ],
)
def test_live_teacher_follows_autocast_where_its_dtype_allows(tokenizer, autocast, teacher_dtype, quantised,
                                                               trainable, expected):
    model = make_llama(len(tokenizer), 32, 1, seed=2).to(teacher_dtype).eval().requires_grad_(trainable)
    if quantised:
        model.is_loaded_in_4bit = True  # what bitsandbytes sets; hf_distill.models.quantization.quantization_mode reads it
    seen = _record_dtypes(model, "teacher", {})
    teacher = LiveTeacher(model)
    inputs = {"input_ids": torch.randint(3, len(tokenizer), (2, 7))}
    inputs["labels"] = inputs["input_ids"]
    context = torch.autocast("cpu", dtype=autocast) if autocast else contextlib.nullcontext()
    with context:
        signal = teacher.signal(inputs, torch.ones(2, 6, dtype=torch.bool), len(tokenizer), torch.device("cpu"))
    assert seen == {"teacher_mlp": {expected}, "teacher_attention": {expected}}
    assert signal.lm_head_weight.dtype == expected  # its lm_head projects, chunk by chunk, in the same dtype


def test_bitsandbytes_teacher_keeps_its_own_dtypes_under_bf16_autocast(tmp_path, tokenizer):
    pytest.importorskip("bitsandbytes")
    make_llama(len(tokenizer), 64, 2, seed=2).save_pretrained(tmp_path)
    model = load_teacher(str(tmp_path), "float32", quantization="8bit", device="cpu")
    seen = set()  # what the quantised output projection is fed: bf16 attention outputs under a followed autocast
    model.model.layers[0].self_attn.o_proj.register_forward_pre_hook(lambda _module, args: seen.add(args[0].dtype))
    inputs = {"input_ids": torch.randint(3, len(tokenizer), (2, 7))}
    inputs["labels"] = inputs["input_ids"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        signal = LiveTeacher(model).signal(inputs, torch.ones(2, 6, dtype=torch.bool), len(tokenizer), model.device)
    assert seen == FP32 and signal.lm_head_weight.dtype == torch.float32
