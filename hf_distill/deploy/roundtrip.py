"""Does an exported GGUF file still answer like the student? Greedy continuations of the same prompts by the float
student and by the file, run by one of two engines:

* ``"transformers"``: the file reloaded with transformers' ``gguf_file=`` loader, dequantised to float32 and run in
  float32. It measures what the stored weights lost, and nothing else.
* ``"llama.cpp"``: the file run by llama.cpp itself (``llama_cpp.Llama``), as ``hf-distill serve`` / Ollama / LM Studio
  run it. For quantised types that is more than the weights: llama.cpp's CPU kernels also round the *activations*
  to 8-bit blocks before each quantised matrix product (q8_0 and k-quant weights are multiplied with q8_0/q8_K
  activations), which a dequantised reload never does. Measured on SmolLM2-135M-Instruct (q8_0, the positions of
  two GSM8K chat prompts): the reload's logits differ from the float model's by 0.18 on average (max 1.3),
  llama.cpp's by 0.29 (max 2.6), Gaussian noise of the weights' error norm by 0.14 (max 1.5): a real but generic
  sensitivity to rounding, no mapping bug. llama.cpp is the engine whose answers a user gets, so it is the faithful
  measure of a deployment.

Two views of agreement (:class:`Agreement`): ``exact``/``token`` compare free-running greedy continuations, where one
flipped near-tie changes the whole rest of the answer (over 64 tokens a 97%-per-token match leaves few identical
answers); ``forced`` feeds both models the float student's own continuation and counts the positions where the file
ranks the same token first (per-token fidelity, no cascade).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from hf_distill.models.gguf import load_gguf_model, load_gguf_tokenizer

ENGINES = ("transformers", "llama.cpp")


@dataclass
class Agreement:
    """Greedy continuations of the same prompts by the float student and by its GGUF file."""

    exact: float
    """Share of prompts whose whole continuation is identical."""
    token: float
    """Share of generated positions that match, up to the first difference of each prompt (later ones diverge)."""
    prompts: int
    forced: float | None = None
    """Share of the float student's greedy tokens that the file also ranks first when given the float student's own
    prefix (teacher forcing): per-token agreement without the cascade after a first difference."""
    engine: str = "transformers"

    def as_dict(self) -> dict:
        return asdict(self)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The prompt's ids as generation sees them: a rendered chat prompt already holds its special tokens."""
    return tokenizer(prompt, add_special_tokens=False).input_ids


@torch.no_grad()
def greedy_from_ids(model, ids: list[int], max_new_tokens: int, pad_token_id: int | None = None,
                    banned: set[int] = frozenset()) -> list[int]:
    """``model.generate`` greedy from ``ids``; the new ids (ending with the stop token when one came). ``banned``
    ids are never chosen (e.g. the stop tokens, to compare a model that would stop at once over a whole answer)."""
    tensor = torch.tensor([ids])
    extra = {"suppress_tokens": sorted(banned)} if banned else {}
    generated = model.generate(tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=max_new_tokens,
                               do_sample=False, pad_token_id=pad_token_id, **extra)
    return generated[0, len(ids) :].tolist()


@torch.no_grad()
def forced_top1(model, ids: list[int], continuation: list[int]) -> list[int]:
    """The token ``model`` ranks first at each position of ``continuation``, fed ``ids + continuation``."""
    if not continuation:
        return []
    logits = model(torch.tensor([ids + continuation[:-1]])).logits[0, len(ids) - 1 :]  # (len(continuation), V)
    return logits.argmax(-1).tolist()


