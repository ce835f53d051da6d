"""Workarounds for the libraries underneath (hf_distill._compat)."""

from __future__ import annotations

import inspect
import logging
import subprocess
import sys

import pytest
import torch
from datasets import Dataset
from helpers import make_llama, prompt_completion, subprocess_env, tiny_config


def test_commands_print_no_bitsandbytes_kernel_note():
    result = subprocess.run([sys.executable, "-c", "import hf_distill.cli.main, hf_distill, peft, bitsandbytes"],
                            capture_output=True, text=True, env=subprocess_env())
    assert result.returncode == 0, result.stderr
    assert "gemm_4bit_forward" not in result.stderr


def test_the_kernel_note_filter_drops_that_note_only():
    from hf_distill._compat import silence_bitsandbytes_kernel_note

    silence_bitsandbytes_kernel_note()
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    try:
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s.", "no module")
        logger.warning("something else went wrong")
    finally:
        logger.removeHandler(handler)
    assert [r.getMessage() for r in records] == ["something else went wrong"]


# --- private internals we rely on: one test per hook of hf_distill._compat --------------------------------------------
# A failure here names the TRL / transformers / datasets / bitsandbytes internal that moved; fix the hook in _compat.


@pytest.fixture(scope="module")
def sft(tmp_path_factory, tokenizer):
    """A plain TRL SFTTrainer on a tiny model and prompt-completion data (nothing of ours in between)."""
    from trl import SFTTrainer

    tmp = tmp_path_factory.mktemp("sft")
    return SFTTrainer(make_llama(len(tokenizer)), tiny_config(tmp), train_dataset=prompt_completion(slice(0, 8)),
                      processing_class=tokenizer)


def _parameters(function) -> list[str]:
    return [name for name in inspect.signature(function).parameters if name != "self"]


def test_forward_redirection_runs_the_method_inside_the_wrappers_forward():
    from hf_distill._compat import forward_redirection

    calls = []

    class Wrapper(torch.nn.Module):  # stands for DDP/FSDP: its forward calls the wrapped module's forward
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            calls.append("wrapper")
            return self.inner(*args)

    inner = torch.nn.Linear(2, 2)
    method = lambda x, scale: (calls.append("method"), x.sum() * scale)[1]  # noqa: E731
    out = forward_redirection()(Wrapper(inner), inner, method, torch.ones(3), 2.0)
    assert out.item() == 6.0 and calls == ["wrapper", "method"]
    assert inner(torch.ones(2)).shape == (2,)  # the real forward is back afterwards


def test_prepare_deepspeed_takes_the_model_and_the_accelerator():
    from trl.models import utils

    assert _parameters(utils.prepare_deepspeed) == ["model", "accelerator"]


def test_prepare_fsdp_takes_the_model_and_the_accelerator():
    from trl.models import utils

    assert _parameters(utils.prepare_fsdp) == ["model", "accelerator"]


def test_sft_tokenizer_is_the_tokenizer_sft_trainer_set_up(sft, tokenizer):
    from hf_distill._compat import sft_tokenizer

    assert sft_tokenizer(sft) is tokenizer


def test_log_metric_is_averaged_into_sft_trainers_next_log_then_cleared(sft):
    from hf_distill._compat import log_metric

    sft.model.train()
    log_metric(sft, "train", "kd_loss", 1.0)
    log_metric(sft, "train", "kd_loss", 3.0)
    logs = {"loss": 0.5}
    sft.log(logs)
    assert logs["kd_loss"] == 2.0 and not sft._metrics["train"]


def test_count_train_tokens_adds_to_sft_trainers_running_total(sft):
    from hf_distill._compat import count_train_tokens

    before = sft._total_train_tokens
    count_train_tokens(sft, 7)
    assert sft._total_train_tokens == before + 7 and sft._metrics["train"]["num_tokens"] == [before + 7]
    sft._metrics["train"].clear()


