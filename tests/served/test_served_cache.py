"""The logit cache from a served teacher: vLLM's request/reply contract (a loopback server in vLLM's documented shapes,
computing real log-probabilities with a tiny Llama), checked ids, the same cache as in-process collection, the
per-engine parsing of llama-cpp-python's token strings, and online KD from a server."""

import json

import numpy as np
import pytest
import torch
from fake_server import FakeServer, models_reply, vllm_handler
from helpers import make_llama, tiny_config

from hf_distill import DistillationTrainer
from hf_distill.cache.reader import TeacherCache
from hf_distill.cache.writer import collect_teacher_cache
from hf_distill.cli.main import main as cli_main
from hf_distill.served import llama_cpp, vllm
from hf_distill.served.client import ServedClient, ServedTeacherError
from hf_distill.served.teacher import ServedTeacher, tail_logprob


@pytest.fixture
def teacher_model(tokenizer):
    return make_llama(len(tokenizer), hidden=32, layers=1, seed=3).eval()


@pytest.fixture
def vllm_server(teacher_model):
    server = FakeServer(vllm_handler("big-teacher", teacher_model))
    yield server
    server.close()


def served_args(tmp_path, url, **overrides):
    return tiny_config(tmp_path, teacher_url=url, teacher_top_k=8, **overrides)


def test_vllm_request_sends_ids_and_parses_documented_reply(tokenizer, vllm_server):
    client = ServedClient(vllm_server.url)
    ids = tokenizer("Ann has 3 apples")["input_ids"]
    top_ids, top_logprobs = vllm.prompt_top_k(client, "big-teacher", ids, 5)
    body = vllm_server.posts("/completions")[0]["body"]
    assert body["prompt"] == ids and body["prompt_logprobs"] == 5 and body["return_tokens_as_token_ids"] is True
    assert body["max_tokens"] == 1 and body["add_special_tokens"] is False
    assert top_ids.shape == (len(ids) - 1, 5) and (np.diff(top_logprobs, axis=1) <= 0).all()
    with pytest.raises(ServedTeacherError, match="--max-logprobs 32"):  # vLLM's default cap is 20
        vllm.prompt_top_k(client, "big-teacher", ids, 32)


def test_vllm_replies_for_other_tokens_are_refused(tokenizer):
    ids = [5, 6, 7]
    row = {"5": {"logprob": -0.1, "rank": 1}, "9": {"logprob": -2.5, "rank": 2}}
    reply = {"choices": [{"prompt_token_ids": [5, 6, 8], "prompt_logprobs": [None, row, row]}]}
    with pytest.raises(vllm.TokenMismatchError, match="position 2"):
        vllm.parse(reply, ids, 2)
    shifted = {"choices": [{"prompt_logprobs": [None, row, row]}]}  # token 6 missing from its own row: shifted rows
    with pytest.raises(vllm.TokenMismatchError, match="Position 1"):
        vllm.parse(shifted, ids, 2)


def test_served_cache_equals_the_in_process_cache_and_passes_the_same_check(tmp_path, tokenizer, text_dataset,
                                                                             teacher_model, vllm_server):
    data = text_dataset.select(range(12))
    args = served_args(tmp_path, vllm_server.url)
    served = ServedTeacher.from_args(args, tokenizer, top_k=8)
    assert served.engine == "vllm"  # from /v1/models' owned_by
    manifest = collect_teacher_cache(served, data, tmp_path / "served", tokenizer, args=args, top_k=8,
                                     batch_size=4, shard_size=5)
    local = collect_teacher_cache(teacher_model, data, tmp_path / "local", tokenizer, args=args, top_k=8,
                                  batch_size=4, shard_size=5, logprob_dtype="float16")
    assert manifest["teacher"]["served"] == {"engine": "vllm", "engine_version": "0.11.0"}
    assert manifest["teacher"]["name_or_path"] == "big-teacher"
    assert {k: v for k, v in manifest.items() if k not in ("teacher", "created_with", "shards")} == \
        {k: v for k, v in local.items() if k not in ("teacher", "created_with", "shards")}
    served_cache, local_cache = TeacherCache(tmp_path / "served"), TeacherCache(tmp_path / "local")
    served_cache.check(tokenizer=tokenizer, temperature=1.0, datasets={"train_dataset": _prepared(args, data,
                       tokenizer)})
    a, b = served_cache.read(local_cache._keys), local_cache.read(local_cache._keys)
    assert (a[3] == b[3]).all() and a[0].shape == b[0].shape
    assert (a[0][:, 0] == b[0][:, 0]).mean() > 0.97  # the same top tokens (float16 ties may swap)
    np.testing.assert_allclose(np.sort(a[1].astype(np.float32), 1), np.sort(b[1].astype(np.float32), 1), atol=2e-2)
    np.testing.assert_allclose(a[2], b[2], atol=2e-2)  # the rest bucket: 1 - sum(top-k), as computed in-process


def _prepared(args, data, tokenizer):
    from hf_distill.cache.writer import prepare_like_trainer

    return prepare_like_trainer(make_llama(len(tokenizer)), args, data, tokenizer)[0]


def test_served_cache_refuses_a_temperature_it_cannot_give(tmp_path, tokenizer, text_dataset, vllm_server):
    args = served_args(tmp_path, vllm_server.url, temperature=2.0)
    served = ServedTeacher.from_args(args, tokenizer, top_k=8)
    with pytest.raises(ValueError, match="temperature 1"):
        collect_teacher_cache(served, text_dataset.select(range(4)), tmp_path / "c", tokenizer, args=args, top_k=8)


