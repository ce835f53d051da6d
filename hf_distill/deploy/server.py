"""llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``, from ``llama-cpp-python``) for a GGUF file:
the command line, and a context manager that starts it on a loopback port and stops it (tests, benchmarks).

    with serving("s2.q4_k_m.gguf") as server:
        print(server.url)  # http://127.0.0.1:PORT/v1 ; chat, completions, models

The server answers one request at a time (one llama.cpp context behind a lock): concurrent requests queue, which is
what :mod:`hf_distill.deploy.bench` measures.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from hf_distill.deploy.gguf_export import require_llama_cpp


def server_command(gguf_path: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, n_ctx: int = 2048,
                   n_threads: int | None = None, model_alias: str | None = None, extra: list[str] = ()) -> list[str]:
    """The ``python -m llama_cpp.server`` command serving ``gguf_path`` (its chat template comes from the file).

    Requests queue instead of interrupting each other: llama-cpp-python's default (``--interrupt_requests True``)
    ends a streaming answer early whenever another request arrives, which no user of a shared server wants."""
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path), "--host", host, "--port",
               str(port), "--n_ctx", str(n_ctx), "--model_alias", model_alias or Path(gguf_path).stem,
               "--interrupt_requests", "False"]
    if n_threads:
        command += ["--n_threads", str(n_threads), "--n_threads_batch", str(n_threads)]
    return [*command, *extra]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


@dataclass
class RunningServer:
    process: subprocess.Popen
    url: str
    """The OpenAI base URL, ``http://HOST:PORT/v1``."""
    model: str
    """The model name it answers to."""


def wait_until_ready(url: str, process: subprocess.Popen | None = None, timeout: float = 120.0) -> str:
    """Poll ``URL/models`` until the server answers; returns the served model's id. Fails early if ``process``
    ended (its exit status and log say why)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=5) as response:
                return json.load(response)["data"][0]["id"]
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@contextlib.contextmanager
def serving(gguf_path: str | os.PathLike, port: int | None = None, n_ctx: int = 2048, n_threads: int | None = None,
            log_path: str | os.PathLike | None = None, timeout: float = 120.0,
            extra: list[str] = ()) -> Iterator[RunningServer]:
    """Start llama.cpp's server for ``gguf_path`` on a loopback port (a free one unless ``port``), wait until it
    answers, and stop it (SIGTERM, then SIGKILL) on exit. Its output goes to ``log_path`` (default: discarded).
    ``extra``: more server flags, e.g. ``["--logits_all", "true"]`` for a teacher scored on prompt log-probs."""
    require_llama_cpp("serving a GGUF file")
    if not Path(gguf_path).is_file():
        raise FileNotFoundError(f"{gguf_path} does not exist: export one with `hf-distill export STUDENT --gguf X`")
    port = port or free_port()
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    process = subprocess.Popen(server_command(gguf_path, port=port, n_ctx=n_ctx, n_threads=n_threads, extra=extra),
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        yield RunningServer(process, url, wait_until_ready(url, process, timeout))
    finally:
        stop(process)
        if log is not subprocess.DEVNULL:
            log.close()


def stop(process: subprocess.Popen, grace: float = 10.0) -> None:
    """End the server we started (its own process group, so uvicorn's workers go too)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
