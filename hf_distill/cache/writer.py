"""Collect a teacher-logit cache: run the teacher once, keep its top-k log-probabilities at every loss token.

    hf-distill cache-logits --teacher_model_name_or_path ./teacher --dataset_name arithmetic --output_dir ./cache \
        --top_k 32

or from Python, with the config you will train with (its tokenization settings and temperature are reused)::

    collect_teacher_cache("./teacher", train_dataset, "./cache", tokenizer, args=config, top_k=32)
    DistillationTrainer(student, config, train_dataset=train_dataset, processing_class=tokenizer,
                        teacher_cache="./cache")

* **Same tokens as training.** Examples go through TRL's ``SFTTrainer`` preparation and data collator exactly as
  ``DistillationTrainer`` prepares them, so each cached row lines up with the loss tokens training sees (and keys,
  see :mod:`hf_distill.cache.format`, catch any difference).
* **Same teacher pass as live distillation.** :class:`~hf_distill.teacher.live.LiveTeacher` yields final hidden
  states at the loss tokens; they are projected through ``lm_head`` one chunk of tokens at a time and reduced to
  top-k at once, so ``B x T x V`` logits never exist.
* **Resumable.** Unique examples are sorted by key and cut into shards of ``shard_size``, so shard contents depend
  only on the set of examples. Each shard is written under a temporary name, fsynced and renamed into place, then
  the manifest (with the shard's sha256) is rewritten the same way. A rerun verifies the finished shards, never
  rewrites them, and continues with the first missing one; a finished shard that fails its checksum is an error that
  names the file. A run over a directory holding another cache (other teacher, data, k, ...) is refused.
* **Many processes.** Under ``accelerate launch --num_processes N`` (or ``torchrun``), rank ``r`` collects shards
  ``r, r + N, ...`` with its own teacher (on its own GPU) and records them in its own progress file; rank 0 then
  writes the one manifest. Shards hold the same examples whatever ``N`` is, so the cache equals a one-process
  collection's (byte for byte where the teacher's arithmetic is deterministic), and a run killed under ``N``
  processes resumes under any number (:mod:`hf_distill.utils.manifest`)::

      accelerate launch --num_processes 4 -m hf_distill cache-logits --teacher_model_name_or_path ./teacher ...
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from hf_distill._compat import remove_unused_columns
from hf_distill.cache.collator import KeyedCollator
from hf_distill.cache.encoding import (
    LOGPROB_CODECS,
    encode_shard,
    token_id_dtype,
    write_options,
)
from hf_distill.cache.format import (
    CACHE_KEY,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST,
    CacheMismatchError,
    TeacherCacheError,
    dataset_keys,
    keys_fingerprint,
    preparation_fields,
    read_manifest,
    verify_shard,
)
from hf_distill.losses.targets import NonFiniteTeacherError, SparseTeacherSignal
from hf_distill.models.introspect import output_vocab_size
from hf_distill.served.teacher import ServedTeacher
from hf_distill.teacher.live import LiveTeacher, load_teacher, load_teacher_tokenizer
from hf_distill.teacher.vocab import VocabularyMismatchError, tokenizer_fingerprint
from hf_distill.training.preparation import PreparingSFTTrainer
from hf_distill.utils.fingerprint import fingerprint
from hf_distill.utils.io import atomic_path, sha256_file, write_json_atomic
from hf_distill.utils.manifest import ShardManifest, WorkShare, progress_files

logger = logging.getLogger(__name__)

_LOGPROB_DTYPES = LOGPROB_CODECS  # logprob_dtype -> the format-2 codec (at least that precision)
_CHUNK_ELEMENTS = 2**22  # top-k is taken over chunks of this many logits (16 MB of float32: reused memory)


def _top_k(logits: torch.Tensor, k: int, block: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """``logits.topk(k)`` (values sorted), about 3x faster at a 32k vocabulary.

    Only the k blocks of ``block`` logits with the largest maxima can hold the k largest logits, so the full top-k
    runs on ``k * block`` candidates instead of the whole row.
    """
    rows, width = logits.shape
    full = width // block
    if full < 4 * k:  # a small vocabulary: the plain kernel is as fast
        return logits.topk(k, dim=-1)
    maxima = logits[:, : full * block].view(rows, full, block).amax(-1)  # (C, blocks)
    if width > full * block:
        maxima = torch.cat([maxima, logits[:, full * block :].amax(-1, keepdim=True)], dim=1)
    blocks = maxima.topk(k, dim=-1).indices  # (C, k)
    positions = (blocks[:, :, None] * block + torch.arange(block, device=logits.device)).view(rows, -1)  # (C, k*B)
    outside = positions >= width  # the short last block
    candidates = logits.gather(1, positions.clamp_(max=width - 1)).masked_fill_(outside, float("-inf"))
    values, where = candidates.topk(k, dim=-1)  # (C, k)
    return values, positions.gather(1, where)


def top_k_with_tail(logits: torch.Tensor, k: int, temperature: float) -> tuple[torch.Tensor, ...]:
    """Top-k token ids and log-probabilities of ``softmax(logits / T)`` and the log of the mass outside the top-k.

    Naive equivalent::

        logp = log_softmax(logits / T); top_logp, ids = logp.topk(k)
        tail = log(1 - top_logp.exp().sum(-1))    # but as a sum over the rest: exact for tiny tails, -inf if k == V

    ``logits`` is ``(C, V)`` float32. One softmax pass serves the normaliser and the tail.
    """
    values, ids = _top_k(logits, k)  # (C, k), sorted
    probs = torch.softmax(logits if temperature == 1.0 else logits / temperature, dim=-1)  # (C, V)
    log_z = -probs.gather(1, ids[:, :1]).squeeze(1).log()  # (C,) log sum exp((z - max) / T): the top-1 is 1/sum
    if not torch.isfinite(log_z).all():
        raise NonFiniteTeacherError()
    logprobs = (values - values[:, :1]) / temperature - log_z[:, None]  # (C, k)
    if k == logits.shape[1]:
        return ids, logprobs, torch.full_like(log_z, float("-inf"))
    tail = probs.scatter_(1, ids, 0.0).sum(-1).log()  # (C,) a sum over the rest: no 1 - sum cancellation
    tiny = torch.nonzero(tail < math.log(1e-30)).squeeze(1)  # float32 underflow: recompute those rows exactly
    if len(tiny):
        rest = (logits[tiny] / temperature).scatter_(1, ids[tiny], float("-inf")).logsumexp(-1)
        tail[tiny] = rest - (values[tiny, 0] / temperature + log_z[tiny])
    return ids, logprobs, tail


def config_hash(model: nn.Module) -> str:
    """Hash of the teacher's config, without its path and version nor what SFT preparation sets on it (special-token
    ids, ``use_cache``), none of which changes the logits."""
    config = {k: v for k, v in model.config.to_dict().items()
              if k not in ("_name_or_path", "transformers_version", "use_cache") and not k.endswith("token_id")}
    return fingerprint(config)


def _cache_vocab_size(model: nn.Module, tokenizer) -> int:
    """Width of the cached distributions: the tokenizer's vocabulary (padding rows of the embedding are dropped)."""
    rows, tokens = output_vocab_size(model), len(tokenizer)
    if tokens > rows:
        raise VocabularyMismatchError(
            f"The tokenizer has {tokens} tokens but the teacher's output layer only {rows} rows. Fix: pass the "
            "tokenizer the teacher was trained with."
        )
    return tokens