class LlamaCppRunner:
    """A GGUF file in llama.cpp (``llama_cpp.Llama``): greedy continuations and teacher-forced top-1 choices from
    token ids, by the logits llama.cpp computes (argmax, no sampler chain: no repeat penalty, no top-k ties)."""

    def __init__(self, gguf_path: str | os.PathLike, n_ctx: int = 2048, n_threads: int | None = None):
        from hf_distill.deploy.gguf_export import require_llama_cpp

        require_llama_cpp("running a GGUF file in llama.cpp")
        import llama_cpp

        self.llm = llama_cpp.Llama(str(gguf_path), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                                   logits_all=True, verbose=False)

    def tokenize(self, prompt: str) -> list[int]:
        """The file's own tokenizer, on a rendered chat prompt (special tokens parsed, no BOS added)."""
        return self.llm.tokenize(prompt.encode(), add_bos=False, special=True)

    def logits(self, ids: list[int]):
        """llama.cpp's next-token logits at every position of ``ids``, (T, V) float32 numpy."""
        self.llm.reset()
        self.llm.eval(ids)
        return self.llm.scores[: len(ids)].copy()

    def greedy(self, ids: list[int], max_new_tokens: int, stop_ids: set[int], banned: set[int] = frozenset()
               ) -> list[int]:
        """Argmax continuation, ending at a ``stop_ids`` token; ``banned`` ids are never chosen."""
        self.llm.reset()
        self.llm.eval(ids)
        out: list[int] = []
        while len(out) < max_new_tokens:
            scores = self.llm.scores[self.llm.n_tokens - 1].copy()
            scores[list(banned)] = -float("inf")
            token = int(scores.argmax())
            out.append(token)
            if token in stop_ids:
                break
            self.llm.eval([token])
        return out

    def forced_top1(self, ids: list[int], continuation: list[int], banned: set[int] = frozenset()) -> list[int]:
        if not continuation:
            return []
        logits = self.logits(ids + continuation[:-1])[len(ids) - 1 :]
        logits[:, list(banned)] = -float("inf")
        return logits.argmax(-1).tolist()

    def close(self) -> None:
        self.llm.close()


def stop_token_ids(model, tokenizer) -> set[int]:
    """The ids that end ``model.generate``'s greedy continuation (its generation config's, else the tokenizer's)."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


def agreement(reference: list[list[int]], other: list[list[int]], forced: list[list[int]] | None = None,
              engine: str = "transformers") -> Agreement:
    """Compare continuations (``forced``: the other model's teacher-forced top-1 choices along ``reference``)."""
    matched = total = 0
    for a, b in zip(reference, other, strict=True):
        common = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        matched, total = matched + common, total + max(len(a), 1)
    exact = sum(a == b for a, b in zip(reference, other)) / max(len(reference), 1)
    forced_share = None
    if forced is not None:
        pairs = [(x, y) for a, f in zip(reference, forced, strict=True) for x, y in zip(a, f, strict=True)]
        forced_share = sum(x == y for x, y in pairs) / max(len(pairs), 1)
    return Agreement(exact=exact, token=matched / max(total, 1), prompts=len(reference), forced=forced_share,
                     engine=engine)


def gguf_agreement(model, tokenizer, gguf_path: str | os.PathLike, prompts: list[str], max_new_tokens: int = 16,
                   engine: str = "transformers", n_threads: int | None = None) -> Agreement:
    """:class:`Agreement` of the float ``model`` with the GGUF file run by ``engine`` (see the module doc), each side
    tokenising the prompts with its own tokenizer (the file's is the one llama.cpp users get: transformers rebuilds it
    from the GGUF vocabulary; llama.cpp reads it). ``forced`` is measured too."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: use one of {', '.join(ENGINES)}")
    path = Path(gguf_path)
    pad = tokenizer.pad_token_id or tokenizer.eos_token_id
    reference_ids = [prompt_ids(tokenizer, prompt) for prompt in prompts]
    reference = [greedy_from_ids(model, ids, max_new_tokens, pad) for ids in reference_ids]
    if engine == "transformers":
        reloaded = load_gguf_model(str(path.parent), path.name)
        reloaded_tokenizer = load_gguf_tokenizer(str(path.parent), path.name)
        ids = [prompt_ids(reloaded_tokenizer, prompt) for prompt in prompts]
        other = [greedy_from_ids(reloaded, i, max_new_tokens, pad) for i in ids]
        forced = [forced_top1(reloaded, i, ref) for i, ref in zip(ids, reference)]
    else:
        runner = LlamaCppRunner(path, n_ctx=max(len(i) for i in reference_ids) + max_new_tokens + 8,
                                n_threads=n_threads)
        try:
            ids = [runner.tokenize(prompt) for prompt in prompts]
            stops = stop_token_ids(model, tokenizer)
            other = [runner.greedy(i, max_new_tokens, stops) for i in ids]
            forced = [runner.forced_top1(i, ref) for i, ref in zip(ids, reference)]
        finally:
            runner.close()
    return agreement(reference, other, forced, engine)
