"""``benchmarks/cache.py --fidelity``: bytes per token and fidelity of the cache formats on real teachers.

One teacher pass over GSM8K answers. At every loss token, the stored rows are what the collector stores
(``top_k_with_tail`` on the float32 logits); the reference statistics are computed in float64 from the same logits:
the exact top-k log-probs and tail, sum_rest p log p, and for the student (teacher logits + Gaussian noise) its
probabilities at the top-k and the sums over the rest that the gradients need. Each format writes the rows with the
library's own writer and reads them back through ``TeacherCache.read``, exactly as training does.

The gradient of the cached forward-KL loss with respect to the student's logits z, with stored buckets p_hat
(top-k) and tau_hat (tail), s = sum p_hat + tau_hat and the student's rest mass tau_q, is ``s q_i - p_hat_i`` at the
top-k and ``q_j (s - tau_hat / tau_q)`` elsewhere; the true KD gradient is ``q - p``. Checked against autograd on the
first chunk.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from hf_distill.cache.encoding import format1_table, token_id_dtype
from hf_distill.cache.format import FORMAT_NAME, dataset_keys
from hf_distill.cache.reader import TeacherCache
from hf_distill.cache.writer import _write_shard, prepare_like_trainer, top_k_with_tail
from hf_distill.losses import get_divergence
from hf_distill.losses.targets import SparseTeacherSignal

MODELS = {"smollm2": ("smollm2-135m-instruct", 64), "gemma3": ("gemma-3-270m", 16)}  # name, default examples
# (setting, bytes/token, KL(p||p_hat), grad-cos) as issue 22 measured them on SmolLM2 (64 GSM8K examples)
DISTILLKIT = {32: [("DistillKit k=32, plain bf16 (Parquet + snappy)", 110.2, 0.092, 0.67)],
              128: [("DistillKit k=128 / 32 exact f32, delta (quick-start)", 397.9, 0.0283, 0.84),
                    ("DistillKit k=128 / 16 exact (recommended)", 311.9, 0.041, 0.69)]}
GOALS = {("smollm2", 32): 110, ("smollm2", 128): 398, ("gemma3", 32): 140}
FORMATS = (("format 1, float16 (today)", 1, "float16"), ("format 2, grid1024 (default)", 2, "float16"),
           ("format 2, float32 (exact)", 2, "float32"))


def _stats(z: torch.Tensor, ids: torch.Tensor, noise: float, generator: torch.Generator) -> dict:
    """Float64 reference statistics of one chunk: z ``(C, V)`` teacher logits, ids ``(C, k)`` the stored top-k."""
    lp = z.double().log_softmax(-1)  # (C, V)
    p = lp.exp()
    student = (z.double() + noise * torch.randn(z.shape, generator=generator, dtype=torch.float64)).log_softmax(-1)
    q = student.exp()  # (C, V)
    top = torch.zeros_like(p, dtype=torch.bool).scatter_(1, ids, True)
    p_rest, q_rest = p.masked_fill(top, 0.0), q.masked_fill(top, 0.0)
    return {
        "logp": lp.gather(1, ids), "tail": lp.masked_fill(top, float("-inf")).logsumexp(-1),
        "rest_plogp": torch.where(p_rest > 0, p_rest * lp, 0.0).sum(-1), "q_top": q.gather(1, ids),
        "tau_q": q_rest.sum(-1), "rest_q2": (q_rest**2).sum(-1), "rest_pq": (p_rest * q_rest).sum(-1),
        "rest_p2": (p_rest**2).sum(-1),
    }


def _measures(ref: dict, logp_hat: np.ndarray, tail_hat: np.ndarray, vocab: int) -> dict:
    """Storage KL, KL(p || p_hat) and the gradient terms, per token, for stored buckets ``logp_hat``, ``tail_hat``."""
    logp, tail = ref["logp"], ref["tail"]  # (N, k), (N,)
    p, tau = np.exp(logp), np.exp(tail)
    p_hat, tau_hat = np.exp(logp_hat.astype(np.float64)), np.exp(tail_hat.astype(np.float64))
    s = p_hat.sum(1) + tau_hat  # (N,)
    log_s = np.log(s)
    k = logp.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        tail_term = np.where(tau > 0, tau * (tail - (np.log(tau_hat) - log_s)), 0.0)
        storage = (p * (logp - (np.log(p_hat) - log_s[:, None]))).sum(1) + tail_term
        full = ((p * (logp - (np.log(p_hat) - log_s[:, None]))).sum(1) + ref["rest_plogp"]
                - np.where(tau > 0, tau * (np.log(tau_hat) - log_s - np.log(vocab - k)), 0.0))
    q_top, tau_q = ref["q_top"], ref["tau_q"]
    rest_factor = s - tau_hat / tau_q  # (N,)
    g_top, g_hat_top = q_top - p, s[:, None] * q_top - p_hat
    dot = (g_top * g_hat_top).sum(1) + rest_factor * (ref["rest_q2"] - ref["rest_pq"])
    true_sq = (g_top**2).sum(1) + ref["rest_q2"] - 2 * ref["rest_pq"] + ref["rest_p2"]
    hat_sq = (g_hat_top**2).sum(1) + rest_factor**2 * ref["rest_q2"]
    return {"storage": storage.mean(), "kl": full.mean(),
            "cos": dot.sum() / np.sqrt(true_sq.sum() * hat_sq.sum())}


@torch.enable_grad()
def _check_gradient_formula(z: torch.Tensor, ids, logprobs, tail, noise: float, seed: int, vocab: int) -> None:
    """The closed-form cached gradient of :func:`_measures` against autograd through the library's loss."""
    generator = torch.Generator().manual_seed(seed)
    ref = _stats(z, ids, noise, generator)
    generator = torch.Generator().manual_seed(seed)
    student = (z.double() + noise * torch.randn(z.shape, generator=generator, dtype=torch.float64)).requires_grad_()
    signal = SparseTeacherSignal(ids, torch.as_tensor(logprobs, dtype=torch.float64),
                                 torch.as_tensor(tail, dtype=torch.float64), vocab)
    student_logp, teacher_logp, _ = signal.align(student, slice(None), 1.0)
    get_divergence("forward_kl")(student_logp.double(), teacher_logp.double()).sum().backward()
    q = student.detach().softmax(-1)
    p_hat, tau_hat = np.exp(logprobs.astype(np.float64)), np.exp(tail.astype(np.float64))
    s = p_hat.sum(1) + tau_hat
    want = q * torch.as_tensor(s - tau_hat / ref["tau_q"].numpy())[:, None]
    want.scatter_(1, ids, torch.as_tensor(s[:, None]) * q.gather(1, ids) - torch.as_tensor(p_hat))
    torch.testing.assert_close(student.grad, want, rtol=1e-6, atol=1e-9)


