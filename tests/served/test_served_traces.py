"""Traces from a served teacher: n with fallback, sampling fields, bounded concurrency, retries, the API key, resume
without re-asking, usage in the manifest; and the client's error handling. A loopback server plays the engine."""

import json
import random
import threading
import time

import pytest
from datasets import Dataset
from fake_server import FakeServer, models_reply

from hf_distill.cli.main import main as cli_main
from hf_distill.served.client import ServedClient, ServedTeacherError
from hf_distill.traces import TraceConfig, collect_traces

PROBLEMS = [{"question": f"Ann has {a} pens and buys {b} more. How many pens?", "answer": f"{a}+{b} = {a + b}\n"
             f"#### {a + b}"} for a, b in [(3, 4), (5, 2), (8, 1), (2, 2), (6, 3)]]


def answers(question: str) -> list[str]:
    numbers = [int(word) for word in question.split() if word.isdigit()]
    if len(numbers) != 2:
        return ["I cannot say.\n#### 0"]
    a, b = numbers
    return [f"{a}+{b} = {a + b}\n#### {a + b}", f"{a}*{b} = {a * b}\n#### {a * b}", f"{a}+{b} = {a + b}\n#### {a + b}"]


class ChatEngine:
    """Answers /v1/chat/completions from `answers`, seeded by the request's seed; `honour_n=False` returns one
    choice whatever n is (llama.cpp's server); `fail` maps a request number to a status to answer instead."""

    def __init__(self, honour_n=True, fail=None, delay=0.0):
        self.honour_n, self.fail, self.delay, self.count, self.in_flight, self.peak = honour_n, fail or {}, delay, 0, 0, 0
        self.lock = threading.Lock()

    def __call__(self, method, path, body):
        if path == "/v1/models":
            return 200, models_reply("teacher-7b", "vllm")
        with self.lock:
            self.count += 1
            number = self.count
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            time.sleep(self.delay)
            if number in self.fail:
                return self.fail[number], {"error": {"message": "busy"}}, {"Retry-After": "0"}
            question = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
            rng = random.Random(body.get("seed"))
            n = body["n"] if self.honour_n else 1
            texts = [rng.choice(answers(question)) for _ in range(n)]
            key = "message" if "messages" in body else "text"
            choices = [{"index": i, key: {"role": "assistant", "content": t} if key == "message" else t,
                        "finish_reason": "stop"} for i, t in enumerate(texts)]
            return 200, {"choices": choices, "usage": {"prompt_tokens": 20, "completion_tokens": 7 * n}}
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture
def engine_server():
    servers = []

    def start(engine):
        servers.append(FakeServer(engine))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def config(url, **overrides):
    values = dict(teacher_url=url, num_samples=3, temperature=0.8, top_p=0.9, max_new_tokens=32, shard_size=2,
                  teacher_concurrency=2, teacher_max_retries=2, seed=5)
    return TraceConfig(**{**values, **overrides})


def test_served_traces_are_verified_and_sharded_with_usage_in_the_manifest(tmp_path, engine_server):
    engine = ChatEngine()
    server = engine_server(engine)
    lines = []
    traces = collect_traces(None, None, Dataset.from_list(PROBLEMS), tmp_path, config(server.url), log=lines.append)
    # every kept trace is a verified one and names the served model
    assert set(traces["verified"]) == {True} and set(traces["teacher"]) == {"teacher-7b"}
    assert all(c[0]["content"].endswith(f"#### {eval(c[0]['content'].split(' =')[0])}") for c in traces["completion"])
    posts = server.posts("/chat/completions")
    assert len(posts) == len(PROBLEMS)  # one request per problem: the engine returned all n choices
    body = posts[0]["body"]
    assert {body["n"], body["temperature"], body["top_p"], body["max_tokens"]} == {3, 0.8, 0.9, 32}
    assert body["model"] == "teacher-7b" and body["messages"][-1]["role"] == "user"
    assert sorted(p["body"]["seed"] for p in posts) == [5 + 3 * p for p in range(len(PROBLEMS))]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(manifest["shards"]) == 3 and manifest["teacher"]["name"] == "teacher-7b"
    assert manifest["usage"]["requests"] == 5 and manifest["usage"]["completion_tokens"] == 5 * 21
    assert manifest["usage"]["requests_per_s"] > 0
    assert any("requests/s" in line and "105 completion tokens" in line for line in lines)
    assert not (tmp_path / "requests").exists() or not any((tmp_path / "requests").iterdir())  # journals superseded


