"""Loopback HTTP servers speaking the OpenAI-compatible API, for the served-teacher tests.

``FakeServer(handler)`` answers every request with ``handler(method, path, body)`` → ``(status, payload[, headers])``
and records what it was sent. ``vllm_handler(model, tokenizer)`` answers ``/v1/completions`` with ``prompt_logprobs``
in vLLM's documented reply shape (``vllm/entrypoints/openai/completion/protocol.py``: ``CompletionResponseChoice``
with ``prompt_logprobs: list[dict[int, Logprob] | None]`` and ``prompt_token_ids``), computed by a real (tiny) causal
LM, so a cache collected through it can be compared with one collected in-process from the same model.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch


class FakeServer:
    def __init__(self, handler):
        self.handler, self.requests, self._lock = handler, [], threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

            def _answer(self, method):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                with owner._lock:
                    owner.requests.append({"method": method, "path": self.path, "body": body,
                                           "headers": dict(self.headers)})
                status, payload, *headers = owner.handler(method, self.path, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in (headers[0] if headers else {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._answer("GET")

            def do_POST(self):
                self._answer("POST")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def posts(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == "POST" and r["path"] == "/v1" + path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def models_reply(model: str, owned_by: str) -> dict:
    return {"object": "list", "data": [{"id": model, "object": "model", "owned_by": owned_by}]}


def vllm_handler(model_name: str, model, k_max: int = 20):
    """vLLM's /v1/models, /version and /v1/completions (prompt_logprobs, return_token_ids) over ``model``."""

    @torch.no_grad()
    def handle(method, path, body):
        if path == "/v1/models":
            return 200, models_reply(model_name, "vllm")
        if path == "/version":
            return 200, {"version": "0.11.0"}
        if path != "/v1/completions":
            return 404, {"error": "not found"}
        k = body["prompt_logprobs"]
        if k > k_max:  # vLLM's check against --max-logprobs
            return 400, {"object": "error", "message": f"Requested prompt logprobs of {k}, which is greater than "
                         f"max allowed: {k_max}", "type": "BadRequestError", "code": 400}
        ids = body["prompt"]
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)  # (T, V)
        rows = [None]
        for j in range(1, len(ids)):
            row = logprobs[j - 1]
            order = row.argsort(descending=True)
            ranks = {int(t): r + 1 for r, t in enumerate(order[: k].tolist())}
            rank_of_prompt = int((row > row[ids[j]]).sum()) + 1
            ranks.setdefault(ids[j], rank_of_prompt)
            rows.append({str(t): {"logprob": float(row[t]), "rank": r, "decoded_token": f"token_id:{t}"}
                         for t, r in ranks.items()})
        choice = {"index": 0, "text": "x", "logprobs": None, "finish_reason": "length", "stop_reason": None,
                  "token_ids": [0], "prompt_logprobs": rows, "prompt_token_ids": ids}
        usage = {"prompt_tokens": len(ids), "completion_tokens": 1, "total_tokens": len(ids) + 1}
        return 200, {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": model_name,
                     "choices": [choice], "usage": usage}

    return handle
