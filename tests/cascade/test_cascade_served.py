"""A served root teacher in a recipe (`teacher: {url: ..., model: ...}`): the first stage's traces are sampled over
HTTP, its logit KD is online KD from the server's prompt log-probabilities, the teacher is evaluated through the
server, and the API key (from the environment) never reaches the manifest, the traces or the card. A loopback server
plays the engine: vLLM's reply shapes, scores computed by a real tiny model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import save_arithmetic_teacher
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from hf_distill.cascade import parse_recipe
from hf_distill.cascade.runner import CascadeRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "served"))
from fake_server import FakeServer, vllm_handler  # noqa: E402

SECRET = "sk-test-4f9c1e77b2"  # what the environment variable holds: must appear in no file


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """A tiny Llama and the cascade's byte-level BPE, saved as the model the fake server scores with."""
    return save_arithmetic_teacher(tmp_path_factory.mktemp("teacher"))


def recipe(url: str, tokenizer: str) -> dict:
    return {
        "name": "served", "tokenizer": tokenizer,
        "teacher": {"url": url, "model": "teacher-7b", "api_key_env": "TEST_SERVED_TEACHER_KEY", "engine": "vllm",
                    "concurrency": 2},
        "data": {"dataset": "arithmetic", "generator": {"n_train": 6, "n_test": 2, "min_steps": 1, "max_steps": 1}},
        "evaluation": {"num_examples": 2, "max_new_tokens": 8},
        "stages": [{"name": "s1", "method": ["traces", "logit"],
                    "student": {"config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                           "num_hidden_layers": 1, "num_attention_heads": 4,
                                           "num_key_value_heads": 2}},
                    "traces": {"num_samples": 1, "temperature": 0.0, "max_new_tokens": 32, "shard_size": 4},
                    "training": {"max_steps": 2, "per_device_train_batch_size": 2, "teacher_top_k": 4,
                                 "max_length": 96}}],
    }


def engine(golds: dict[str, str], scorer):
    """Chat requests answered with the gold rationale (a teacher that is always right); completions with
    prompt_logprobs scored by ``scorer`` (vLLM's reply)."""

    def handle(method, path, body):
        if path == "/v1/chat/completions":
            text = golds[body["messages"][-1]["content"]]
            return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}], "usage": {"prompt_tokens": 9, "completion_tokens": 9}}
        return scorer(method, path, body)

    return handle


def test_first_stage_learns_from_a_served_teacher_without_the_key_on_disk(teacher_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_SERVED_TEACHER_KEY", SECRET)
    probe = CascadeRunner(parse_recipe(recipe("http://127.0.0.1:9/v1", str(teacher_dir))), tmp_path / "probe")
    data = probe.dataset(probe.recipe.stages[0])
    golds = {row["question"]: row["answer"] for split in ("train", "test") for row in data[split]}
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    server = FakeServer(engine(golds, vllm_handler("teacher-7b", teacher)))
    try:
        logs: list[str] = []
        out = tmp_path / "out"
        manifest = CascadeRunner(parse_recipe(recipe(server.url, str(teacher_dir))), out, log=logs.append).run()
    finally:
        server.close()
    stage = manifest["stages"]["s1"]
    assert stage["status"] == "done" and stage["teacher"] == "teacher-7b (served)"
    # evaluated through the server (its answers are the gold ones), so the student's agreement is measured
    assert manifest["root"]["metrics"]["accuracy"] == 1.0 and manifest["root"]["metrics"]["eval_examples"] == 2
    assert "agreement_with_teacher" in stage["metrics"] and "accuracy_kept" in stage["metrics"]
    chats, scored = server.posts("/chat/completions"), server.posts("/completions")
    assert len(chats) == 6 + 2  # one trace per training problem, one answer per test problem
    assert len(scored) >= 2 * 2 and all(r["body"]["prompt_logprobs"] == 4 for r in scored)  # online KD, top-4
    assert {r["headers"].get("Authorization") for r in chats + scored} == {f"Bearer {SECRET}"}
    traces = (out / "stages" / "s1" / "traces" / "manifest.json").read_text()
    assert '"teacher-7b"' in traces
    written = [path for path in out.rglob("*") if path.is_file()]
    assert len(written) > 10 and not [path for path in written if SECRET.encode() in path.read_bytes()]
    card = ModelCard.load(out / "stages" / "s1" / "model" / "README.md")
    assert "teacher `teacher-7b`" in card.text and server.url not in card.text


def test_dry_run_plan_keeps_a_served_teacher_out_of_the_stage_memory():
    """The served teacher's weights live in the inference server: the plan names it and counts no teacher memory
    for the first stage, only the student's training, activations and the KD loss."""
    raw = recipe("http://127.0.0.1:9/v1", "unused")
    raw["tokenizer"] = {"vocab_size": 300}
    raw["teacher"]["config"] = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
                                "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}
    from hf_distill.cascade.plan import build_plan

    plan = build_plan(parse_recipe(raw))[0]
    assert plan.teacher == "teacher-7b (served)"
    assert "teacher" not in plan.memory and plan.memory["kd loss"] > 0
    assert plan.teacher_layout is None and plan.memory_per_rank(2).keys() == plan.memory.keys() | {"student gathered"}
