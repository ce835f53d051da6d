"""`ServedTeacher`: a teacher behind an inference server, yielding the sparse top-k signal a logit cache yields.

    teacher = ServedTeacher.from_args(args, tokenizer, top_k=20)      # args: DistillationConfig with teacher_url
    signal = teacher.signal(batch, loss_mask, vocab_size, device)      # SparseTeacherSignal, like CachedTeacher's

Each row of a batch (its tokens up to the padding) is one request for the prompt log-probabilities of every
position; the rows at the loss tokens are kept. The engine-specific parts (request, reply, how token ids come back)
are one small module per engine: :mod:`~hf_distill.served.vllm` (ids in, ids out) and
:mod:`~hf_distill.served.llama_cpp` (text in, strings out, mapped back to ids). ``prefetch(batch)`` sends a batch's
requests ahead, so that a later ``signal`` for it only waits for what is still in flight (online KD overlaps the
next batch's scoring with the current step this way).

The signal's log-probabilities are the engine's raw ones (temperature 1); the rest bucket holds
``1 - sum(top-k probabilities)``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from concurrent.futures import Future

import numpy as np
import torch

from hf_distill.losses.targets import SparseTeacherSignal
from hf_distill.served import llama_cpp, vllm
from hf_distill.served.client import ServedClient, ServedTeacherError
from hf_distill.served.sampling import served_model_name

ENGINE_MODULES = {vllm.NAME: vllm, llama_cpp.NAME: llama_cpp}
_OWNERS = {"vllm": vllm.NAME, "me": llama_cpp.NAME, "llama-cpp-python": llama_cpp.NAME}  # /v1/models owned_by


def detect_engine(client: ServedClient, model: str) -> str:
    """The engine behind ``client``, from the ``owned_by`` of its ``/v1/models`` entry (vLLM writes "vllm",
    llama-cpp-python "me")."""
    listing = client.get("/models") or {}
    owners = {entry.get("id"): entry.get("owned_by") for entry in listing.get("data", [])}
    engine = _OWNERS.get(owners.get(model))
    if engine is None:
        raise ValueError(f"Cannot tell which engine serves {model!r} at {client.base_url} (/v1/models says owned_by="
                         f"{owners.get(model)!r}). Fix: set teacher_engine to one of {sorted(ENGINE_MODULES)}.")
    return engine


def tail_logprob(logprobs: np.ndarray) -> np.ndarray:
    """``log(1 - sum(exp(top-k)))`` per row, ``-inf`` where the top-k holds all the mass (up to rounding)."""
    rest = 1.0 - np.exp(logprobs.astype(np.float64)).sum(-1)  # (N,)
    with np.errstate(divide="ignore"):
        return np.where(rest > 1e-12, np.log(np.maximum(rest, 1e-300)), -np.inf).astype(np.float32)


class ServedTeacher:
    """``signal(inputs, loss_mask, vocab_size, output_device)`` as :class:`~hf_distill.cache.reader.CachedTeacher`."""

    unwrapped = None  # no model here to save, move or wrap
    temperature = 1.0  # what the engines' log-probabilities are computed at
    device = torch.device("cpu")  # where replies are decoded

    def __init__(self, client: ServedClient, model: str, engine: str, tokenizer, top_k: int,
                 ambiguous: str = "error"):
        if engine not in ENGINE_MODULES:
            raise ValueError(f"teacher_engine must be one of {sorted(ENGINE_MODULES)}, got {engine!r}")
        self.client, self.model, self.engine, self.tokenizer, self.top_k = client, model, engine, tokenizer, top_k
        self.ambiguous = ambiguous
        self._strings = llama_cpp.TokenStrings(tokenizer) if engine == llama_cpp.NAME else None
        self._pending: OrderedDict[bytes, Future] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_args(cls, args, tokenizer, top_k: int | None = None) -> ServedTeacher:
        """From the ``teacher_*`` fields of a `DistillationConfig` (:mod:`hf_distill.served.settings`)."""
        client = args.served_client()
        model = served_model_name(client, args.teacher_served_model)
        engine = args.teacher_engine if args.teacher_engine != "auto" else detect_engine(client, model)
        return cls(client, model, engine, tokenizer, top_k or args.teacher_top_k, args.teacher_ambiguous_tokens)

    def with_top_k(self, k: int) -> ServedTeacher:
        self.top_k = k
        return self

    def preparation_model(self, tokenizer, temperature: float):
        """A one-layer stand-in with the tokenizer's vocabulary, for TRL's dataset preparation (which needs a model
        object, not its weights), after checking what only a server's teacher imposes."""
        from hf_distill.models.build import random_llama

        if abs(temperature - self.temperature) > 1e-6:
            raise ValueError(
                f"A served teacher gives its raw log-probabilities (temperature 1), but temperature={temperature}: the "
                "top-k cannot be re-tempered exactly. Fix: collect and train with --temperature 1.0."
            )
        if tokenizer is None:
            raise ValueError("A served teacher needs the teacher's tokenizer here: pass processing_class= "
                             "(`hf-distill cache-logits --tokenizer_name_or_path`).")
        return random_llama(0, vocab_size=len(tokenizer), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                            num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=2**20)

    def engine_version(self) -> str | None:
        try:
            return ENGINE_MODULES[self.engine].version(self.client)
        except ServedTeacherError:
            return None

    # -- scoring ----------------------------------------------------------------------------------------------------

    def score(self, token_ids: list[int], need_first: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Top-k ids and log-probs ``(T-1, k)`` of a whole sequence (row t: position t, predicting token t+1), and
        which rows the engine gave ``(T-1,)``; ``need_first``: row 0 is needed (some engines need a second request)."""
        if len(token_ids) < 2:
            empty = np.zeros((0, self.top_k))
            return empty.astype(np.int64), empty.astype(np.float32), np.zeros(0, bool)
        if self.engine == vllm.NAME:
            ids, logprobs = vllm.prompt_top_k(self.client, self.model, token_ids, self.top_k)
            return ids, logprobs, np.ones(len(ids), bool)
        return llama_cpp.prompt_top_k(self.client, self.model, token_ids, self.top_k, self.tokenizer, self._strings,
                                      self.ambiguous, need_first=need_first)

    @staticmethod
    def _rows(inputs: dict) -> list[tuple[np.ndarray, bool]]:
        """Each row's tokens up to its padding (right padding, as TRL's collators pad), and whether its first
        position carries loss."""
        input_ids = inputs["input_ids"].detach().cpu().numpy()  # (B, T)
        labels = inputs.get("labels")
        first = [True] * len(input_ids) if labels is None or labels.shape[1] < 2 else \
            (labels[:, 1] != -100).tolist()
        mask = inputs.get("attention_mask")
        if mask is None:
            return list(zip(input_ids, first))
        mask = mask.detach().cpu().numpy().astype(bool)  # (B, T)
        lengths = mask.sum(1)
        if any(not mask[row, :length].all() for row, length in enumerate(lengths)):
            raise ValueError("A served teacher scores right-padded rows (TRL's collators pad on the right); this batch "
                             "is left-padded or packed. Fix: tokenizer.padding_side = 'right', packing=False.")
        return [(input_ids[row, :length], first[row]) for row, length in enumerate(lengths)]

    @staticmethod
    def _key(ids: np.ndarray, need_first: bool) -> bytes:
        return ids.astype(np.int64).tobytes() + bytes([need_first])

    def _future(self, ids: np.ndarray, need_first: bool) -> Future:
        with self._lock:
            future = self._pending.pop(self._key(ids, need_first), None)
        return future if future is not None else self.client.submit(self.score, ids.tolist(), need_first)

    def prefetch(self, inputs: dict) -> None:
        """Send the requests for ``inputs`` now; :meth:`signal` on the same batch collects them."""
        for ids, need_first in self._rows(inputs):
            key = self._key(ids, need_first)
            with self._lock:
                if key not in self._pending:
                    self._pending[key] = self.client.submit(self.score, ids.tolist(), need_first)
                while len(self._pending) > 4096:  # batches that were never trained on (e.g. an early stop)
                    self._pending.popitem(last=False)[1].cancel()

    def signal(self, inputs: dict, loss_mask: torch.Tensor, vocab_size: int,
               output_device: torch.device) -> SparseTeacherSignal:
        """``loss_mask`` is ``(B, T-1)``: True where the next-token label at position t+1 carries loss."""
        rows = self._rows(inputs)
        futures = [self._future(ids, need_first) for ids, need_first in rows]
        mask = loss_mask.detach().cpu().numpy()
        ids_parts, logprob_parts = [], []
        for row, ((ids, _), future) in enumerate(zip(rows, futures)):
            top_ids, top_logprobs, known = future.result()  # (len - 1, k), (len - 1, k), (len - 1,)
            positions = np.flatnonzero(mask[row])
            if len(positions) and positions[-1] >= len(ids) - 1:
                raise ValueError(f"Batch row {row} has loss on padding (position {positions[-1]} of {len(ids)} "
                                 "tokens): the labels and the attention mask disagree.")
            missing = positions[~known[positions]]
            if len(missing):
                raise ServedTeacherError(
                    f"The {self.engine} server gives no distribution at position {missing[0]} of batch row {row} "
                    f"(predicting token {int(ids[missing[0] + 1])}: llama-cpp-python never echoes BOS tokens), which "
                    "carries loss. Fix: serve the teacher with vLLM, or train on the assistant turns only "
                    "(assistant_only_loss / completion_only_loss)."
                )
            ids_parts.append(top_ids[positions])
            logprob_parts.append(top_logprobs[positions])
        top_ids = np.concatenate(ids_parts) if ids_parts else np.zeros((0, self.top_k), np.int64)
        top_logprobs = np.concatenate(logprob_parts) if logprob_parts else np.zeros((0, self.top_k), np.float32)
        if len(top_ids) and top_ids.max() >= vocab_size:
            raise ServedTeacherError(f"The served teacher names token id {top_ids.max()}, outside the vocabulary of "
                                     f"{vocab_size}: it uses another tokenizer than the student.")
        return SparseTeacherSignal(
            torch.from_numpy(top_ids).to(output_device),
            torch.from_numpy(top_logprobs).to(output_device),
            torch.from_numpy(tail_logprob(top_logprobs)).to(output_device),
            vocab_size,
            self.temperature,
        )

    def manifest_fields(self) -> dict:
        """The ``teacher`` entry of a cache manifest: the fields of an in-process one (no config hash or dtype are
        known from outside the server), plus the engine and its version."""
        return {"name_or_path": self.model, "revision": None, "config_sha256": None, "dtype": None,
                "served": {"engine": self.engine, "engine_version": self.engine_version()}}
