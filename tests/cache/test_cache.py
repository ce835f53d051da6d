"""Teacher-logit cache: sparse loss math, collection (round trip, resume, corruption), trainer checks, CLI."""

from __future__ import annotations

import doctest
import json
import math
import os

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from helpers import (
    CORPUS,
    GradCapture,
    interrupt_on_call,
    make_llama,
    make_tokenizer,
    prompt_completion,
    tiny_config,
)

import hf_distill.cache.format as cache_module
import hf_distill.cache.reader as reader_module
import hf_distill.cache.writer as collect_module
from hf_distill import DistillationTrainer
from hf_distill.cache.convert import convert_cache
from hf_distill.cache.format import CacheMismatchError, TeacherCacheError, example_key
from hf_distill.cache.reader import TeacherCache
from hf_distill.cache.writer import collect_teacher_cache, top_k_with_tail
from hf_distill.cli.main import main
from hf_distill.losses import (
    DIVERGENCES,
    LossSpec,
    fused_distillation_loss,
    get_divergence,
)
from hf_distill.losses.sparse import sparse_chunk_terms
from hf_distill.losses.targets import DenseTeacherSignal, SparseTeacherSignal

# ------------------------------------------------------------------------------------------------------------------
# The sparse loss
# ------------------------------------------------------------------------------------------------------------------


def _sparse(teacher_logits: torch.Tensor, k: int, temperature: float) -> SparseTeacherSignal:
    ids, logprobs, tail = top_k_with_tail(teacher_logits.clone(), k, temperature)
    return SparseTeacherSignal(ids.int(), logprobs, tail, teacher_logits.shape[1], temperature)


def _loss_and_grads(teacher, hidden, weight, targets, spec):
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    loss = fused_distillation_loss(hidden, weight, None, teacher, targets, spec).loss
    return (loss, *torch.autograd.grad(loss, [hidden, weight]))


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_sparse_loss_at_full_k_equals_the_dense_loss_and_gradients(name):
    torch.manual_seed(0)
    n, h, v, temperature = 47, 16, 123, 2.0
    hidden, weight = torch.randn(n, h), torch.randn(v, h) / 4
    teacher_logits, targets = torch.randn(n, v) * 3, torch.randint(0, v, (n,))
    spec = LossSpec(name, temperature=temperature, alpha=0.3, beta=0.3, chunk_size=5)
    dense = _loss_and_grads(DenseTeacherSignal(teacher_logits, v), hidden, weight, targets, spec)
    sparse = _loss_and_grads(_sparse(teacher_logits, v, temperature), hidden, weight, targets, spec)
    for got, want in zip(sparse, dense):
        assert torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