def test_engines_that_ignore_n_are_asked_once_per_sample_with_distinct_seeds(tmp_path, engine_server):
    server = engine_server(ChatEngine(honour_n=False))
    collect_traces(None, None, Dataset.from_list(PROBLEMS[:2]), tmp_path, config(server.url, shard_size=4))
    posts = server.posts("/chat/completions")
    assert len(posts) == 2 * 3
    assert sorted(p["body"]["seed"] for p in posts) == [5, 6, 7, 8, 9, 10]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["shards"][0]["num_samples"] == 6


def test_requests_stay_within_the_concurrency_bound_and_are_retried_on_429_and_503(tmp_path, engine_server):
    engine = ChatEngine(fail={1: 429, 2: 503}, delay=0.05)
    server = engine_server(engine)
    traces = collect_traces(None, None, Dataset.from_list(PROBLEMS), tmp_path,
                            config(server.url, shard_size=5, teacher_concurrency=3))
    assert engine.peak <= 3 and engine.peak >= 2  # several in flight, never more than the bound
    assert len(server.posts("/chat/completions")) == len(PROBLEMS) + 2  # two retried requests
    assert json.loads((tmp_path / "manifest.json").read_text())["usage"]["retries"] == 2
    assert len(traces) > 0


def test_a_killed_run_resumes_without_re_asking_answered_prompts(tmp_path, engine_server):
    data = Dataset.from_list(PROBLEMS)
    # the server breaks down at its 4th request: shard 0 (problems 0-1) is written, problem 2 is journaled
    broken = engine_server(ChatEngine(fail={n: 500 for n in range(4, 100)}))
    with pytest.raises(ServedTeacherError, match="failed 1 times"):
        collect_traces(None, None, data, tmp_path, config(broken.url, teacher_max_retries=0, teacher_concurrency=1))
    healthy = engine_server(ChatEngine())
    resumed = collect_traces(None, None, data, tmp_path, config(healthy.url))
    asked = sorted(post["body"]["seed"] for post in healthy.posts("/chat/completions"))
    assert asked == [5 + 3 * 3, 5 + 3 * 4]  # only problems 3 and 4: 0-1 are in a shard, 2 in the journal
    fresh = collect_traces(None, None, data, tmp_path / "fresh", config(engine_server(ChatEngine()).url))
    assert resumed["completion"] == fresh["completion"]  # the same seeds, the same traces as one uninterrupted run


def test_the_api_key_is_read_from_the_named_variable_and_written_nowhere(tmp_path, engine_server, monkeypatch,
                                                                          capsys):
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("MY_TEACHER_KEY", secret)
    server = engine_server(ChatEngine())
    code = cli_main(["traces", "--teacher_url", server.url, "--teacher_api_key_env", "MY_TEACHER_KEY",
                     "--dataset_name", "arithmetic", "--num_examples", "2", "--output_dir", str(tmp_path),
                     "--num_samples", "1", "--temperature", "0", "--no_keep_only_verified"])
    assert code == 0
    assert {r["headers"].get("Authorization") for r in server.requests if r["method"] == "POST"} == \
        {f"Bearer {secret}"}
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert written and not any(secret.encode() in p.read_bytes() for p in written)
    assert secret not in capsys.readouterr().out
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        TraceConfig(teacher_url=server.url, teacher_api_key_env=secret)


def test_client_refuses_bad_requests_at_once_and_names_the_fix_when_the_server_is_down(engine_server):
    server = engine_server(lambda method, path, body: (400, {"error": "bad model"}))
    client = ServedClient(server.url, max_retries=3)
    with pytest.raises(ServedTeacherError, match="HTTP 400.*bad model"):
        client.post("/chat/completions", {"model": "x"})
    assert len(server.requests) == 1  # a 4xx other than 429 is not retried
    server.close()
    down = ServedClient(server.url, max_retries=1, backoff=0.01, timeout=2)
    with pytest.raises(ServedTeacherError, match="failed 2 times.*server is up"):
        down.post("/completions", {})
    with pytest.raises(ValueError, match="credentials"):
        ServedClient("http://user:pw@host:1/v1")
