"""bitsandbytes on this machine: configs, early errors naming the fix, 8-bit / 4-bit teachers in the trainer."""

from __future__ import annotations

import pytest
import torch
from helpers import make_llama, prompt_completion, tiny_config
from transformers import (
    AutoModelForCausalLM,
    BitsAndBytesConfig,
    LlamaConfig,
    LlamaForCausalLM,
)

bnb = pytest.importorskip("bitsandbytes")

from hf_distill import DistillationConfig, DistillationTrainer  # noqa: E402
from hf_distill import quantization as quant  # noqa: E402
from hf_distill.teacher.live import load_teacher  # noqa: E402

needs_cpu_4bit_kernel = pytest.mark.skipif(
    torch.cuda.is_available() or not quant._cpu_repacks_4bit(), reason="the 32-row limit is for AVX512-BF16 CPUs"
)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tokenizer):
    """A saved teacher whose layer sizes are multiples of 32 (what 4-bit inference on this CPU needs)."""
    path = tmp_path_factory.mktemp("teacher")
    make_llama(len(tokenizer), hidden=64, layers=2, seed=2).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_quantization_config_builds_each_mode():
    assert quant.quantization_config(None) is None
    eight = quant.quantization_config("8bit")
    assert eight.load_in_8bit and not eight.load_in_4bit
    four = quant.quantization_config("4bit", compute_dtype="float32")
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_use_double_quant
    assert four.bnb_4bit_compute_dtype == torch.float32
    with pytest.raises(ValueError, match="8bit, 4bit"):
        quant.quantization_config("int4")


def test_missing_bitsandbytes_error_names_the_install_command(monkeypatch):
    real_find_spec = quant.importlib.util.find_spec
    monkeypatch.setattr(quant.importlib.util, "find_spec", lambda name: None if name == "bitsandbytes" else
                        real_find_spec(name))
    quant._check_runs.cache_clear()
    try:
        with pytest.raises(ImportError, match=r"pip install 'hf-distill\[quant\]'"):
            quant.quantization_config("8bit", device="cpu")
    finally:
        quant._check_runs.cache_clear()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("mode", ["8bit", "4bit"])
def test_gpu_device_on_a_cpu_machine_fails_before_loading_with_the_fix(mode):
    with pytest.raises(RuntimeError, match=r"cannot run .* on cuda.*teacher_quantization=None"):
        quant.quantization_config(mode, device="cuda")