def test_run_output_dir_is_the_output_dir_outside_a_search(sft):
    from transformers import Trainer

    from hf_distill._compat import run_output_dir

    assert _parameters(Trainer._get_output_dir) == ["trial"]
    assert run_output_dir(sft) == sft.args.output_dir


def test_skips_text_preparation_reads_sft_trainers_flags(sft, tmp_path, tokenizer):
    from trl import SFTTrainer

    from hf_distill._compat import skips_text_preparation

    assert skips_text_preparation(sft) is False
    tokenized = Dataset.from_dict({"input_ids": [[3, 4, 5, 6]] * 4, "labels": [[3, 4, 5, 6]] * 4})
    args = tiny_config(tmp_path, dataset_kwargs={"skip_prepare_dataset": True})
    skipped = SFTTrainer(make_llama(len(tokenizer)), args, train_dataset=tokenized, processing_class=tokenizer)
    assert skipped._is_vision_dataset is False and skips_text_preparation(skipped) is True


def test_set_trainer_signature_columns_skips_sft_trainers_override(sft):
    from trl import SFTTrainer

    from hf_distill._compat import set_trainer_signature_columns

    owners = [k.__name__ for k in SFTTrainer.__mro__ if "_set_signature_columns_if_needed" in vars(k)]
    assert owners == ["SFTTrainer", "Trainer"]  # so super(SFTTrainer, ...) reaches Trainer's own
    saved, sft._signature_columns = sft._signature_columns, None
    try:
        set_trainer_signature_columns(sft)
        assert {"input_ids", "attention_mask", "labels"} <= set(sft._signature_columns)  # the model's forward args
    finally:
        sft._signature_columns = saved


def test_signature_columns_are_what_remove_unused_columns_keeps(sft):
    from hf_distill._compat import signature_columns

    assert {"input_ids", "labels"} <= set(signature_columns(sft))


def test_remove_unused_columns_drops_columns_the_model_does_not_take(sft):
    from hf_distill._compat import remove_unused_columns

    data = Dataset.from_dict({"input_ids": [[3, 4]], "labels": [[3, 4]], "note": ["x"]})
    assert sft.args.remove_unused_columns
    assert set(remove_unused_columns(sft, data, "training").column_names) == {"input_ids", "labels"}


def test_attn_implementation_is_kept_on_the_config():
    from transformers import LlamaConfig

    from hf_distill._compat import attn_implementation

    assert attn_implementation(LlamaConfig(attn_implementation="eager")) == "eager"
    assert LlamaConfig(attn_implementation="eager")._attn_implementation == "eager"  # not the getattr default


def test_dataset_fingerprint_follows_the_data_and_its_transforms():
    from hf_distill._compat import dataset_fingerprint

    data = Dataset.from_dict({"a": [1, 2]})
    double = lambda row: {"b": row["a"] * 2}  # noqa: E731
    assert isinstance(data._fingerprint, str)
    assert dataset_fingerprint(data.map(double)) == dataset_fingerprint(data.map(double)) != dataset_fingerprint(data)


def test_modules_not_to_quantize_keeps_the_output_head(tokenizer):
    from hf_distill._compat import modules_not_to_quantize

    with torch.device("meta"):
        model = make_llama(len(tokenizer))
    assert hasattr(model, "_keep_in_fp32_modules")
    assert "lm_head" in modules_not_to_quantize(model, None)  # the default skips (what check_quantizable names)
    assert "k_proj" in modules_not_to_quantize(model, ["k_proj"])  # a config's llm_int8_skip_modules


def test_should_quantize_module_follows_the_skip_list():
    from hf_distill._compat import should_quantize_module

    assert should_quantize_module("model.layers.0.mlp.up_proj", ["lm_head", "k_proj"])
    assert not should_quantize_module("lm_head", ["lm_head", "k_proj"])
    assert not should_quantize_module("model.layers.0.self_attn.k_proj", ["lm_head", "k_proj"])


