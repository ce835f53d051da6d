"""Latency of an OpenAI-compatible server as a user sees it: time to first token (TTFT), tokens/s and p50/p95
latency at a few concurrency levels, from streamed requests (the only way to see the first token arrive).

    rows = bench_serve("http://127.0.0.1:8000/v1", prompts, concurrency=(1, 4, 16), max_tokens=64)

Standard library only (``http.client`` + threads): the client must not be what is measured, and must not need the
``openai`` package. Requests ask for temperature 0 and nothing else a standard server would refuse (llama.cpp's
server then still applies its default repeat penalty, 1.1: it changes which tokens come, not how fast). Tokens are
counted as streamed chunks, one per generated token in llama.cpp's server (an
OpenAI server that batches several tokens in a chunk would be under-counted: ``usage`` is not streamed by all).
"""

from __future__ import annotations

import http.client
import json
import statistics
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from tqdm.auto import tqdm


@dataclass
class RequestTiming:
    ttft: float
    """Seconds from sending the request to the first generated token."""
    latency: float
    """Seconds from sending the request to the end of the stream."""
    tokens: int


@dataclass
class LevelResult:
    """One concurrency level: ``requests`` requests, at most ``concurrency`` in flight at once."""

    concurrency: int
    requests: int
    ttft_p50: float
    ttft_p95: float
    latency_p50: float
    latency_p95: float
    tokens_per_second: float
    """Per request: generated tokens over its latency (what one user sees), median over requests."""
    throughput: float
    """All requests: generated tokens over the level's wall time (what the server delivers)."""
    mean_tokens: float

    def as_dict(self) -> dict:
        return asdict(self)


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation (numpy's default), for lists of any length."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def _split(url: str) -> tuple[str, int, str, str]:
    parts = urllib.parse.urlsplit(url.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not a server URL: pass e.g. http://127.0.0.1:8000/v1")
    path = parts.path if parts.path.endswith("/v1") else f"{parts.path}/v1"
    return parts.scheme, parts.port or (443 if parts.scheme == "https" else 80), parts.hostname, path


def stream_request(url: str, model: str, prompt: str, max_tokens: int, chat: bool = True,
                   timeout: float = 300.0, extra_body: dict | None = None) -> RequestTiming:
    """One streamed, greedy request; times its first token and its end. ``extra_body``: more request fields, e.g.
    ``{"logit_bias": {"2": -100}}`` (standard OpenAI) so that a model that stops at once still produces
    ``max_tokens`` tokens to time."""
    scheme, port, host, base = _split(url)
    body = {"model": model, "max_tokens": max_tokens, "temperature": 0.0, "stream": True, **(extra_body or {})}
    body |= {"messages": [{"role": "user", "content": prompt}]} if chat else {"prompt": prompt}
    connection = (http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection)(
        host, port, timeout=timeout)
    start = time.perf_counter()
    first, tokens = None, 0
    try:
        connection.request("POST", f"{base}/{'chat/completions' if chat else 'completions'}", json.dumps(body),
                           {"Content-Type": "application/json", "Accept": "text/event-stream"})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}: {response.read()[:300]!r}")
        for raw in response:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            choices = json.loads(data).get("choices") or [{}]
            piece = choices[0].get("delta", {}).get("content") if chat else choices[0].get("text")
            if piece is None or (piece == "" and choices[0].get("finish_reason")):
                continue  # the role-only first chunk of a chat stream, or the closing chunk
            tokens += 1
            if first is None:
                first = time.perf_counter()
    finally:
        connection.close()
    end = time.perf_counter()
    return RequestTiming(ttft=(first or end) - start, latency=end - start, tokens=tokens)


def served_model(url: str, timeout: float = 10.0) -> str:
    """The first model id the server lists at ``/v1/models``."""
    scheme, port, host, base = _split(url)
    connection = (http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection)(
        host, port, timeout=timeout)
    try:
        connection.request("GET", f"{base}/models")
        return json.loads(connection.getresponse().read())["data"][0]["id"]
    finally:
        connection.close()


def summarise(concurrency: int, timings: list[RequestTiming], wall: float) -> LevelResult:
    return LevelResult(
        concurrency=concurrency, requests=len(timings),
        ttft_p50=percentile([t.ttft for t in timings], 50), ttft_p95=percentile([t.ttft for t in timings], 95),
        latency_p50=percentile([t.latency for t in timings], 50),
        latency_p95=percentile([t.latency for t in timings], 95),
        tokens_per_second=statistics.median(t.tokens / t.latency for t in timings if t.latency > 0),
        throughput=sum(t.tokens for t in timings) / wall, mean_tokens=statistics.fmean(t.tokens for t in timings),
    )


def bench_serve(url: str, prompts: list[str], concurrency: tuple[int, ...] = (1, 4, 16), max_tokens: int = 64,
                requests: int | None = None, chat: bool = True, model: str | None = None, warmup: bool = True,
                progress: bool = True, extra_body: dict | None = None) -> list[LevelResult]:
    """Measure the server at ``url`` at each concurrency level: ``requests`` (default: the level, at least 4)
    streamed requests cycling through ``prompts``, at most ``level`` in flight. A warm-up request first (the first
    one pays for loading pages of the model)."""
    if not prompts:
        raise ValueError("bench_serve needs at least one prompt")
    if any(level < 1 for level in concurrency):
        raise ValueError(f"concurrency levels must be >= 1, got {concurrency}")
    model = model or served_model(url)
    if warmup:
        stream_request(url, model, prompts[0], min(max_tokens, 8), chat, extra_body=extra_body)
    counts = [requests or max(level, 4) for level in concurrency]
    results = []
    with tqdm(total=sum(counts), desc="bench-serve", unit="req", disable=not progress) as bar:
        for level, count in zip(concurrency, counts):
            bar.set_postfix(concurrency=level)

            def one(index: int) -> RequestTiming:
                timing = stream_request(url, model, prompts[index % len(prompts)], max_tokens, chat,
                                        extra_body=extra_body)
                bar.update(1)
                return timing

            start = time.perf_counter()
            with ThreadPoolExecutor(max_workers=level) as pool:
                timings = list(pool.map(one, range(count)))
            results.append(summarise(level, timings, time.perf_counter() - start))
    return results
