"""GGUF export through llama.cpp's converter: the file holds the tokenizer and chat template, reloads with
transformers' `gguf_file=` loader and answers like the float student (exactly for f16, within quantisation error for
q8_0); k-quants come from llama.cpp's own quantiser; bad input fails early, naming the fix."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
import torch
from conftest import needs_converter, needs_llama_cpp
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_distill.deploy.converter import pre_tokenizer_from_structure
from hf_distill.deploy.gguf_export import check_quant, default_gguf_path, export_gguf
from hf_distill.deploy.roundtrip import (
    LlamaCppRunner,
    agreement,
    gguf_agreement,
    greedy_from_ids,
    prompt_ids,
)
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
    assert result.exact == 0.5 and result.token == pytest.approx(4 / 6) and result.forced is None


def test_forced_agreement_counts_every_position_of_the_reference_path():
    # the free-running continuation diverged at its 2nd token, but teacher-forced it differs at one position only
    result = agreement([[1, 2, 3, 4]], [[1, 9, 9, 9]], forced=[[1, 9, 3, 4]], engine="llama.cpp")
    assert result.token == pytest.approx(1 / 4) and result.forced == pytest.approx(3 / 4)
    assert result.engine == "llama.cpp"
    with pytest.raises(ValueError):
        agreement([[1, 2]], [[1, 2]], forced=[[1]])  # one choice per reference token, or the count is wrong


@needs_converter
@needs_llama_cpp
def test_llama_cpp_runs_the_f16_file_with_the_float_students_logits(student_dir, f16_file, chat_prompts):
    """The llama.cpp engine of the round trip: the file's own tokenizer gives the student's ids, and llama.cpp's
    logits are the float student's up to float16 rounding (a Q/K permutation or tying mistake would be far off)."""
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    runner = LlamaCppRunner(f16_file, n_ctx=256, n_threads=1)
    try:
        for prompt in chat_prompts:
            ids = prompt_ids(tokenizer, prompt)
            assert runner.tokenize(prompt) == ids
            with torch.no_grad():
                expected = model(torch.tensor([ids])).logits[0].numpy()
            assert abs(runner.logits(ids) - expected).max() < 0.05 * expected.std()
    finally:
        runner.close()


@needs_converter
@needs_llama_cpp
def test_llama_cpp_agreement_of_q8_0_is_measured_by_the_engine_users_run(student_dir, chat_prompts, tmp_path):
    q8 = export_gguf(student_dir, tmp_path / "student.q8_0.gguf", "q8_0")
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    result = gguf_agreement(model, tokenizer, q8, chat_prompts, max_new_tokens=12, engine="llama.cpp", n_threads=1)
    assert result.engine == "llama.cpp" and result.prompts == len(chat_prompts)
    # the wide-init model has a few near-ties that q8_0's rounding may flip; a broken file would agree by chance only
    assert result.forced >= 0.85 and 0 <= result.token <= 1
    with pytest.raises(ValueError, match="engine"):
        gguf_agreement(model, tokenizer, q8, chat_prompts, engine="vllm")


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
    engines = ["transformers"] + (["llama.cpp"] if importlib.util.find_spec("llama_cpp") else [])
    for engine in engines:
        assert re.search(rf"on 2 prompts \({engine}\): \d+% identical answers, \d+% of tokens .*, \d+% of tokens "
                         "the same when fed", out)
    deployment = json.loads((folder / "deployment.json").read_text())
    assert deployment["exports"]["f16"] == {"file": "s1.f16.gguf", "bytes": (folder / "s1.f16.gguf").stat().st_size}
    assert "| GGUF f16 (`s1.f16.gguf`) |" in (folder / "README.md").read_text()


@needs_converter
@needs_llama_cpp
def test_banned_tokens_are_never_chosen_by_either_engine(student_dir, f16_file, chat_prompts):
    """What the benchmark uses to compare a pruned student that would end its turn at once over whole answers."""
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    ids = prompt_ids(tokenizer, chat_prompts[0])
    free = greedy_from_ids(model, ids, 6)
    banned = {free[0], free[1], tokenizer.eos_token_id}  # the stop token too: every answer is 6 tokens long
    runner = LlamaCppRunner(f16_file, n_ctx=256, n_threads=1)
    try:
        for answer in (greedy_from_ids(model, ids, 6, banned=banned), runner.greedy(ids, 6, set(), banned)):
            assert len(answer) == 6 and not banned & set(answer)
        forced = runner.forced_top1(ids, free, banned)
        assert len(forced) == len(free) and not banned & set(forced)
    finally:
        runner.close()