def _save_odd_llama(path, vocab_size):
    """k/v_proj: 16 output rows (not a multiple of 32); down_proj: 96 inputs (not a multiple of 64); others fit."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@needs_cpu_4bit_kernel
def test_4bit_layers_the_cpu_kernel_cannot_pack_fail_early_naming_them_and_the_fix_works(tmp_path, tokenizer):
    path = _save_odd_llama(tmp_path / "odd", len(tokenizer))
    config = quant.quantization_config("4bit", compute_dtype="float32")
    with pytest.raises(ValueError, match=r"these are not: down_proj, k_proj, v_proj\.") as error:
        quant.check_quantizable(path, config, "cpu")
    assert "llm_int8_skip_modules=['down_proj', 'k_proj', 'lm_head', 'v_proj']" in str(error.value)
    # What the check prevents: bitsandbytes' own failure in the middle of the first inference forward.
    model = AutoModelForCausalLM.from_pretrained(path, quantization_config=config, device_map="cpu")
    with pytest.raises((AssertionError, RuntimeError)), torch.no_grad():
        model(input_ids=torch.tensor([[3, 4, 5]]))
    # The suggested fix loads and runs inference, with the layers that fit still in 4 bits.
    fixed = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32,
                               llm_int8_skip_modules=["down_proj", "k_proj", "lm_head", "v_proj"])
    model = load_teacher(str(path), "float32", {"quantization_config": fixed}, device="cpu")  # checks it again
    with torch.no_grad():
        assert torch.isfinite(model(input_ids=torch.tensor([[3, 4, 5]])).logits).all()
    assert model.model.layers[0].mlp.up_proj.weight.quant_state.packing_format_for_cpu  # the fast kernel ran
    layers = model.model.layers[0]
    assert type(layers.mlp.up_proj) is bnb.nn.Linear4bit and type(layers.self_attn.q_proj) is bnb.nn.Linear4bit
    assert type(layers.self_attn.k_proj) is torch.nn.Linear and type(layers.mlp.down_proj) is torch.nn.Linear


def test_a_4bit_student_of_any_size_runs_inference_then_still_trains(tmp_path, tokenizer):
    """load_quantized keeps students off the repacking kernel: no size limit, and gradients keep flowing."""
    model = quant.load_quantized(_save_odd_llama(tmp_path / "odd", len(tokenizer)), "4bit", "float32", "cpu")
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        model.eval()(input_ids=ids)
    embeddings = model.get_input_embeddings().weight
    embeddings.requires_grad_(True)
    model.train()(input_ids=ids).logits.sum().backward()
    assert embeddings.grad is not None and embeddings.grad.abs().sum() > 0  # flowed back through every 4-bit layer


def test_4bit_check_passes_for_gpu_devices_and_8bit(tmp_path, tokenizer):
    path = _save_odd_llama(tmp_path / "odd", len(tokenizer))
    quant.check_quantizable(path, BitsAndBytesConfig(load_in_8bit=True), "cpu")
    quant.check_quantizable(path, {"load_in_4bit": True}, "cuda")  # the limit is the CPU kernel's only


@pytest.mark.parametrize("mode,max_ratio", [("8bit", 0.45), ("4bit", 0.35)])
def test_quantized_teacher_in_trainer_is_smaller_and_gives_nearly_the_same_loss(
    tmp_path, tokenizer, student, teacher_dir, mode, max_ratio
):
    reference = DistillationTrainer(student, tiny_config(tmp_path / "fp32"), train_dataset=prompt_completion(),
                                    processing_class=tokenizer, teacher_model=str(teacher_dir))
    trainer = DistillationTrainer(
        student, tiny_config(tmp_path, teacher_quantization=mode, teacher_dtype="float32", max_steps=2),
        train_dataset=prompt_completion(), processing_class=tokenizer, teacher_model=str(teacher_dir),
    )
    teacher = trainer.teacher_model
    assert quant.quantization_mode(teacher) == mode and not any(p.requires_grad for p in teacher.parameters())
    layer = teacher.model.layers[0].mlp.up_proj
    assert isinstance(layer, bnb.nn.Linear8bitLt if mode == "8bit" else bnb.nn.Linear4bit)
    # Only the decoder layers are quantised (embeddings, norms and lm_head stay), so the ratio is > 1/4 or 1/8.
    fp32_layers = sum(p.numel() * 4 for p in reference.teacher_model.model.layers.parameters())
    quant_layers = quant.weight_memory_bytes(teacher.model.layers)
    assert quant_layers < max_ratio * fp32_layers
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    want = reference.compute_loss(reference.model, batch)
    got = trainer.compute_loss(trainer.model, batch)
    torch.testing.assert_close(got, want, rtol=0.05, atol=0.0)  # quantisation noise only
    trainer.train()
    assert all(torch.isfinite(torch.tensor(row["loss"])) for row in trainer.state.log_history if "loss" in row)


def test_weight_memory_counts_bitsandbytes_quantization_state(teacher_dir):
    plain = AutoModelForCausalLM.from_pretrained(teacher_dir)
    assert quant.weight_memory_bytes(plain) == plain.get_memory_footprint()
    four = quant.load_quantized(teacher_dir, "4bit", compute_dtype="float32", device="cpu")
    assert quant.weight_memory_bytes(four) > four.get_memory_footprint()  # absmax + codebooks


def test_teacher_quantization_needs_a_path_and_is_validated(tmp_path, tokenizer, student, teacher):
    with pytest.raises(ValueError, match="needs the teacher as a path"):
        DistillationTrainer(student, tiny_config(tmp_path, teacher_quantization="4bit"),
                            train_dataset=prompt_completion(), processing_class=tokenizer, teacher_model=teacher)
    with pytest.raises(ValueError, match="use '8bit', '4bit'"):
        DistillationConfig(output_dir=str(tmp_path), teacher_quantization="nf4")
    with pytest.raises(ValueError, match="not to a `teacher_cache`"):
        DistillationConfig(output_dir=str(tmp_path), teacher_quantization="8bit", teacher_cache=str(tmp_path))
    with pytest.raises(ValueError, match="unset teacher_quantization or co_distill"):
        DistillationConfig(output_dir=str(tmp_path), teacher_quantization="8bit", co_distill=True)
    with pytest.raises(ValueError, match="keep one"):
        DistillationConfig(output_dir=str(tmp_path), teacher_quantization="8bit",
                           teacher_model_init_kwargs={"quantization_config": {"load_in_8bit": True}})
