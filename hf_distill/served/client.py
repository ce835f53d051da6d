"""`ServedClient`: JSON requests to an OpenAI-compatible server, many in flight, retried, counted.

    client = ServedClient("http://localhost:8000/v1", concurrency=16, api_key_env="HF_DISTILL_TEACHER_API_KEY")
    replies = client.map(lambda body: client.post("/completions", body), bodies)  # in order, 16 at a time
    client.usage.as_dict()  # requests, retries, prompt/completion tokens, seconds

Written on the standard library (``http.client`` with one keep-alive connection per worker thread, a thread pool
for bounded concurrency): an HTTP client is the one thing every engine shares, and the retry policy is ours anyway
(httpx retries only failed connects, not 429/5xx). The API key is read from the environment variable named by
``api_key_env`` when a request is sent; it is never an argument, never stored on the client, never logged, and no
error message includes a request header.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urlsplit

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
"""Statuses worth another try: rate limits, overload, a server restarting. Other 4xx are our mistakes: no retry."""


class ServedTeacherError(RuntimeError):
    """A served teacher that cannot answer: unreachable, out of retries, or a reply we cannot use."""


@dataclass
class Usage:
    """What the server was asked, summed over all requests (``usage`` of the OpenAI replies)."""

    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0  # wall time spent inside `map`/`post` calls from the caller's point of view
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, reply: dict) -> None:
        usage = reply.get("usage") or {}
        with self._lock:
            self.requests += 1
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(usage.get("completion_tokens") or 0)

    def as_dict(self) -> dict:
        values = {k: getattr(self, k) for k in ("requests", "retries", "prompt_tokens", "completion_tokens")}
        values["seconds"] = round(self.seconds, 3)
        values["requests_per_s"] = round(self.requests / self.seconds, 3) if self.seconds else None
        values["completion_tokens_per_s"] = round(self.completion_tokens / self.seconds, 1) if self.seconds else None
        return values

    def since(self, before: dict) -> dict:
        """The counts added after ``before`` (an earlier :meth:`as_dict`), with their own rates."""
        now = self.as_dict()
        delta = {k: now[k] - before[k] for k in ("requests", "retries", "prompt_tokens", "completion_tokens")}
        seconds = round(now["seconds"] - before["seconds"], 3)
        return {**delta, "seconds": seconds,
                "requests_per_s": round(delta["requests"] / seconds, 3) if seconds > 0 else None,
                "completion_tokens_per_s": round(delta["completion_tokens"] / seconds, 1) if seconds > 0 else None}


class ServedClient:
    """Talks to ``base_url`` (``http(s)://host:port/v1``).

    Args:
        concurrency: requests in flight at most (worker threads of :meth:`map` and :meth:`submit`).
        max_retries: further tries of a request after a timeout, a dropped connection or a status in
            :data:`RETRY_STATUSES`, waiting ``backoff * 2**attempt`` seconds (jittered, at most 30 s; a
            ``Retry-After`` header wins).
        timeout: seconds to wait for one reply.
        api_key_env: name of the environment variable holding the API key (sent as ``Authorization: Bearer``);
            nothing is sent when it is unset or empty.
    """

    def __init__(self, base_url: str, *, concurrency: int = 8, max_retries: int = 5, timeout: float = 120.0,
                 backoff: float = 0.5, api_key_env: str | None = None):
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"teacher_url must look like http://host:port/v1, got {base_url!r}")
        if parts.username or parts.password:
            raise ValueError("teacher_url must not hold credentials: put the API key in the environment variable "
                             "named by teacher_api_key_env instead.")
        if concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise ValueError(f"concurrency >= 1, max_retries >= 0 and timeout > 0 are needed, got {concurrency}, "
                             f"{max_retries}, {timeout}")
        self.base_url = f"{parts.scheme}://{parts.netloc}{parts.path}"
        self._https, self._host, self._port = parts.scheme == "https", parts.hostname, parts.port
        self._prefix = parts.path
        self.concurrency, self.max_retries, self.timeout, self.backoff = concurrency, max_retries, timeout, backoff
        self.api_key_env = api_key_env
        self.usage = Usage()
        self._local = threading.local()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ServedClient({self.base_url!r}, concurrency={self.concurrency})"

    # -- one request ------------------------------------------------------------------------------------------------

    def post(self, path: str, body: dict) -> dict:
        """POST ``body`` as JSON to ``base_url + path``; the decoded reply, after retries."""
        reply = self._request("POST", self._prefix + path, body)
        self.usage.add(reply)
        return reply

    def get(self, path: str, *, absolute: bool = False) -> dict | None:
        """GET ``base_url + path`` (``absolute``: ``path`` from the server's root); None on 404."""
        try:
            return self._request("GET", path if absolute else self._prefix + path, None, retries=1)
        except HTTPStatusError as error:
            if error.status in (404, 405):
                return None
            raise

    def _connection(self, fresh: bool = False) -> http.client.HTTPConnection:
        connection = getattr(self._local, "connection", None)
        if connection is None or fresh:
            if connection is not None:
                connection.close()
            kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            connection = self._local.connection = kind(self._host, self._port, timeout=self.timeout)
        return connection

    def _headers(self) -> dict:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _request(self, method: str, path: str, body: dict | None, retries: int | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        retries = self.max_retries if retries is None else retries
        where = f"{method} {self.base_url}{path[len(self._prefix):]}" if path.startswith(self._prefix) else path
        for attempt in range(retries + 1):
            wait = None
            try:
                connection = self._connection(fresh=attempt > 0)
                connection.request(method, path, body=data, headers=self._headers())
                response = connection.getresponse()
                payload = response.read()
            except (TimeoutError, ConnectionError, http.client.HTTPException, OSError) as failure:
                error: Exception = failure
            else:
                if response.status == 200:
                    try:
                        return json.loads(payload)
                    except json.JSONDecodeError as failure:
                        raise ServedTeacherError(f"{where} did not answer JSON ({failure}). Is teacher_url the "
                                                 "server's /v1 address?") from None
                error = HTTPStatusError(where, response.status, payload)
                if response.status not in RETRY_STATUSES:
                    raise error
                wait = _retry_after(response.getheader("Retry-After"))
            if attempt == retries:
                break
            with self.usage._lock:
                self.usage.retries += 1
            time.sleep(wait if wait is not None else min(30.0, self.backoff * 2**attempt) * random.uniform(0.5, 1.5))
        raise ServedTeacherError(
            f"{where} failed {retries + 1} times; last error: {error}. Fix: check that the server is up at "
            "teacher_url (curl it), lower teacher_concurrency if it is overloaded, or raise teacher_timeout / "
            "teacher_max_retries."
        )

    # -- many requests ----------------------------------------------------------------------------------------------

    def submit(self, function: Callable, *args) -> Future:
        """Run ``function(*args)`` on one of the ``concurrency`` worker threads."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="served-teacher")
        return self._pool.submit(function, *args)

    def map(self, function: Callable, items: Iterable) -> list:
        """``[function(item) for item in items]``, ``concurrency`` at a time; the first error is raised (the
        requests not yet started are cancelled)."""
        started = time.perf_counter()
        futures = [self.submit(function, item) for item in items]
        try:
            return [future.result() for future in futures]
        finally:
            for future in futures:
                future.cancel()
            with self.usage._lock:
                self.usage.seconds += time.perf_counter() - started

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class HTTPStatusError(ServedTeacherError):
    """The server answered with an error status; ``status`` is it, the message holds the reply's first 500 bytes."""

    def __init__(self, where: str, status: int, payload: bytes):
        self.status = status
        super().__init__(f"{where} answered HTTP {status}: {payload.decode('utf-8', 'replace')[:500]}")


def _retry_after(value: str | None) -> float | None:
    try:
        return min(60.0, max(0.0, float(value))) if value is not None else None
    except ValueError:  # an HTTP date: fall back to our own backoff
        return None
