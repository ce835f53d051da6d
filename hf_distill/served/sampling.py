"""Sampling text from a served teacher: ``n`` choices per prompt through the chat or completions endpoint.

    texts = sample(client, "chat", "my-teacher", messages, n=4, temperature=0.7, top_p=0.95, max_tokens=256, seed=0)

Engines differ in what they honour: vLLM and SGLang return ``n`` choices; llama.cpp's server ignores ``n`` (one
choice comes back), hosted APIs may cap it. When fewer choices come back than asked, the rest are asked one request
at a time, each with its own seed (``seed + i`` for the i-th sample), so the samples stay distinct and reproducible
on engines that honour seeds.
"""

from __future__ import annotations

from hf_distill.served.client import ServedClient, ServedTeacherError


def served_model_name(client: ServedClient, name: str | None) -> str:
    """``name`` checked against the server's ``/v1/models``, or the server's only model when ``name`` is None."""
    listing = client.get("/models")
    ids = [entry.get("id") for entry in (listing or {}).get("data", [])]
    if name is None:
        if len(ids) != 1:
            raise ValueError(f"The server at {client.base_url} serves {ids or 'no listed models'}: pick one with "
                             "teacher_served_model=NAME.")
        return ids[0]
    if ids and name not in ids:
        raise ValueError(f"The server at {client.base_url} does not serve {name!r}; it serves {ids}. Fix: "
                         "teacher_served_model must be one of those ids.")
    return name


def _body(endpoint: str, model: str, prompt, n: int, temperature: float, top_p: float, max_tokens: int,
          seed: int | None) -> dict:
    body = {"model": model, "n": n, "temperature": temperature, "max_tokens": max_tokens}
    if temperature > 0:
        body["top_p"] = top_p
    if seed is not None:
        body["seed"] = seed
    body["messages" if endpoint == "chat" else "prompt"] = prompt
    return body


def _texts(endpoint: str, reply: dict) -> list[str]:
    try:
        choices = sorted(reply["choices"], key=lambda choice: choice.get("index", 0))
        if endpoint == "chat":
            return [choice["message"].get("content") or "" for choice in choices]
        return [choice["text"] for choice in choices]
    except (KeyError, TypeError, AttributeError) as error:
        raise ServedTeacherError(f"The server's reply has no {endpoint} choices ({error!r}): {str(reply)[:300]}") \
            from None


def sample(client: ServedClient, endpoint: str, model: str, prompt, *, n: int, temperature: float, top_p: float,
           max_tokens: int, seed: int | None = None) -> list[str]:
    """``n`` sampled continuations of ``prompt`` (a list of chat messages, or a text for ``"completions"``)."""
    path = "/chat/completions" if endpoint == "chat" else "/completions"
    texts = _texts(endpoint, client.post(path, _body(endpoint, model, prompt, n, temperature, top_p, max_tokens,
                                                     seed)))[:n]
    while len(texts) < n:  # the engine ignored or capped `n`: ask for the rest one by one, each with its own seed
        one = _texts(endpoint, client.post(path, _body(endpoint, model, prompt, 1, temperature, top_p, max_tokens,
                                                       None if seed is None else seed + len(texts))))
        if not one:
            raise ServedTeacherError(f"The server returned no choice for a {endpoint} request.")
        texts.append(one[0])
    return texts