def _write_cache(directory: Path, keys, rows, k: int, vocab: int, version: int, logprob_dtype: str) -> TeacherCache:
    directory.mkdir(parents=True)
    path = directory / "shard-00000.arrow"
    if version == 1:
        table = format1_table(keys, rows, k, logprob_dtype, vocab)
        with open(path, "wb") as file, pa.ipc.new_stream(file, table.schema) as writer:
            writer.write_table(table)
        from hf_distill.cache.writer import _shard_entry

        entry = _shard_entry(path, 0, len(keys), sum(len(row[2]) for row in rows))
        dtypes = {"token_ids": "uint16" if vocab <= 2**16 else "int32", "logprobs": logprob_dtype}
    else:
        entry = _write_shard(path, 0, keys, rows, k, token_id_dtype(vocab), logprob_dtype)
        dtypes = {"token_ids": token_id_dtype(vocab), "logprobs": {"float16": "grid1024"}.get(logprob_dtype, "float32")}
    manifest = {"format": FORMAT_NAME, "format_version": version, "complete": True, "num_shards": 1, "top_k": k,
                "vocab_size": vocab, "temperature": 1.0, "dtypes": {**dtypes, "tail_logprob": "float32"},
                "shards": [entry]}
    (directory / "manifest.json").write_text(json.dumps(manifest))
    return TeacherCache(directory, verify=False)