def test_cache_logits_cli_with_teacher_url(tmp_path, tokenizer, vllm_server):
    tokenizer.save_pretrained(tmp_path / "tok")
    code = cli_main(["cache-logits", "--teacher_url", vllm_server.url, "--tokenizer_name_or_path",
                     str(tmp_path / "tok"), "--dataset_name", "arithmetic", "--num_examples", "6", "--output_dir",
                     str(tmp_path / "cache"), "--top_k", "4", "--max_length", "64", "--report_to", "none"])
    assert code == 0
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["complete"] and manifest["top_k"] == 4 and manifest["teacher"]["served"]["engine"] == "vllm"


# -- llama-cpp-python's strings ------------------------------------------------------------------------------------

def test_llama_cpp_strings_map_back_to_ids_and_ambiguous_ones_are_refused_or_left_to_the_tail(tokenizer):
    strings = llama_cpp.TokenStrings(tokenizer)
    ids = tokenizer("Ann has 3 apples")["input_ids"]
    assert [strings.lookup(strings.strings[i]) for i in ids] == [[i] for i in ids]
    assert len(strings.lookup("")) >= 3  # <pad>, <eos>, <unk> all render as ''
    echo = [strings.strings[i] for i in ids]
    top = {strings.strings[ids[2]]: -0.2, "": -1.0, strings.strings[ids[3]]: -2.0}
    reply = {"choices": [{"logprobs": {"tokens": echo, "top_logprobs": [None] + [top] * (len(ids) - 1)}}],
             "usage": {"prompt_tokens": len(ids)}}
    with pytest.raises(llama_cpp.AmbiguousTokenError, match="teacher_ambiguous_tokens='tail'"):
        llama_cpp.parse(reply, ids, 2, strings, bos=None)
    top_ids, top_logprobs, known = llama_cpp.parse(reply, ids, 2, strings, bos=None, ambiguous="tail")
    assert (top_ids[1:] == [ids[2], ids[3]]).all() and not known[0] and known[1:].all()
    # without a leading BOS, entry j holds the distribution after token j (llama-cpp-python 0.3's echo)
    assert tail_logprob(top_logprobs[1:2])[0] == pytest.approx(np.log(1 - np.exp(-0.2) - np.exp(-2.0)), abs=1e-5)
    bad = {**reply, "choices": [{"logprobs": {"tokens": echo[:1] + ["zz"] + echo[2:], "top_logprobs":
                                              reply["choices"][0]["logprobs"]["top_logprobs"]}}]}
    with pytest.raises(vllm.TokenMismatchError, match="round-trip"):
        llama_cpp.parse(bad, ids, 2, strings, bos=None)


# -- online KD from a server ---------------------------------------------------------------------------------------

def test_online_kd_from_a_served_teacher_trains_on_its_sparse_signal(tmp_path, tokenizer, text_dataset,
                                                                     vllm_server):
    args = served_args(tmp_path, vllm_server.url, max_steps=2, alpha=0.0)
    trainer = DistillationTrainer(make_llama(len(tokenizer), seed=1), args, train_dataset=text_dataset,
                                  processing_class=tokenizer)
    assert isinstance(trainer.teacher, ServedTeacher) and trainer.teacher.engine == "vllm"
    assert trainer.loss_spec == args.loss_spec(len(tokenizer), sparse=True)
    before = len(vllm_server.posts("/completions"))
    result = trainer.train()
    assert np.isfinite(result.training_loss) and result.training_loss > 0
    sent = vllm_server.posts("/completions")[before:]
    # every trained row was scored once (prefetched at collation), none twice
    assert len(sent) == len({tuple(p["body"]["prompt"]) for p in sent}) >= 2 * 4 - 1
    with pytest.raises(ValueError, match="temperature=1.0"):
        DistillationTrainer(make_llama(len(tokenizer), seed=1), served_args(tmp_path, vllm_server.url,
                            temperature=2.0), train_dataset=text_dataset, processing_class=tokenizer)


def test_engine_is_detected_or_must_be_named(tokenizer):
    server = FakeServer(lambda method, path, body: (200, models_reply("m", "someone")))
    try:
        with pytest.raises(ValueError, match="set teacher_engine"):
            ServedTeacher.from_args(tiny_config_like(server.url), tokenizer)
    finally:
        server.close()


def tiny_config_like(url):
    from hf_distill import DistillationConfig

    return DistillationConfig(output_dir="unused", report_to=[], teacher_url=url)


def test_loss_matches_the_cached_signal(tmp_path, tokenizer, text_dataset, teacher_model, vllm_server):
    """The served signal of a batch is the signal the cache collected from the same server yields."""
    data = text_dataset.select(range(4))
    args = served_args(tmp_path, vllm_server.url)
    served = ServedTeacher.from_args(args, tokenizer, top_k=8)
    collect_teacher_cache(served, data, tmp_path / "c", tokenizer, args=args, top_k=8, logprob_dtype="float32")
    from hf_distill.cache.reader import CachedTeacher
    from hf_distill.cache.writer import prepare_like_trainer

    prepared, collator = prepare_like_trainer(make_llama(len(tokenizer)), args, data, tokenizer)
    batch = collator([prepared[i] for i in range(4)])
    mask = batch["labels"][:, 1:] != -100
    online = served.signal(batch, mask, len(tokenizer), torch.device("cpu"))
    cached = CachedTeacher(TeacherCache(tmp_path / "c")).signal(batch, mask, len(tokenizer), torch.device("cpu"))
    assert torch.equal(online.token_ids.long(), cached.token_ids.long())
    torch.testing.assert_close(online.logprobs, cached.logprobs.float())
    torch.testing.assert_close(online.tail_logprob, cached.tail_logprob)
