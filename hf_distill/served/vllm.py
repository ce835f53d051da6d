"""vLLM (and engines that copy its extensions, e.g. SGLang's ``/v1/completions``): prompt log-probabilities by id.

Request (``POST /v1/completions``; vLLM's ``CompletionRequest``)::

    {"model": M, "prompt": [ids...], "max_tokens": 1, "temperature": 0, "prompt_logprobs": k,
     "return_tokens_as_token_ids": true, "return_token_ids": true, "add_special_tokens": false}

Reply (``CompletionResponseChoice``)::

    {"choices": [{"prompt_token_ids": [ids...],
                  "prompt_logprobs": [null, {"<id>": {"logprob": -0.3, "rank": 1, "decoded_token": "..."}, ...}, ...]}]}

``prompt_logprobs[j]`` is the distribution of token j given tokens ``< j`` (the first is null): the k most likely
tokens, plus token j itself when it is not among them (with its own rank). Token ids go in, so the teacher scores
exactly the training tokens; the ids that come back (``prompt_token_ids``, and token j in every row) are checked.

Limits: vLLM refuses ``prompt_logprobs`` above its ``--max-logprobs`` (20 by default; start it with
``--max-logprobs 64`` for k = 64). The log-probabilities are the model's raw ones (temperature 1), so caches and
online KD from a server use ``temperature=1``. vLLM >= 0.6 answers ``GET /version``, recorded in the manifest.
"""

from __future__ import annotations

import numpy as np

from hf_distill.served.client import HTTPStatusError, ServedClient, ServedTeacherError

NAME = "vllm"


class TokenMismatchError(ServedTeacherError):
    """The server scored other tokens than the ones sent (another tokenizer, special tokens added)."""


def request(model: str, token_ids: list[int], k: int) -> dict:
    return {"model": model, "prompt": [int(i) for i in token_ids], "max_tokens": 1, "temperature": 0.0,
            "prompt_logprobs": k, "return_tokens_as_token_ids": True, "return_token_ids": True,
            "add_special_tokens": False}


def _token_id(key) -> int:
    text = str(key)
    return int(text.removeprefix("token_id:"))


def parse(reply: dict, token_ids: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k ids ``(T-1, k)`` and log-probs ``(T-1, k)`` (sorted, most likely first) at positions 1..T-1."""
    try:
        choice = reply["choices"][0]
        rows = choice["prompt_logprobs"]
    except (KeyError, IndexError, TypeError):
        raise ServedTeacherError(
            "The reply has no `prompt_logprobs`: the server is not vLLM (or too old for prompt_logprobs). Fix: "
            "set teacher_engine to the engine that serves the teacher."
        ) from None
    returned = choice.get("prompt_token_ids")
    if returned is not None and [int(i) for i in returned] != [int(i) for i in token_ids]:
        first = next((j for j, (a, b) in enumerate(zip(returned, token_ids)) if int(a) != int(b)),
                     min(len(returned), len(token_ids)))
        raise TokenMismatchError(
            f"The server scored other tokens than the ones sent (first difference at position {first} of "
            f"{len(token_ids)}: sent {list(token_ids[first:first + 3])}, it has {list(returned[first:first + 3])}). "
            "Fix: serve the teacher with the tokenizer training uses, without adding special tokens."
        )
    if rows is None or len(rows) != len(token_ids):
        raise TokenMismatchError(f"The server returned log-probabilities for {0 if rows is None else len(rows)} "
                                 f"prompt positions, {len(token_ids)} tokens were sent.")
    ids = np.zeros((len(token_ids) - 1, k), np.int64)
    logprobs = np.zeros((len(token_ids) - 1, k), np.float32)
    for j in range(1, len(token_ids)):
        entries = {_token_id(key): value for key, value in (rows[j] or {}).items()}
        if int(token_ids[j]) not in entries:  # vLLM always includes the prompt token: a shifted or foreign row
            raise TokenMismatchError(f"Position {j}: the prompt token {token_ids[j]} is missing from the server's "
                                     "log-probabilities, so its rows do not line up with the tokens sent.")
        ranked = sorted(entries.items(), key=lambda item: (-_logprob(item[1]), item[0]))[:k]
        if len(ranked) < k:
            raise ServedTeacherError(
                f"The server returned {len(ranked)} log-probabilities at position {j}, {k} were asked. Fix: start "
                f"vLLM with --max-logprobs {k} (or more), or ask for top_k <= what it returns."
            )
        ids[j - 1] = [token for token, _ in ranked]
        logprobs[j - 1] = [_logprob(value) for _, value in ranked]
    return ids, logprobs


def _logprob(value) -> float:
    return float(value["logprob"] if isinstance(value, dict) else value)


def prompt_top_k(client: ServedClient, model: str, token_ids: list[int], k: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        reply = client.post("/completions", request(model, token_ids, k))
    except HTTPStatusError as error:
        if error.status == 400 and "logprob" in str(error).lower():
            raise ServedTeacherError(f"{error}. Fix: start vLLM with --max-logprobs {k} (its default is 20), or ask "
                                     "for fewer (top_k / teacher_top_k).") from None
        raise
    return parse(reply, token_ids, k)


def version(client: ServedClient) -> str | None:
    reply = client.get("/version", absolute=True)
    return None if reply is None else reply.get("version")