def _4bit_layer(bnb):
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(64, 64, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(torch.randn(64, 64), requires_grad=False, quant_type="nf4")
    return layer.to("cpu")


def _packed(layer) -> bool:
    return bool(getattr(layer.weight.quant_state, "packing_format_for_cpu", False))


def test_stop_cpu_4bit_repacking_keeps_a_layer_off_the_cpu_kernel():
    bnb = pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import has_avx512bf16

    from hf_distill._compat import stop_cpu_4bit_repacking

    layer = _4bit_layer(bnb)
    assert layer.support_avx512bf16_for_cpu == bool(has_avx512bf16())  # what bitsandbytes decides by
    assert stop_cpu_4bit_repacking(torch.nn.Sequential(layer)) == 1
    with torch.no_grad():
        layer.eval()(torch.randn(2, 64))
    assert not _packed(layer)


def test_unpack_cpu_4bit_weights_restores_what_the_cpu_kernel_packed():
    bnb = pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import dequantize_4bit, has_avx512bf16

    from hf_distill._compat import unpack_cpu_4bit_weights

    if torch.cuda.is_available() or not has_avx512bf16():
        pytest.skip("bitsandbytes packs 4-bit weights on AVX512-BF16 CPUs only")
    layer = _4bit_layer(bnb)
    before = dequantize_4bit(layer.weight.data, layer.weight.quant_state)
    with torch.no_grad():
        layer.eval()(torch.randn(2, 64))
    assert _packed(layer)
    unpack_cpu_4bit_weights(torch.nn.Sequential(layer))
    assert not _packed(layer)
    # the same 4-bit codes; the block scales come back through the packing's bfloat16 (about 3 significant digits)
    torch.testing.assert_close(dequantize_4bit(layer.weight.data, layer.weight.quant_state), before, rtol=0.01,
                               atol=0.02)


# --- private methods our subclasses override (see the list in hf_distill._compat) -----------------------------------


def test_sft_trainer_prepare_dataset_has_the_signature_we_override():
    from trl import SFTTrainer

    assert _parameters(SFTTrainer._prepare_dataset) == [
        "dataset", "processing_class", "args", "packing", "formatting_func", "dataset_name"]


def test_trainer_save_checkpoint_has_the_signature_we_override():
    from transformers import Trainer

    assert _parameters(Trainer._save_checkpoint) == ["model", "trial"]


def test_trainer_save_optimizer_and_scheduler_has_the_signature_we_override():
    from transformers import Trainer

    assert _parameters(Trainer._save_optimizer_and_scheduler) == ["output_dir"]


def test_trainer_get_train_sampler_has_the_signature_we_override():
    from transformers import Trainer

    assert _parameters(Trainer._get_train_sampler) == ["train_dataset"]


def test_sft_trainer_tags_the_model_with_its_tag_names(sft):
    from trl import SFTTrainer

    assert SFTTrainer._tag_names == ["trl", "sft"]
    assert set(SFTTrainer._tag_names) <= set(sft.model.model_tags)


def test_mark_model_sharded_sets_the_flag_trainer_reads_to_skip_wrapping(sft):
    from transformers import Trainer

    from hf_distill._compat import mark_model_sharded

    assert sft.is_distributed_loading_by_transformers is False  # read from the model in __init__
    for method in (Trainer._prepare_for_training, Trainer._run_epoch):  # no DDP wrapper / its own no_sync
        assert "self.is_distributed_loading_by_transformers" in inspect.getsource(method)
    mark_model_sharded(sft)
    try:
        assert sft.is_distributed_loading_by_transformers is True
    finally:
        sft.is_distributed_loading_by_transformers = False  # the module-scoped trainer is shared


def test_trainer_save_and_checkpoint_loading_have_the_signatures_we_override():
    from transformers import Trainer

    assert _parameters(Trainer._save) == ["output_dir", "state_dict"]
    assert _parameters(Trainer._load_from_checkpoint) == ["resume_from_checkpoint", "model"]
    assert _parameters(Trainer._load_optimizer_and_scheduler) == ["checkpoint"]
