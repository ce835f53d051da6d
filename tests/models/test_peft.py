"""LoRA and QLoRA students: `peft_config` passes through as with SFTTrainer, adapters merge into plain models."""

from __future__ import annotations

import pytest
import torch
from helpers import make_llama, prompt_completion, tiny_config
from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from hf_distill import DistillationTrainer
from hf_distill.models.adapters import describe_adapter, merge_adapters
from hf_distill.models.quantization import (
    _cpu_repacks_4bit,
    load_quantized,
    quantization_mode,
    with_quantization,
)

LORA = dict(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"])


def _kd_on(trainer, batch) -> float:
    trainer.model.eval()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)
    trainer.model.train()
    return trainer._metrics["eval"]["kd_loss"][-1]


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_lora_student_trains_only_adapters_leaves_teacher_alone_and_saves_a_peft_adapter(
    tmp_path, tokenizer, student, teacher
):
    base_before, teacher_before = _snapshot(student), _snapshot(teacher)
    args = tiny_config(tmp_path, max_steps=12, learning_rate=1e-2, alpha=0.0, save_strategy="no")
    trainer = DistillationTrainer(student, args, train_dataset=prompt_completion(), processing_class=tokenizer,
                                  teacher_model=teacher, peft_config=LoraConfig(**LORA))
    assert isinstance(trainer.model, PeftModel)
    trainable = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    kd_before = _kd_on(trainer, batch)
    trainer.train()
    assert _kd_on(trainer, batch) < 0.9 * kd_before
    base = trainer.model.get_base_model()
    for name, param in base.named_parameters():
        if "lora_" not in name:  # the base student's own weights did not move
            original = name.replace(".base_layer", "")
            torch.testing.assert_close(param, base_before[original], rtol=0, atol=0)
    for name, param in teacher.named_parameters():
        torch.testing.assert_close(param, teacher_before[name], rtol=0, atol=0)

    trainer.save_model(str(tmp_path / "adapter"))
    saved = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= saved and "model.safetensors" not in saved
    assert all("lora_" in key for key in load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    fresh = make_llama(len(tokenizer), hidden=32, layers=1, seed=1)  # the student's base, re-created
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    trainer.model.eval()
    with torch.no_grad():
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        torch.testing.assert_close(reloaded(**inputs).logits, trainer.model(**inputs).logits)


@pytest.mark.parametrize("extra", [{}, {"modules_to_save": ["lm_head"]}], ids=["fused_head", "trained_head"])
def test_loss_of_a_peft_student_matches_its_full_logits(tmp_path, tokenizer, student, teacher, extra):
    """With LoRA the fused loss still reads the (frozen) lm_head; a trained head copy falls back to full logits."""
    config = LoraConfig(**LORA, **extra, init_lora_weights=False)  # non-zero B: the adapter changes the output
    args = tiny_config(tmp_path, alpha=0.5, temperature=2.0, kd_chunk_size=7)
    trainer = DistillationTrainer(student, args, train_dataset=prompt_completion(), processing_class=tokenizer,
                                  teacher_model=teacher, peft_config=config)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model = trainer.model
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        t_logits = teacher(**inputs).logits[:, :-1]
    s_logits = model(**inputs).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    s, t = s_logits[mask] / 2.0, t_logits[mask] / 2.0
    kd = torch.nn.functional.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="sum") * 4.0
    ce = torch.nn.functional.cross_entropy(s_logits[mask], targets[mask], reduction="sum")
    want = (0.5 * ce + 0.5 * kd) / mask.sum()
    torch.testing.assert_close(trainer.compute_loss(model, batch), want, rtol=1e-5, atol=1e-6)


@pytest.fixture
def student_dir(tmp_path, tokenizer):
    """A saved student with layer sizes 4-bit inference on this CPU can pack (multiples of 64)."""
    path = tmp_path / "student"
    make_llama(len(tokenizer), hidden=64, layers=1, seed=1).save_pretrained(path)
    return path