def run_fidelity(args, work: Path) -> int:
    from datasets import Dataset
    from transformers import AutoTokenizer

    from hf_distill import DistillationConfig
    from hf_distill.data.reasoning import load_reasoning_dataset, to_prompt_completion
    from hf_distill.models.real import real_model_dir
    from hf_distill.teacher.live import LiveTeacher, load_teacher

    ks = sorted(int(k) for k in args.fidelity_k.split(","))
    verdicts = []
    for name in args.fidelity.split(","):
        folder, default_examples = MODELS[name]
        started = time.perf_counter()
        directory = real_model_dir(folder)
        tokenizer = AutoTokenizer.from_pretrained(directory)
        examples = args.fidelity_examples or default_examples
        with open(args.data) as file:  # in memory: no datasets cache file, no lock shared with other runs
            raw = Dataset.from_list([json.loads(line) for line, _ in zip(file, range(examples))])
        data = to_prompt_completion(load_reasoning_dataset(raw), tokenizer=tokenizer)
        model = load_teacher(str(directory))
        config = DistillationConfig(output_dir=str(work / "prep"), report_to=[], max_length=256)
        dataset, collator = prepare_like_trainer(model, config, data, tokenizer)
        keys, _ = dataset_keys(dataset)
        assert len(np.unique(keys)) == len(keys), "duplicate examples: the per-key reference would not line up"
        vocab, live = len(tokenizer), LiveTeacher(model)
        rows = {k: {} for k in ks}
        refs = {k: [] for k in ks}
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for start in range(0, len(dataset), 4):
                picked = range(start, min(start + 4, len(dataset)))
                batch = collator([dataset[i] for i in picked])
                mask = batch["labels"][:, 1:] != -100
                signal = live.signal(batch, mask, vocab, torch.device("cpu"))
                parts = {k: [] for k in ks}
                for chunk in range(0, signal.num_tokens, 64):
                    z = signal.logits(slice(chunk, chunk + 64), check_finite=False)  # (C, V) float32
                    for k in ks:
                        stored = [t.numpy() for t in top_k_with_tail(z.clone(), k, 1.0)]
                        seed = int(torch.randint(2**31, (1,), generator=generator))
                        if start == 0 and chunk == 0:
                            _check_gradient_formula(z, torch.from_numpy(stored[0]), stored[1], stored[2],
                                                    args.student_noise, seed, vocab)
                        ref = _stats(z, torch.from_numpy(stored[0]), args.student_noise,
                                     torch.Generator().manual_seed(seed))
                        refs[k].append({key: value.numpy() for key, value in ref.items()})
                        parts[k].append(stored)
                bounds = np.cumsum([0, *mask.sum(1).tolist()])
                for k in ks:
                    ids, logprobs, tail = (np.concatenate([part[j] for part in parts[k]]) for j in range(3))
                    for row, index in enumerate(picked):
                        span = slice(bounds[row], bounds[row + 1])
                        rows[k][int(keys[index])] = (ids[span], logprobs[span], tail[span])
        tokens = sum(len(row[2]) for row in rows[ks[0]].values())
        print(f"\n### {folder}: {len(rows[ks[0]])} GSM8K examples, {tokens} loss tokens, vocab {vocab:,}, student = "
              f"teacher logits + N(0, {args.student_noise}^2) ({time.perf_counter() - started:.0f} s)\n")
        print("| setting | bytes/token | storage KL | KL(p‖p̂) | grad-cos to the true KD gradient | read s/batch of 8 |")
        print("|---|---|---|---|---|---|")
        for k in ks:
            order = sorted(rows[k])
            key_array = np.array(order, dtype=np.int64)
            # the reference in the order TeacherCache.read returns rows: by key
            by_key = {}
            flat = {name_: np.concatenate([r[name_] for r in refs[k]]) for name_ in refs[k][0]}
            position = 0
            for index in range(len(dataset)):
                count = len(rows[k][int(keys[index])][2])
                by_key[int(keys[index])] = slice(position, position + count)
                position += count
            take = np.concatenate([np.arange(by_key[key].start, by_key[key].stop) for key in order])
            ref = {name_: value[take] for name_, value in flat.items()}
            exact = _measures(ref, ref["logp"], ref["tail"], vocab)
            print(f"| exact k={k} buckets (no storage error) | | 0 | {exact['kl']:.4f} | {exact['cos']:.5f} | |")
            for label, version, dtype in FORMATS:
                cache = _write_cache(work / f"{name}-k{k}-v{version}-{dtype}", key_array,
                                     [rows[k][key] for key in order], k, vocab, version, dtype)
                size = cache.manifest["shards"][0]["bytes"] / tokens
                ids, logprobs, tail, _ = cache.read(key_array)
                assert np.array_equal(ids, np.concatenate([rows[k][key][0] for key in order]))
                m = _measures(ref, logprobs, tail, vocab)
                batches = [key_array[i : i + 8] for i in range(0, len(key_array) - 7, 8)]
                began = time.perf_counter()
                for batch_keys in batches:
                    cache.read(batch_keys)
                read_s = (time.perf_counter() - began) / max(len(batches), 1)
                print(f"| {label}, k={k} | {size:.1f} | {m['storage']:.1e} | {m['kl']:.4f} | {m['cos']:.5f} | "
                      f"{read_s * 1e3:.2f} ms |")
                if version == 2 and dtype == "float16" and (name, k) in GOALS:
                    verdicts.append((name, k, size, GOALS[name, k], m["storage"]))
            if name == "smollm2":
                for label, size, kl, cos in DISTILLKIT.get(k, []):
                    print(f"| {label} (issue 22's measurement) | {size} | | {kl} | {cos} | |")
    print()
    for name, k, size, goal, storage in verdicts:
        print(f"{name} k={k}: format 2 {size:.1f} bytes/token (goal <= {goal}): {'meets' if size <= goal else 'misses'}"
              f" the goal; storage KL {storage:.1e} (goal <= 1e-4): {'meets' if storage <= 1e-4 else 'misses'} it")
    return 0