def prepare_like_trainer(model: nn.Module, args, dataset, tokenizer, data_collator=None):
    """The dataset (tokenized, unused columns removed) and collator that ``DistillationTrainer`` would train on."""
    if args.packing or args.padding_free:
        raise ValueError(
            "Teacher-logit caches do not support `packing` or `padding_free` yet: packed rows would need their own "
            "keys. Set packing=False and padding_free=False for both collection and training."
        )
    preparer = PreparingSFTTrainer(model, copy.copy(args), data_collator, dataset, processing_class=tokenizer)

    prepared = remove_unused_columns(preparer, preparer.train_dataset, "training")
    return prepared, KeyedCollator(preparer.data_collator)


def _start_manifest(out: Path, fields: dict, created_with: str, share: WorkShare) -> ShardManifest:
    """A new manifest, or the one of an interrupted run with the same ``fields`` (else an error naming the field);
    under many processes, this rank's progress file (:mod:`hf_distill.utils.manifest`)."""
    recorded = [out / MANIFEST, *progress_files(out / MANIFEST)]
    if share.world_size == 1 and not any(path.is_file() for path in recorded) and any(out.glob("shard-*.arrow")):
        # (under many processes another rank may already have written a shard: no such check there)
        raise TeacherCacheError(f"{out} holds shard files but no {MANIFEST}. Fix: use an empty --output_dir directory.")

    def read(path: Path) -> dict | None:
        return read_manifest(path.parent, path.name)

    def mismatch(field: str, old, new) -> CacheMismatchError:
        return CacheMismatchError(
            field, f"{out} holds a cache collected with {field} = {old!r}, this run has {new!r}. Fix: pass another "
            "output directory, or delete this one to start over (a rerun with the original arguments resumes it).",
        )

    # `write` is looked up here, in this module, so that a test can simulate a crash between two manifest writes
    return ShardManifest.open(out / MANIFEST, fields, mismatch=mismatch, read=read, write=write_json_atomic,
                              new={"created_with": created_with, "complete": False}, share=share)