@pytest.mark.parametrize("temperature, padding", [(1.0, 0), (2.0, 0), (1.0, 5)])
def test_fused_sparse_terms_match_the_align_reference(name, temperature, padding):
    # 3 x 41 = 123 loss tokens, V = 97 (+ padding rows in the student), k = 7; row 0's rest mass underflows.
    torch.manual_seed(3)
    v, k, alpha = 97, 7, 0.3
    teacher_logits, targets = torch.randn(123, v) * 3, torch.randint(0, v, (123,))
    signal = _sparse(teacher_logits, k, temperature)
    logits = torch.randn(123, v + padding) * 2
    logits[0, signal.token_ids[0].long()] = 300.0 + torch.arange(k)  # no ties: argmax is well defined
    spec = LossSpec(name, temperature=temperature, alpha=alpha, beta=0.3)
    assert signal.align(logits[:1], slice(0, 1), temperature)[0][0, -1] < math.log(1e-30)  # the exact fallback

    def reference(z):
        student_logp, teacher_logp, top1 = signal.align(z, slice(None), temperature)
        kd = get_divergence(name)(student_logp, teacher_logp, 0.3).sum() * temperature**2
        ce = F.cross_entropy(z, targets, reduction="sum")
        return kd, ce, (z[:, :v].argmax(-1) == top1).sum()

    results = []
    for terms in (reference, lambda z: sparse_chunk_terms(z, signal, slice(None), targets, spec)):
        z = logits.clone().requires_grad_()
        kd, ce, agree = terms(z)
        results.append((kd, ce, agree, torch.autograd.grad(alpha * ce + (1 - alpha) * kd, z)[0]))
    (kd, ce, agree, grad), (want_kd, want_ce, want_agree, want_grad) = results[1], results[0]
    assert torch.isfinite(want_grad).all() and agree == want_agree
    torch.testing.assert_close(kd, want_kd, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ce, want_ce, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
def test_sparse_loss_is_a_lower_bound_whose_error_shrinks_as_k_grows(name):
    torch.manual_seed(1)
    v = 97
    student, teacher = torch.randn(64, v) * 2, torch.randn(64, v) * 3
    dense_s, dense_t, _ = DenseTeacherSignal(teacher, v).align(student, slice(None), 1.5)
    dense = get_divergence(name)(dense_s, dense_t, 0.3).sum()
    errors = []
    for k in (1, 4, 16, 48, v):
        s, t, _ = _sparse(teacher, k, 1.5).align(student, slice(None), 1.5)
        assert s.shape[1] == (k + 1 if k < v else v)
        errors.append((dense - get_divergence(name)(s, t, 0.3).sum()).item())
    assert all(error > -1e-4 for error in errors), errors  # never above the dense divergence
    assert all(a > b for a, b in zip(errors[:-2], errors[1:-1])), errors  # strictly better with each larger k
    assert abs(errors[-1]) < 1e-4 * dense.item(), errors  # exact at k = V


def test_sparse_forward_kl_golden_value():
    # p = (0.5, 0.3, 0.2), k = 1: the teacher's buckets are (0.5, 0.5); q = (0.25, 0.25, 0.5) gives (0.25, 0.75).
    signal = SparseTeacherSignal(torch.tensor([[0]]), torch.tensor([[math.log(0.5)]]), torch.tensor([math.log(0.5)]), 3)
    student, teacher, top1 = signal.align(torch.tensor([[0.25, 0.25, 0.5]]).log(), slice(None), 1.0)
    golden = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert get_divergence("forward_kl")(student, teacher).item() == pytest.approx(golden, rel=1e-6)
    assert top1.tolist() == [0]


@pytest.mark.parametrize("name", sorted(DIVERGENCES))
@pytest.mark.parametrize("k", [4, 11])
def test_zero_mass_tail_gives_finite_loss_and_gradients(name, k):
    # k = V (empty tail, stored as -inf) and a teacher whose tail underflows to zero mass (-inf), in float16.
    torch.manual_seed(2)
    logits = torch.randn(6, 11, requires_grad=True)
    ids = torch.stack([torch.randperm(11)[:k] for _ in range(6)])
    logprobs = torch.randn(6, k).log_softmax(-1).half()
    signal = SparseTeacherSignal(ids, logprobs, torch.full((6,), float("-inf")), 11)
    student, teacher, _ = signal.align(logits, slice(None), 1.0)
    loss = get_divergence(name)(student, teacher, 0.3).sum()
    (grad,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def test_sparse_signal_refuses_another_temperature():
    signal = _sparse(torch.randn(3, 10), 4, 1.0)
    with pytest.raises(ValueError, match="--temperature 2.0"):
        signal.align(torch.randn(3, 10), slice(None), 2.0)


@pytest.mark.parametrize("vocab", [1000, 32077])
def test_blocked_top_k_and_tail_match_a_float64_reference(vocab):
    torch.manual_seed(4)
    logits = torch.randn(9, vocab) * 4
    logits[1, :50] = 7.0  # ties straddling the k-th place
    logits[2, :3] = 500.0 + torch.arange(3.0)  # a tail of mass ~e^-500: below float32's range
    values, ids = collect_module._top_k(logits, 32)
    want_values, _ = logits.topk(32)
    assert torch.equal(values, want_values) and torch.equal(logits.gather(1, ids), values)
    ids, logprobs, tail = top_k_with_tail(logits.clone(), 32, 1.5)
    reference = (logits.double() / 1.5).log_softmax(-1)
    torch.testing.assert_close(logprobs.double(), reference.gather(1, ids.long()), rtol=1e-6, atol=1e-5)
    rest = reference.scatter(1, ids.long(), float("-inf")).logsumexp(-1)
    assert -1000 < tail[2] < -300  # computed exactly, not underflowed to -inf
    torch.testing.assert_close(tail.double(), rest, rtol=1e-5, atol=1e-5)


def test_keyed_collator_doctest():
    assert doctest.testmod(cache_module).failed == 0


# ------------------------------------------------------------------------------------------------------------------
# Collection and reading
# ------------------------------------------------------------------------------------------------------------------






def _collect(tmp_path, tokenizer, teacher, name="cache", dataset=None, **kwargs):
    kwargs = {"top_k": 6, "shard_size": 8, "batch_size": 3, **kwargs}
    dataset = prompt_completion(slice(0, 24)) if dataset is None else dataset
    collect_teacher_cache(teacher, dataset, tmp_path / name, tokenizer, args=tiny_config(tmp_path), log=lambda _: None,
                          **kwargs)
    return tmp_path / name


def test_collected_cache_matches_a_direct_teacher_forward(tmp_path, tokenizer, teacher):
    directory = _collect(tmp_path, tokenizer, teacher, temperature=2.0, logprob_dtype="float32")
    cache = TeacherCache(directory)
    manifest = json.loads((directory / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_shards"] == 3 and manifest["temperature"] == 2.0
    assert manifest["format_version"] == 2 and len(tokenizer) <= 512  # ids packed at 9 bits
    assert manifest["dtypes"] == {"token_ids": "uint9", "logprobs": "float32", "tail_logprob": "float32"}
    assert all(len(shard["sha256"]) == 64 for shard in manifest["shards"])
    trainer_view = DistillationTrainer(make_llama(len(tokenizer), 32, 1), tiny_config(tmp_path, temperature=2.0),
                                       train_dataset=prompt_completion(slice(0, 24)), processing_class=tokenizer,
                                       teacher_cache=cache)
    for index in (0, 7, 23):  # examples from all three shards
        example = trainer_view.train_dataset[index]
        ids, labels = torch.tensor([example["input_ids"]]), torch.tensor(example["labels"])
        with torch.no_grad():
            logits = teacher(input_ids=ids).logits[0, :-1][labels[1:] != -100]  # (n, V)
        logp = (logits / 2.0).log_softmax(-1)
        want_lp, want_ids = logp.topk(6)
        got_ids, got_lp, got_tail, counts = cache.read([example_key(example["input_ids"], example["labels"])])
        assert counts.tolist() == [len(logits)] and 0 < len(logits) < len(example["input_ids"]) - 1
        assert torch.equal(torch.from_numpy(got_ids).long(), want_ids)
        torch.testing.assert_close(torch.from_numpy(got_lp), want_lp, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(torch.from_numpy(got_tail).exp(), 1 - want_lp.exp().sum(-1), rtol=1e-4, atol=1e-6)


def test_cache_reads_are_memory_mapped_and_compact(tmp_path, tokenizer, teacher):
    directory = _collect(tmp_path, tokenizer, teacher, top_k=32)
    shard_bytes = sum(path.stat().st_size for path in directory.glob("shard-*.arrow"))
    before = pa.total_allocated_bytes()
    cache = TeacherCache(directory)
    assert pa.total_allocated_bytes() - before < 0.02 * shard_bytes  # nothing but the key index is loaded
    assert all(isinstance(shard, reader_module._BlockShard) for shard in cache._shards)
    tokens = sum(json.loads((directory / "manifest.json").read_text())["shards"][i]["num_tokens"] for i in range(3))
    format1 = convert_cache(directory, tmp_path / "format1", format_version=1)
    format1_bytes = sum(shard["bytes"] for shard in format1["shards"])
    assert shard_bytes < 0.75 * format1_bytes, (shard_bytes / tokens, format1_bytes / tokens)


def test_reading_no_examples_gives_empty_arrays(tmp_path, tokenizer, teacher):
    cache = TeacherCache(_collect(tmp_path, tokenizer, teacher, top_k=8))
    ids, logprobs, tail, counts = cache.read(np.array([], dtype=np.int64))
    assert ids.shape == logprobs.shape == (0, 8) and tail.shape == counts.shape == (0,)
    ids, logprobs, tail, counts = cache.read(np.sort(cache._keys)[:1])  # and one example still reads
    assert ids.shape[0] == logprobs.shape[0] == tail.shape[0] == counts[0] > 0


def _rows_of(cache):
    keys = np.sort(cache._keys)
    return keys, cache.read(keys)


@pytest.mark.parametrize("logprob_dtype", ["float16", "float32"])
def test_format1_caches_still_read_and_convert_to_format2_and_back(tmp_path, tokenizer, teacher, logprob_dtype):
    directory = _collect(tmp_path, tokenizer, teacher, logprob_dtype="float32")
    exact_keys, (ids, logprobs, tail, counts) = _rows_of(TeacherCache(directory))
    old = convert_cache(directory, tmp_path / "v1", format_version=1, logprob_dtype=logprob_dtype)
    assert old["format_version"] == 1 and old["dtypes"]["token_ids"] == "uint16"
    v1 = TeacherCache(tmp_path / "v1")  # checksums verified, as for format 2
    assert v1.format_version == 1 and isinstance(v1._shards[0], reader_module._Shard)
    keys, (v1_ids, v1_logprobs, v1_tail, v1_counts) = _rows_of(v1)
    assert np.array_equal(keys, exact_keys) and np.array_equal(v1_ids, ids) and np.array_equal(v1_counts, counts)
    assert v1_logprobs.dtype == np.dtype(logprob_dtype) and np.array_equal(v1_tail, tail)
    np.testing.assert_allclose(v1_logprobs, logprobs, rtol=1e-3 if logprob_dtype == "float16" else 0, atol=0)
    v1.check(tokenizer=tokenizer, temperature=1.0, datasets={"train": v1_dataset(tmp_path, tokenizer, teacher)})

    upgraded = convert_cache(tmp_path / "v1", tmp_path / "v2", logprob_dtype=logprob_dtype)  # format 2 by default
    assert upgraded["format_version"] == 2 and upgraded["dataset"] == old["dataset"]
    _, (v2_ids, v2_logprobs, v2_tail, _) = _rows_of(TeacherCache(tmp_path / "v2"))
    assert np.array_equal(v2_ids, ids) and np.array_equal(v2_tail, tail)
    np.testing.assert_allclose(v2_logprobs, v1_logprobs, rtol=0, atol=2**-11 if logprob_dtype == "float16" else 0)
    with pytest.raises(FileExistsError, match="not empty"):
        convert_cache(tmp_path / "v1", tmp_path / "v2")


def v1_dataset(tmp_path, tokenizer, teacher):
    from hf_distill.cache.writer import prepare_like_trainer

    dataset, _ = prepare_like_trainer(teacher, tiny_config(tmp_path), prompt_completion(slice(0, 24)), tokenizer)
    return dataset


def test_a_cache_of_an_unknown_format_version_is_refused_naming_the_field(tmp_path, tokenizer, teacher):
    directory = _collect(tmp_path, tokenizer, teacher)
    manifest = json.loads((directory / "manifest.json").read_text())
    (directory / "manifest.json").write_text(json.dumps({**manifest, "format_version": 3}))
    with pytest.raises(CacheMismatchError, match="format version 3.*reads versions 1, 2") as error:
        TeacherCache(directory)
    assert error.value.field == "format_version"


def _shard_stats(directory):
    return {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in sorted(directory.glob("shard-*"))}


def test_resume_after_a_crash_keeps_finished_shards_and_equals_an_uninterrupted_run(tmp_path, tokenizer, teacher,
                                                                                     monkeypatch):
    reference = _collect(tmp_path, tokenizer, teacher, name="reference")
    calls = interrupt_on_call(monkeypatch, collect_module, "_write_shard", call_number=3)
    with pytest.raises(KeyboardInterrupt):
        _collect(tmp_path, tokenizer, teacher, name="resumed")
    directory = tmp_path / "resumed"
    manifest = json.loads((directory / "manifest.json").read_text())
    assert not manifest["complete"] and [s["index"] for s in manifest["shards"]] == [0, 1]
    with pytest.raises(TeacherCacheError, match="incomplete"):
        TeacherCache(directory)
    finished = _shard_stats(directory)
    assert list(finished) == ["shard-00000.arrow", "shard-00001.arrow"]

    calls.clear()
    _collect(tmp_path, tokenizer, teacher, name="resumed")
    assert len(calls) == 1  # only the missing shard was written
    after = _shard_stats(directory)
    assert {name: after[name] for name in finished} == finished  # same inode, same mtime: never rewritten
    assert len(after) == 3
    read = lambda path: json.loads((path / "manifest.json").read_text())  # noqa: E731
    assert read(directory) == read(reference)
    for name in after:
        assert (directory / name).read_bytes() == (reference / name).read_bytes()


def test_resume_adopts_a_shard_renamed_into_place_before_the_manifest_recorded_it(tmp_path, tokenizer, teacher,
                                                                                  monkeypatch):
    real_write = collect_module.write_json_atomic

    def crash_before_recording_shard_1(path, data):
        if len(data["shards"]) == 2:
            raise KeyboardInterrupt("killed")
        return real_write(path, data)

    monkeypatch.setattr(collect_module, "write_json_atomic", crash_before_recording_shard_1)
    with pytest.raises(KeyboardInterrupt):
        _collect(tmp_path, tokenizer, teacher)
    orphan = _shard_stats(tmp_path / "cache")["shard-00001.arrow"]
    monkeypatch.setattr(collect_module, "write_json_atomic", real_write)
    _collect(tmp_path, tokenizer, teacher)
    assert _shard_stats(tmp_path / "cache")["shard-00001.arrow"] == orphan
    assert TeacherCache(tmp_path / "cache").num_examples == 24


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_shard_is_detected_with_a_clear_error(tmp_path, tokenizer, teacher, damage):
    directory = _collect(tmp_path, tokenizer, teacher)
    shard = directory / "shard-00001.arrow"
    data = bytearray(shard.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    message = "shard-00001.arrow.*(truncated|sha256).*delete it and re-run"
    with pytest.raises(TeacherCacheError, match=message):
        TeacherCache(directory)
    with pytest.raises(TeacherCacheError, match=message):  # collection refuses to build on it too
        _collect(tmp_path, tokenizer, teacher)
    shard.unlink()  # the fix the message gives
    _collect(tmp_path, tokenizer, teacher)
    assert TeacherCache(directory).num_examples == 24


def test_rerun_with_other_settings_in_the_same_directory_is_refused(tmp_path, tokenizer, teacher):
    _collect(tmp_path, tokenizer, teacher)
    with pytest.raises(CacheMismatchError, match="top_k") as error:
        _collect(tmp_path, tokenizer, teacher, top_k=7)
    assert error.value.field == "top_k"


# ------------------------------------------------------------------------------------------------------------------
# Training with a cache
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["dataset_fingerprint", "tokenizer_fingerprint", "temperature"])
def test_cache_made_for_another_run_fails_at_construction_naming_the_field(tmp_path, tokenizer, teacher, field):
    directory = _collect(tmp_path, tokenizer, teacher)
    student_tokenizer, dataset, temperature = tokenizer, prompt_completion(slice(0, 24)), 1.0
    if field == "dataset_fingerprint":
        dataset = prompt_completion(slice(20, 44))  # overlaps the cached rows, but not entirely
    elif field == "tokenizer_fingerprint":
        student_tokenizer = make_tokenizer()
        student_tokenizer.backend_tokenizer.add_tokens(["<zzz>"])
    else:
        temperature = 2.0
    with pytest.raises(CacheMismatchError) as error:
        DistillationTrainer(make_llama(len(student_tokenizer), 32, 1), tiny_config(tmp_path, temperature=temperature),
                            train_dataset=dataset, processing_class=student_tokenizer, teacher_cache=str(directory))
    assert error.value.field == field and field in str(error.value)
    if field == "temperature":
        assert "1.0" in str(error.value) and "2.0" in str(error.value) and "--temperature 2.0" in str(error.value)
    if field == "dataset_fingerprint":
        assert "20 of its 24 examples are not in the cache" in str(error.value)


def test_teacher_cache_and_teacher_model_are_exclusive(tmp_path, tokenizer, teacher):
    with pytest.raises(ValueError, match="got teacher_model and teacher_cache: keep one"):
        DistillationTrainer(make_llama(len(tokenizer), 32, 1), tiny_config(tmp_path, teacher_cache=str(tmp_path)),
                            train_dataset=prompt_completion(slice(0, 24)), processing_class=tokenizer, teacher_model=teacher)


def _train_and_capture(tmp_path, tokenizer, dataset, **teacher):
    capture = GradCapture()
    trainer = DistillationTrainer(
        make_llama(len(tokenizer), 32, 1, seed=1),
        tiny_config(tmp_path, max_steps=3, per_device_train_batch_size=2, gradient_accumulation_steps=2,
                temperature=2.0, alpha=0.3, kd_loss="jsd", beta=0.4, learning_rate=1e-2, logging_steps=3,
                **teacher.pop("config", {})),
        train_dataset=dataset, eval_dataset=dataset.select(range(4)), processing_class=tokenizer,
        callbacks=[capture], **teacher,
    )
    trainer.train()
    return capture.grads, trainer.evaluate()


def test_training_from_a_full_k_cache_matches_the_live_teacher_under_shuffle_accumulation_and_epochs(
    tmp_path, tokenizer, teacher
):
    # 6 examples, 4 per optimizer step: step 2 crosses into the second epoch, reshuffled.
    dataset = prompt_completion(slice(0, 6))
    directory = _collect(tmp_path, tokenizer, teacher, dataset=dataset, top_k=len(tokenizer), shard_size=4,
                         temperature=2.0, logprob_dtype="float32")
    live, live_eval = _train_and_capture(tmp_path, tokenizer, dataset, teacher_model=teacher)
    cached, cached_eval = _train_and_capture(tmp_path, tokenizer, dataset, teacher_cache=directory,
                                             config={"dataloader_num_workers": 1})  # keys computed in a worker
    assert len(live) == len(cached) == 3
    for step, (want, got) in enumerate(zip(live, cached)):
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=f"step {step}: {name}")
    for key in ("eval_loss", "eval_kd_loss", "eval_top1_agreement"):
        assert cached_eval[key] == pytest.approx(live_eval[key], rel=1e-4)


def test_students_trained_on_larger_k_end_closer_to_the_teacher(tmp_path, tokenizer, teacher):
    # Full-vocabulary KL to the live teacher after 30 steps on caches of k = 1, 8 and V (= the live teacher).
    with torch.no_grad():
        teacher.lm_head.weight.mul_(10)  # a peaked teacher, as trained ones are (a random one is near uniform)
    data = Dataset.from_dict({"text": CORPUS[:40]})
    kl_after = {}
    for k in (1, 8, len(tokenizer)):
        directory = _collect(tmp_path, tokenizer, teacher, name=f"k{k}", dataset=data, top_k=k, shard_size=16)
        student = make_llama(len(tokenizer), 32, 1, seed=1)
        probe = DistillationTrainer(student, tiny_config(tmp_path, alpha=0.0), train_dataset=data, eval_dataset=data,
                                    processing_class=tokenizer, teacher_model=teacher)
        before = probe.evaluate()["eval_kd_loss"]
        DistillationTrainer(student, tiny_config(tmp_path, max_steps=30, learning_rate=1e-2, alpha=0.0),
                            train_dataset=data, processing_class=tokenizer, teacher_cache=directory).train()
        kl_after[k] = probe.evaluate()["eval_kd_loss"]
    assert before > kl_after[1] > kl_after[8] > kl_after[len(tokenizer)], (before, kl_after)  # measured: 1.25 >
    assert kl_after[8] < 0.5 * before, (before, kl_after)  # 0.86 > 0.48 > 0.19


def test_cli_cache_logits_then_train_from_the_cache(tmp_path):
    from helpers import saved_student_and_teacher

    student, teacher = saved_student_and_teacher(tmp_path)
    cache = tmp_path / "cache"
    assert main(["cache-logits", "--teacher_model_name_or_path", str(teacher), "--dataset_name", "arithmetic",
                 "--num_examples", "12", "--output_dir", str(cache), "--top_k", "4", "--shard_size", "8",
                 "--temperature", "1.5"]) == 0
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_shards"] == 2 and manifest["top_k"] == 4
    assert manifest["teacher"]["name_or_path"] == str(teacher) and manifest["preparation"]["max_length"] == 1024
    assert main(["train", "--model_name_or_path", str(student), "--teacher_cache", str(cache), "--dataset_name",
                 "arithmetic", "--num_examples", "12", "--output_dir", str(tmp_path / "out"), "--max_steps", "2",
                 "--per_device_train_batch_size", "4", "--report_to", "none", "--temperature", "1.5",
                 "--gradient_checkpointing", "false"]) == 0
    assert (tmp_path / "out" / "model.safetensors").exists()
    assert sorted(os.listdir(cache)) == ["manifest.json", "shard-00000.arrow", "shard-00001.arrow"]
