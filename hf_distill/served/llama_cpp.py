"""llama.cpp through llama-cpp-python's server (``python -m llama_cpp.server --model X.gguf --logits_all true``):
prompt log-probabilities keyed by token *strings*, mapped back to ids here.

Request (``POST /v1/completions``)::

    {"model": M, "prompt": TEXT, "max_tokens": 1, "temperature": 0, "echo": true, "logprobs": k}

Reply: ``choices[0].logprobs`` with ``tokens`` (the prompt's tokens as strings, then the one generated) and
``top_logprobs`` (one ``{string: logprob}`` per token, the first null). The server takes text, not ids (its
``prompt`` is a string), so the text of our ids is sent and the tokens it echoes are checked, string for string,
against ours: a text that its tokenizer cuts differently is refused.

Which row is which: llama-cpp-python 0.3 pairs the i-th echoed token with the logits at position i after dropping
a leading BOS, and leaves BOS tokens out of the echo (:func:`_echo_rows` redoes that bookkeeping). So entry i is
row i (position i, predicting token i + 1) in both cases; the first row never comes back (the first entry is
null), and is asked with a second, one-token request when it carries loss; rows predicting a BOS token (SmolLM2's
``<|im_start|>`` is its BOS) never come back, and an error says so if one carries loss.

Limits (llama-cpp-python 0.3): the server must be started with ``--logits_all true`` (else no log-probabilities);
each request is scored alone, and the echo costs ~0.1-0.3 s per prompt token on a CPU (it sorts the whole
vocabulary in Python at every position): fine for tests and small caches, not for millions of tokens; a token is named
by its text decoded with ``errors="ignore"``, and special tokens render as ``""``. So several ids can share a
string: special tokens and partial UTF-8 byte tokens all read ``""``, and such a dict keeps one of them. Those
entries are refused (``teacher_ambiguous_tokens="error"``, the default) or their probability is counted in the rest
bucket (``"tail"``): the loss then sees fewer distinct tokens at those positions, never a wrong id. For exact ids
serve the teacher with vLLM. The engine version is read from the server's ``/openapi.json``.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from hf_distill.served.client import ServedClient, ServedTeacherError
from hf_distill.served.vllm import TokenMismatchError

NAME = "llama_cpp"
_EXTRA = 8  # entries asked beyond k, so that k unambiguous ones remain where a few are refused into the tail


class AmbiguousTokenError(ServedTeacherError):
    """A top-k string that names several token ids (or none) of the tokenizer."""


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: the unicode character standing for each byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return {chr(code): byte for byte, code in zip(printable, codes)}


def token_bytes(piece: str) -> bytes:
    """The bytes a vocabulary entry stands for: GPT-2 byte-level BPE, SentencePiece (``▁`` and ``<0xNN>``)."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return bytes([int(piece[3:5], 16)])
    decoder = _byte_decoder()
    if all(char in decoder for char in piece):
        return bytes(decoder[char] for char in piece)
    return piece.replace("▁", " ").encode()


class TokenStrings:
    """Each id's string as llama-cpp-python's server writes it, and the ids behind each string."""

    def __init__(self, tokenizer):
        special = set(tokenizer.all_special_ids) | {
            i for i, token in getattr(tokenizer, "added_tokens_decoder", {}).items() if token.special}
        pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        self.strings = ["" if i in special or piece is None else token_bytes(piece).decode("utf-8", "ignore")
                        for i, piece in enumerate(pieces)]
        self.ids: dict[str, list[int]] = {}
        for i, text in enumerate(self.strings):
            self.ids.setdefault(text, []).append(i)

    def lookup(self, text: str) -> list[int]:
        return self.ids.get(text, [])


def request(model: str, text: str, k: int, echo: bool = True) -> dict:
    return {"model": model, "prompt": text, "max_tokens": 1, "temperature": 0.0, "echo": echo, "logprobs": k + _EXTRA}


def _echo_rows(token_ids: list[int], bos: int | None) -> tuple[list[int], dict[int, int]]:
    """What llama-cpp-python (0.3) echoes for the prompt ``token_ids`` and which of our rows each entry holds.

    It drops a leading BOS, pairs the i-th remaining token with the logits at position i, and leaves out every BOS
    token. So after a leading BOS entry i is the distribution of its own token (what OpenAI's API promises), without
    one it is the distribution of the *next* token; in both cases entry i holds row i (position i predicts token
    i + 1). Returns the echoed tokens and ``{row: entry}``.
    """
    tokens = token_ids[1:] if token_ids and token_ids[0] == bos else token_ids
    echoed, entry_of = [], {}
    for row, token in enumerate(tokens):
        if token == bos:
            continue
        entry_of[row] = len(echoed)
        echoed.append(token)
    return echoed, entry_of


