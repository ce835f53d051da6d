"""Against a real engine: llama-cpp-python's OpenAI-compatible server running the real SmolLM2-135M-Instruct GGUF,
started on a free loopback port for this module and stopped after. Traces (chat, n ignored by the engine), the
logit cache (echo + logprobs, strings mapped back to ids) and two steps of online KD.

llama-cpp-python must be built without AVX-512/AMX on these machines (see .ci/run):
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
pip install "llama-cpp-python[server]"
"""

import importlib.util
import json

import numpy as np
import pytest
from datasets import Dataset
from helpers import tiny_config

from hf_distill import DistillationTrainer
from hf_distill.cache.reader import TeacherCache
from hf_distill.cache.writer import collect_teacher_cache
from hf_distill.deploy.server import serving
from hf_distill.models.gguf import load_tokenizer
from hf_distill.served.llama_cpp import AmbiguousTokenError
from hf_distill.served.teacher import ServedTeacher
from hf_distill.traces import TraceConfig, collect_traces

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                       reason='llama-cpp-python is not installed (pip install "llama-cpp-python[server]" with the '
                       "CMAKE_ARGS of .ci/run)"),
]

TEXTS = ["The capital of France is Paris.", "Two plus three is five.", "Cats like to sleep."]


@pytest.fixture(scope="module")
def llama_server(smollm2_gguf, tmp_path_factory):
    # hf-distill serve's own launcher, with the flag a teacher scored on prompt log-probabilities needs
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    try:
        with serving(smollm2_gguf, n_ctx=512, n_threads=2, log_path=log_path, extra=["--logits_all", "true"]) as server:
            yield server.url
    except (RuntimeError, TimeoutError) as error:
        pytest.fail(f"{error}: {log_path.read_text()[-2000:] if log_path.exists() else ''}")


@pytest.fixture(scope="module")
def smol_tokenizer(smollm2_dir):
    return load_tokenizer(smollm2_dir)


def test_traces_from_the_real_server_fall_back_to_one_request_per_sample(tmp_path, llama_server):
    problems = Dataset.from_list([{"question": "What is 2 + 3?", "answer": "2+3 = 5\n#### 5"}])
    config = TraceConfig(teacher_url=llama_server, num_samples=2, temperature=0.7, max_new_tokens=8, shard_size=1,
                         teacher_concurrency=2, keep_only_verified=False, dedupe=False)
    traces = collect_traces(None, None, problems, tmp_path, config)
    assert len(traces) == 2 and all(c[0]["content"].strip() for c in traces["completion"])
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["usage"]["requests"] == 2  # the engine ignores n: the second sample is its own request
    assert 0 < manifest["usage"]["completion_tokens"] <= 2 * 8 and manifest["usage"]["prompt_tokens"] > 0


def test_logit_cache_from_the_real_server_matches_the_in_process_teacher(tmp_path, llama_server, smol_tokenizer,
                                                                         smollm2_dir):
    data = Dataset.from_dict({"text": TEXTS})
    args = tiny_config(tmp_path, teacher_url=llama_server, teacher_ambiguous_tokens="tail", max_length=32)
    served = ServedTeacher.from_args(args, smol_tokenizer, top_k=4)
    assert served.engine == "llama_cpp"
    manifest = collect_teacher_cache(served, data, tmp_path / "served", smol_tokenizer, args=args, top_k=4)
    assert manifest["teacher"]["served"]["engine_version"].startswith("llama-cpp-python ")
    collect_teacher_cache(smollm2_dir, data, tmp_path / "local", smol_tokenizer, args=args, top_k=4)
    served_cache, local = TeacherCache(tmp_path / "served"), TeacherCache(tmp_path / "local")
    served_cache.check(tokenizer=smol_tokenizer, temperature=1.0)
    a, b = served_cache.read(local._keys), local.read(local._keys)
    assert (a[3] == b[3]).all()  # the same loss tokens, row 0 included (asked with a second request)
    # a Q4_1 GGUF on llama.cpp vs its dequantised weights in torch: the same most likely token almost everywhere
    # A Q4_1 GGUF on llama.cpp vs its dequantised weights in torch: the same most likely token wherever the server
    # can name it. Where it cannot (' ' is also a partial-UTF-8 token, <|im_end|> reads ''), that mass is in the tail.
    nameable = np.array([len(served._strings.lookup(served._strings.strings[i])) == 1 for i in b[0][:, 0]])
    assert nameable.mean() > 0.5 and (a[0][nameable, 0] == b[0][nameable, 0]).mean() > 0.9
    assert np.abs(a[1][nameable, 0].astype(float) - b[1][nameable, 0].astype(float)).mean() < 0.15
    assert (a[2][~nameable] > b[2][~nameable]).all()  # the unnameable top token's mass went to the rest bucket


def test_chat_data_with_special_tokens_in_the_top_k_is_refused_by_default(tmp_path, llama_server, smol_tokenizer):
    data = Dataset.from_dict({"messages": [[{"role": "user", "content": "Hi"},
                                            {"role": "assistant", "content": "Hello."}]]})
    args = tiny_config(tmp_path, teacher_url=llama_server, max_length=64)
    served = ServedTeacher.from_args(args, smol_tokenizer, top_k=4)
    with pytest.raises(AmbiguousTokenError, match="teacher_ambiguous_tokens='tail'"):  # <|im_end|> reads ''
        collect_teacher_cache(served, data, tmp_path / "c", smol_tokenizer, args=args, top_k=4)


def test_online_kd_from_the_real_server_trains_two_steps(tmp_path, llama_server, smol_tokenizer):
    from hf_distill.models.build import random_llama

    student = random_llama(0, vocab_size=len(smol_tokenizer), hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                           tie_word_embeddings=True)
    args = tiny_config(tmp_path, teacher_url=llama_server, teacher_top_k=4, teacher_ambiguous_tokens="tail",
                       per_device_train_batch_size=1, max_steps=2, max_length=16)
    trainer = DistillationTrainer(student, args, train_dataset=Dataset.from_dict({"text": TEXTS[:2]}),
                                  processing_class=smol_tokenizer)
    result = trainer.train()
    assert trainer.state.global_step == 2 and np.isfinite(result.training_loss)