def _shard_entry(path: Path, index: int, num_examples: int, num_tokens: int) -> dict:
    return {"index": index, "file": path.name, "num_examples": num_examples, "num_tokens": num_tokens,
            "bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _adopt(path: Path, index: int, keys: np.ndarray) -> dict | None:
    """A shard renamed into place by a run that stopped before recording it: keep it if it reads back complete."""
    try:
        table = pa.ipc.open_stream(pa.memory_map(str(path))).read_all()
        complete = np.array_equal(table.column("key").to_numpy(), keys)
    except (pa.ArrowException, OSError, KeyError):
        complete = False
    if not complete:
        return None
    return _shard_entry(path, index, len(keys), sum(table.column("num_tokens").to_pylist()))


def _write_shard(path: Path, index: int, keys: np.ndarray, rows: list[tuple[np.ndarray, ...]], k: int,
                 id_dtype: str, logprob_dtype: str) -> dict:
    """Write one shard atomically (temporary name, fsync, rename) and return its manifest entry.

    Format 2 (:mod:`hf_distill.cache.encoding`): ids packed as ``id_dtype`` (``"uint<bits>"``), log-probs in the
    codec ``logprob_dtype`` asks for, zstd-compressed record batches of consecutive examples."""
    schema, blocks = encode_shard(keys, rows, token_id_type=id_dtype, codec=_LOGPROB_DTYPES[logprob_dtype])
    try:
        with (atomic_path(path) as tmp, open(tmp, "wb") as file,
              pa.ipc.new_stream(file, schema, options=write_options()) as writer):
            for block in blocks:
                writer.write_batch(block)
    except OSError as error:  # disk full, quota, I/O error: atomic_path keeps nothing partial
        raise OSError(
            error.errno, f"Writing {path} failed ({error}). Finished shards are intact and no partial file was kept. "
            "Fix: free disk space and re-run the same command; it resumes at this shard.",
        ) from error
    return _shard_entry(path, index, len(keys), sum(len(row[2]) for row in rows))


@torch.no_grad()
def _collect_shard(live: LiveTeacher, dataset, collator, rows: np.ndarray, keys: np.ndarray, lengths: np.ndarray,
                   *, k: int, temperature: float, vocab: int, batch_size: int) -> dict[int, tuple[np.ndarray, ...]]:
    """``{key: (token_ids (n, k), logprobs (n, k), tail (n,))}`` for the examples at ``rows`` of ``dataset``."""
    results = {}
    order = np.argsort(lengths[rows], kind="stable")  # similar lengths in a batch: less padding
    chunk = max(1, _CHUNK_ELEMENTS // vocab)
    batches = [order[start : start + batch_size] for start in range(0, len(order), batch_size)]
    collated = None
    if hasattr(live, "prefetch"):  # a served teacher: the whole shard's requests in flight, teacher_concurrency at once
        collated = [collator([dataset[int(row)] for row in rows[picked]]) for picked in batches]
        for batch in collated:
            live.prefetch(batch)
    for number, picked in enumerate(batches):
        batch = collated[number] if collated else collator([dataset[int(row)] for row in rows[picked]])
        expected = keys[rows[picked]]
        if not np.array_equal(batch[CACHE_KEY].numpy(), expected):
            raise RuntimeError("The collator's examples do not match the dataset's keys (a bug: please report it).")
        loss_mask = batch["labels"][:, 1:] != -100  # (B, T-1)
        signal = live.signal(batch, loss_mask, vocab, live.device)
        if isinstance(signal, SparseTeacherSignal):  # a served teacher: its top-k come back from the server
            ids, logprobs, tail = (t.cpu().numpy() for t in (signal.token_ids, signal.logprobs, signal.tail_logprob))
        else:
            parts = [top_k_with_tail(signal.logits(slice(i, i + chunk), check_finite=False), k, temperature)
                     for i in range(0, signal.num_tokens, chunk)]
            parts = parts or [(torch.zeros(0, k, dtype=torch.long), torch.zeros(0, k), torch.zeros(0))]  # no loss
            ids, logprobs, tail = (torch.cat([part[j] for part in parts]).cpu().numpy() for j in range(3))
        bounds = np.cumsum([0, *loss_mask.sum(1).tolist()])
        for row, key in enumerate(expected):
            span = slice(bounds[row], bounds[row + 1])
            results[int(key)] = (ids[span], logprobs[span], tail[span])
    return results


def collect_teacher_cache(
    teacher: str | os.PathLike | nn.Module,
    train_dataset,
    out_dir: str | os.PathLike,
    processing_class=None,
    *,
    args=None,
    data_collator=None,
    top_k: int = 32,
    temperature: float | None = None,
    batch_size: int = 8,
    shard_size: int = 1024,
    logprob_dtype: str = "float16",
    teacher_dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    log=logger.info,
    share: WorkShare | None = None,
) -> dict:
    """Run ``teacher`` once over ``train_dataset`` and write a teacher-logit cache to ``out_dir``; returns the manifest.

    Args:
        teacher: a model, or a local path / hub id loaded with ``from_pretrained``, or a
            :class:`~hf_distill.served.teacher.ServedTeacher` (an inference server's prompt log-probabilities;
            ``temperature`` 1, ``processing_class`` required).
        train_dataset, processing_class, data_collator: as you will pass them to ``DistillationTrainer``
            (``processing_class`` defaults to the tokenizer saved beside the teacher).
        args: the ``DistillationConfig``/``SFTConfig`` you will train with: its tokenization settings (max_length,
            completion_only_loss, chat template, ...) and, by default, its ``temperature`` are used.
        top_k: tokens kept per position (at most the vocabulary size). 32 keeps a 32k vocabulary ~300x smaller.
        temperature: the teacher's softmax temperature; training must use the same one.
        batch_size, shard_size: examples per teacher forward, and per file (the unit of resumption).
        logprob_dtype: ``"float16"`` (default, compact) or ``"float32"``.
        teacher_dtype, device: how to run the teacher (e.g. ``"bfloat16"``, ``"cuda"``; by default ``cuda:LOCAL_RANK``
            when there is a GPU).
        share: this process's part of a collection over many processes (default: from ``RANK``/``WORLD_SIZE``,
            which ``torchrun`` and ``accelerate launch`` set). Every rank returns the merged manifest.
    """
    from hf_distill import __version__
    from hf_distill.config import DistillationConfig

    if top_k < 1 or batch_size < 1 or shard_size < 1:
        raise ValueError(f"top_k, batch_size and shard_size must be >= 1, got {top_k}, {batch_size}, {shard_size}.")
    if logprob_dtype not in _LOGPROB_DTYPES:
        raise ValueError(f"logprob_dtype must be one of {sorted(_LOGPROB_DTYPES)}, got {logprob_dtype!r}.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = processing_class if processing_class is not None else load_teacher_tokenizer(teacher)
    if tokenizer is None:
        raise ValueError("No tokenizer: pass `processing_class=` (none is saved beside the teacher).")
    args = args if args is not None else DistillationConfig(output_dir=str(out), report_to=[])
    temperature = getattr(args, "temperature", 1.0) if temperature is None else temperature
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}. Fix: pass the temperature you will train with "
                         "(`--temperature`, 1.0 by default).")

    served = teacher if isinstance(teacher, ServedTeacher) else None
    if served is not None:  # a teacher behind a server (hf_distill.served): no weights here
        model, teacher_fields = served.preparation_model(tokenizer, temperature), served.manifest_fields()
    else:
        model = load_teacher(teacher, teacher_dtype)
        if not getattr(model, "hf_device_map", None):
            default = f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu"  # a GPU a rank
            model.to(torch.device(device or default))
        teacher_fields = {
            "name_or_path": str(teacher) if isinstance(teacher, (str, os.PathLike)) else model.name_or_path,
            "revision": getattr(model.config, "_commit_hash", None),
            "config_sha256": config_hash(model),
            "dtype": str(model.dtype).removeprefix("torch."),
        }
    dataset, collator = prepare_like_trainer(model, args, train_dataset, tokenizer, data_collator)
    vocab = _cache_vocab_size(model, tokenizer)
    k = min(top_k, vocab)
    keys, lengths = dataset_keys(dataset)
    unique, first = np.unique(keys, return_index=True)  # sorted keys; duplicates are collected once
    num_shards = math.ceil(len(unique) / shard_size)
    id_dtype = token_id_dtype(vocab)  # "uint<bits>": ids packed at the bits the vocabulary needs
    fields = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "teacher": teacher_fields,
        "tokenizer_fingerprint": tokenizer_fingerprint(tokenizer),
        "vocab_size": vocab,
        "top_k": k,
        "temperature": float(temperature),
        "dtypes": {"token_ids": id_dtype, "logprobs": _LOGPROB_DTYPES[logprob_dtype], "tail_logprob": "float32"},
        "dataset": {"fingerprint": keys_fingerprint(unique), "num_examples": len(unique)},
        "preparation": preparation_fields(args),
        "shard_size": shard_size,
        "num_shards": num_shards,
    }
    share = share or WorkShare.from_env()
    manifest = _start_manifest(out, fields, created_with=f"hf_distill {__version__}", share=share)

    def intact(entry: dict) -> bool:  # a finished shard is verified, never rewritten; a deleted one is collected again
        if not (out / entry["file"]).exists():
            return False
        verify_shard(out, entry)
        return True

    done = manifest.finished(intact)
    live = served.with_top_k(k) if served is not None else LiveTeacher(model)
    for index in range(num_shards):
        span = slice(index * shard_size, (index + 1) * shard_size)
        path = out / f"shard-{index:05d}.arrow"
        if index in done or not share.owns(index):
            continue
        entry = _adopt(path, index, unique[span]) if path.exists() else None
        if entry is None:
            started = time.perf_counter()
            results = _collect_shard(live, dataset, collator, first[span], keys, lengths, k=k,
                                     temperature=temperature, vocab=vocab, batch_size=batch_size)
            entry = _write_shard(path, index, unique[span], [results[int(key)] for key in unique[span]], k,
                                 id_dtype, logprob_dtype)
            log(f"{share.prefix()}shard {index + 1}/{num_shards}: {entry['num_examples']} examples, "
                f"{entry['num_tokens']} loss tokens,"
                f" {entry['bytes'] / 2**20:.1f} MiB, {time.perf_counter() - started:.1f}s")
        manifest.record(entry)
    return manifest.gather(num_shards, lambda shards: {"complete": True}, log=log)