def _top_k_row(entries: dict | None, k: int, strings: TokenStrings, ambiguous: str, where: str):
    """The k most likely entries of one ``{string: logprob}`` dict whose string names exactly one id."""
    kept = []
    for text, value in sorted((entries or {}).items(), key=lambda item: -item[1]):
        ids = strings.lookup(text)
        if len(ids) != 1:
            if ambiguous == "error" and len(kept) < k:
                raise AmbiguousTokenError(
                    f"{where}: the server names a top-{k} token {text!r}, which is "
                    + (f"{len(ids)} different ids ({ids[:5]}...)" if ids else "no id of this tokenizer")
                    + ". Fix: serve the teacher with vLLM (token ids), or set teacher_ambiguous_tokens='tail' to count "
                    "such entries in the rest bucket."
                )
            continue
        if len(kept) < k:
            kept.append((ids[0], value))
    taken = {i for i, _ in kept}
    filler = (i for i in range(len(strings.strings)) if i not in taken)
    while len(kept) < k:  # probability 0: unused ids, distinct, never a real teacher guess
        kept.append((next(filler), -np.inf))
    return [i for i, _ in kept], [v for _, v in kept]


def parse(reply: dict, token_ids: list[int], k: int, strings: TokenStrings, bos: int | None,
          ambiguous: str = "error"):
    """Top-k ids ``(T-1, k)``, log-probs ``(T-1, k)`` and which rows the server gave ``(T-1,)`` (row t: position t,
    predicting token t + 1), as :func:`hf_distill.served.vllm.parse`.

    Entries whose string names several ids are refused or left to the rest bucket (``ambiguous="tail"``); the row
    is then filled with the next unambiguous ones (``k + 8`` are asked) and, if even those run out, with unused ids
    at log-probability ``-inf`` (probability 0, which the loss treats as absent). The server never gives the first
    row, nor rows that predict a BOS token.
    """
    try:
        logprobs = reply["choices"][0]["logprobs"]
        tokens, rows = logprobs["tokens"], logprobs["top_logprobs"]
    except (KeyError, IndexError, TypeError):
        raise ServedTeacherError(
            "The reply has no echoed log-probabilities: start llama-cpp-python's server with --logits_all true."
        ) from None
    prompt_tokens = (reply.get("usage") or {}).get("prompt_tokens")
    if prompt_tokens is not None and prompt_tokens != len(token_ids):
        raise TokenMismatchError(
            f"The server scored {prompt_tokens} prompt tokens for the {len(token_ids)} sent: it adds a BOS token (or "
            "tokenizes differently), so the teacher would not see the training sequence."
        )
    echoed, entry_of = _echo_rows(list(token_ids), bos)
    expected = [strings.strings[i] for i in echoed]
    if tokens[: len(expected)] != expected:
        first = next((j for j, (a, b) in enumerate(zip(tokens, expected)) if a != b), len(tokens))
        raise TokenMismatchError(
            f"The server tokenized the prompt differently (first difference at token {first}: ours "
            f"{expected[first:first + 3]!r}, its {tokens[first:first + 3]!r}). The text of these ids does not "
            "round-trip through its tokenizer; serve the teacher with vLLM (token ids in) for such data."
        )
    out_ids = np.zeros((len(token_ids) - 1, k), np.int64)
    out_logprobs = np.full((len(token_ids) - 1, k), -np.inf, np.float32)
    known = np.zeros(len(token_ids) - 1, bool)
    for row in range(len(token_ids) - 1):
        entry = entry_of.get(row)
        if entry is None or entry >= len(rows) or rows[entry] is None:
            continue
        out_ids[row], out_logprobs[row] = _top_k_row(rows[entry], k, strings, ambiguous, f"Position {row}")
        known[row] = True
    return out_ids, out_logprobs, known


def prompt_top_k(client: ServedClient, model: str, token_ids: list[int], k: int, tokenizer, strings: TokenStrings,
                 ambiguous: str = "error", need_first: bool = False):
    """Ids, log-probs and known rows, as :func:`parse`; ``need_first``: also ask for row 0 (the distribution after
    the first token), which the echo never gives, with a second one-token request."""
    def text(ids):
        return tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    bos = tokenizer.bos_token_id
    ids, logprobs, known = parse(client.post("/completions", request(model, text(token_ids), k)), token_ids, k,
                                 strings, bos, ambiguous)
    if need_first and not known[0]:
        reply = client.post("/completions", request(model, text(token_ids[:1]), k, echo=False))
        first = (reply["choices"][0].get("logprobs") or {}).get("top_logprobs") or [None]
        if (reply.get("usage") or {}).get("prompt_tokens") == 1 and first[0] is not None:
            ids[0], logprobs[0] = _top_k_row(first[0], k, strings, ambiguous, "Position 0")
            known[0] = True
    return ids, logprobs, known


def version(client: ServedClient) -> str | None:
    reply = client.get("/openapi.json", absolute=True) or {}
    info = reply.get("info") or {}
    return f"llama-cpp-python {info['version']}" if "version" in info else None