@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_qlora_student_trains_its_adapters_on_a_quantized_base(tmp_path, tokenizer, teacher, student_dir, mode):
    base = load_quantized(student_dir, mode, compute_dtype="float32", device="cpu")
    base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
    args = tiny_config(tmp_path, max_steps=12, learning_rate=1e-2, alpha=0.0)
    trainer = DistillationTrainer(base, args, train_dataset=prompt_completion(), processing_class=tokenizer,
                                  teacher_model=teacher, peft_config=LoraConfig(**LORA))
    assert quantization_mode(trainer.model) == mode
    lora_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert lora_before and all("lora_" in n for n in lora_before)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    kd_before = _kd_on(trainer, batch)  # an inference pass before training (see keep_4bit_trainable)
    trainer.train()
    assert _kd_on(trainer, batch) < 0.9 * kd_before
    moved = [n for n, p in trainer.model.named_parameters() if n in lora_before and not torch.equal(p, lora_before[n])]
    assert len(moved) == len(lora_before)
    info = describe_adapter(trainer.model)
    assert info["base_quantization"] == mode and info["r"] == 8 and info["merged"] is False


def _adapted(base):
    torch.manual_seed(3)
    return get_peft_model(base, LoraConfig(**LORA, init_lora_weights=False))  # random B: a visible update


@pytest.mark.parametrize("mode", [None, "8bit", "4bit"])
def test_merged_student_computes_what_the_adapted_one_did_and_saves_as_a_plain_model(
    tmp_path, tokenizer, student_dir, mode
):
    # Loaded as users and teachers load it (not load_quantized), so an inference pass may repack 4-bit weights.
    kwargs = with_quantization(str(student_dir), {}, mode, compute_dtype="float32", device="cpu")
    model = _adapted(AutoModelForCausalLM.from_pretrained(student_dir, **kwargs)).eval()
    ids = torch.tensor([[5, 9, 2, 40, 7, 11], [3, 3, 8, 1, 0, 0]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    if mode == "4bit" and _cpu_repacks_4bit():  # merging must undo bitsandbytes' CPU repacking (quantization.py)
        assert model.get_base_model().model.layers[0].mlp.up_proj.base_layer.weight.quant_state.packing_format_for_cpu
    merged = merge_adapters(model)
    assert type(merged) is LlamaForCausalLM and quantization_mode(merged) is None
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    assert all(p.dtype == torch.float32 and p.requires_grad for p in merged.parameters())
    with torch.no_grad():
        after = merged(input_ids=ids).logits
    # Exact up to the int8 activation rounding of LLM.int8 and the bf16 absmax of bnb's CPU 4-bit kernel.
    tolerance = {None: 1e-5, "8bit": 2e-2, "4bit": 1e-2}[mode]
    torch.testing.assert_close(after, before, rtol=0, atol=tolerance)
    info = describe_adapter(merged)
    assert info["merged"] is True and info["r"] == 8 and info["lora_alpha"] == 16 and info["base_quantization"] == mode

    merged.save_pretrained(tmp_path / "merged")
    saved = {p.name for p in (tmp_path / "merged").iterdir()}
    assert "model.safetensors" in saved and "adapter_config.json" not in saved
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert getattr(reloaded.config, "quantization_config", None) is None
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, after)


def test_merged_lora_student_becomes_the_next_teacher(tmp_path, tokenizer, student_dir, student):
    merged = merge_adapters(_adapted(load_quantized(student_dir, "4bit", "float32", "cpu")))
    merged.save_pretrained(tmp_path / "stage1")
    tokenizer.save_pretrained(tmp_path / "stage1")
    trainer = DistillationTrainer(student, tiny_config(tmp_path, max_steps=1), train_dataset=prompt_completion(),
                                  processing_class=tokenizer, teacher_model=str(tmp_path / "stage1"))
    trainer.train()
    assert type(trainer.teacher_model) is LlamaForCausalLM


def test_merge_adapters_leaves_plain_models_alone_and_describe_adapter_is_none(student):
    assert merge_adapters(student) is student
    assert describe_adapter(student) is None


def test_the_old_quantization_path_still_finds_the_adapter_functions_for_one_release():
    import hf_distill.quantization as old

    for name in ("describe_adapter", "merge_adapters"):
        with pytest.warns(DeprecationWarning, match=f"import {name} from hf_distill.models.adapters"):
            assert getattr(old, name) is globals()[name]
    with pytest.warns(DeprecationWarning, match="from hf_distill.models.quantization"):
        assert old.load_quantized is load_quantized
