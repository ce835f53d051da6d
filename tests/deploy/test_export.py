"""GGUF export through llama.cpp's converter: the file holds the tokenizer and chat template, reloads with
transformers' `gguf_file=` loader and answers like the float student (exactly for f16, within quantisation error for
q8_0); k-quants come from llama.cpp's own quantiser; bad input fails early, naming the fix."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import needs_converter, needs_llama_cpp
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_distill.deploy.converter import pre_tokenizer_from_structure
from hf_distill.deploy.gguf_export import check_quant, default_gguf_path, export_gguf
from hf_distill.deploy.roundtrip import agreement, gguf_agreement
from hf_distill.models.gguf import load_gguf_model


def gguf_fields(path) -> dict:
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {name: field.contents() for name, field in reader.fields.items()
            if name.startswith(("tokenizer.ggml.pre", "tokenizer.chat_template", "tokenizer.ggml.model",
                                "general.architecture", "tokenizer.ggml.eos_token_id"))}


@pytest.fixture(scope="module")
def f16_file(student_dir, tmp_path_factory):
    return export_gguf(student_dir, tmp_path_factory.mktemp("gguf") / "student.f16.gguf", "f16")


@needs_converter
def test_f16_export_holds_tokenizer_and_chat_template_and_answers_identically(student_dir, f16_file, chat_prompts):
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    fields = gguf_fields(f16_file)
    assert fields["general.architecture"] == "llama" and fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.chat_template"] == tokenizer.chat_template
    assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    # the demo tokenizer (digits split, then byte-level BPE) is not in llama.cpp's list of hashes: named by structure
    assert fields["tokenizer.ggml.pre"] == "smollm"
    model = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    result = gguf_agreement(model, tokenizer, f16_file, chat_prompts, max_new_tokens=12)
    assert result.exact == 1.0 and result.token == 1.0


@needs_converter
def test_q8_0_is_smaller_and_close_to_the_float_student(student_dir, f16_file, chat_prompts, tmp_path):
    q8 = export_gguf(student_dir, tmp_path / "student.q8_0.gguf", "q8_0")
    assert q8.stat().st_size < 0.75 * f16_file.stat().st_size
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    reloaded = load_gguf_model(str(q8.parent), q8.name)
    ids = tokenizer(chat_prompts[0], return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        float_logits, q8_logits = model(ids).logits, reloaded(ids).logits
    # int8 blocks of 32 with one scale each: an error of a few percent of the logits' spread, not a different model
    assert (float_logits - q8_logits).abs().max() < 0.2 * float_logits.std()
    top3 = [logits[0, -1].topk(3).indices.sort().values for logits in (float_logits, q8_logits)]
    assert torch.equal(*top3)


@needs_converter
@needs_llama_cpp
def test_q4_k_m_is_requantised_by_llama_cpp_and_tokenises_like_the_student(student_dir, f16_file, tmp_path):
    import llama_cpp

    q4 = export_gguf(student_dir, tmp_path / "student.q4_k_m.gguf", "q4_k_m")
    assert q4.stat().st_size < f16_file.stat().st_size
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    llm = llama_cpp.Llama(str(q4), vocab_only=True, verbose=False)
    for text in ("Ann has 123 apples, so 4+5=9.", "  two  spaces\nand a line"):
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == tokenizer(
            text, add_special_tokens=False).input_ids


def test_agreement_counts_tokens_up_to_the_first_difference():
    result = agreement([[1, 2, 3, 4], [5, 6]], [[1, 2, 9, 4], [5, 6]])
    assert result.exact == 0.5 and result.token == pytest.approx(4 / 6)


def test_pre_tokenizer_is_named_only_for_structures_llama_cpp_reproduces(student_dir, tokenizer, tmp_path):
    demo = json.loads((student_dir / "tokenizer.json").read_text())
    assert pre_tokenizer_from_structure(demo) == "smollm"
    tokenizer.save_pretrained(tmp_path)  # the tests' tokenizer: byte-level BPE alone
    plain = json.loads((tmp_path / "tokenizer.json").read_text())
    assert pre_tokenizer_from_structure(plain) == "gpt-2"
    assert pre_tokenizer_from_structure({**plain, "normalizer": {"type": "NFC"}}) is None
    plain["pre_tokenizer"]["add_prefix_space"] = True
    assert pre_tokenizer_from_structure(plain) is None


def test_bad_requests_fail_early_naming_the_fix(student_dir, tmp_path):
    with pytest.raises(ValueError, match="q4_k_m"):
        check_quant("q3_xl")
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        export_gguf(tmp_path / "nowhere", tmp_path / "x.gguf")
    (tmp_path / "weights_only").mkdir()
    (tmp_path / "weights_only" / "config.json").write_text("{}")
    (tmp_path / "weights_only" / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="tokenizer.save_pretrained"):
        export_gguf(tmp_path / "weights_only", tmp_path / "x.gguf")


def test_default_file_is_named_after_the_stage(tmp_path):
    assert default_gguf_path(tmp_path / "stages" / "s2" / "model", "Q8_0").name == "s2.q8_0.gguf"
    assert default_gguf_path(tmp_path / "my-student", "f16") == tmp_path / "my-student" / "my-student.f16.gguf"


@needs_converter
def test_export_cli_writes_into_the_folder_notes_the_size_and_checks_agreement(student_dir, tmp_path, capsys):
    import shutil

    from hf_distill.cli.main import main

    folder = tmp_path / "s1"
    shutil.copytree(student_dir, folder)
    (folder / "README.md").write_text("# s1\n\n## Use\n\nx\n")
    assert main(["export", str(folder), "--quant", "f16", "--check", "2"]) == 0
    out = capsys.readouterr().out
    assert f"Wrote {folder / 's1.f16.gguf'}" in out
    # a random model's greedy path meets near-ties on long prompts, so the share itself is not asserted here
    assert re.search(r"on 2 prompts: \d+% identical answers, \d+% of tokens", out)
    deployment = json.loads((folder / "deployment.json").read_text())
    assert deployment["exports"]["f16"] == {"file": "s1.f16.gguf", "bytes": (folder / "s1.f16.gguf").stat().st_size}
    assert "| GGUF f16 (`s1.f16.gguf`) |" in (folder / "README.md").read_text()
