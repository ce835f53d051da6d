"""`hf-distill push` against a fake Hub: huggingface_hub's real HTTP client with an httpx MockTransport.

Credible because everything above the socket is the real `huggingface_hub` code path (create_repo, preupload,
NDJSON commit with base64 file bodies, auth headers); the fake answers the documented endpoints and records what it
received, so the test sees exactly which bytes and headers would have left the machine.
"""

from __future__ import annotations

import base64
import json

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import constants

from hf_distill.cli.push import main as push_main
from hf_distill.hub import push_folder

TOKEN = "hf_FAKEtoken0123456789abcdefghijklmnop"


class FakeHub:
    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.auth: set[str] = set()
        self.created: list[dict] = []
        self.bodies: list[bytes] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        self.auth.add(request.headers.get("authorization", ""))
        body = request.read()
        self.bodies.append(body)
        path, host = request.url.path, f"{request.url.scheme}://{request.url.host}"
        if path == "/api/whoami-v2":
            return httpx2.Response(200, json={"name": "alice", "type": "user", "orgs": []})
        if path == "/api/repos/create":
            payload = json.loads(body)
            self.created.append(payload)
            repo_id = f"{payload.get('organization') or 'alice'}/{payload['name']}"
            return httpx2.Response(200, json={"url": f"{host}/{repo_id}", "name": repo_id, "id": repo_id})
        if path == "/api/validate-yaml":
            return httpx2.Response(200, json={})
        if "/preupload/" in path:
            files = json.loads(body)["files"]
            return httpx2.Response(200, json={"files": [{"path": f["path"], "uploadMode": "regular",
                                                         "shouldIgnore": False} for f in files]})
        if "/commit/" in path:
            for line in body.decode().splitlines():
                item = json.loads(line)
                if item["key"] == "file":
                    self.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
            return httpx2.Response(200, json={"commitUrl": f"{host}/alice/tiny/commit/abc123", "commitOid": "abc123"})
        return httpx2.Response(404, headers={"x-error-code": "EntryNotFound"}, json={"error": "not found"})


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub()
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.test")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    huggingface_hub.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(fake)))
    yield fake
    huggingface_hub.set_client_factory(lambda: httpx2.Client())
    huggingface_hub.close_session()


@pytest.fixture
def model_dir(tmp_path, tokenizer):
    from helpers import make_llama

    folder = tmp_path / "model"
    model = make_llama(len(tokenizer), hidden=32, layers=1)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "README.md").write_text("---\ntags:\n- distillation\n---\n# tiny\n")
    (folder / "training_args.bin").write_bytes(b"pickle")  # must never be uploaded
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    return folder


def test_push_uploads_safetensors_and_card_only(hub, model_dir):
    url = push_folder(model_dir, "alice/tiny", token=TOKEN, private=True)
    assert url.startswith("https://hub.test/alice/tiny/commit/")
    assert hub.created[0]["name"] == "tiny" and hub.created[0]["visibility"] == "private"
    assert "model.safetensors" in hub.files and "README.md" in hub.files and "config.json" in hub.files
    assert not [name for name in hub.files if name.endswith(".bin")]
    assert hub.files["README.md"] == (model_dir / "README.md").read_bytes()


def test_token_is_sent_but_never_written_or_printed(hub, model_dir, monkeypatch, capsys, caplog):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert push_main([str(model_dir), "--repo_id", "alice/tiny"]) == 0
    assert f"Bearer {TOKEN}" in hub.auth  # the token did authenticate the requests...
    out = capsys.readouterr()
    assert TOKEN not in out.out + out.err + caplog.text  # ...but is in no output,
    assert not any(TOKEN.encode() in body for body in hub.bodies)  # no uploaded byte,
    assert not any(TOKEN.encode() in f.read_bytes() for f in model_dir.rglob("*") if f.is_file())  # and no file


def test_push_refuses_a_folder_without_safetensors(hub, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    (folder / "README.md").write_text("# x\n")
    with pytest.raises(ValueError, match="safetensors"):
        push_folder(folder, "alice/x", token=TOKEN)
    assert hub.files == {} and hub.created == []


def test_cascade_stage_pushes_its_card_and_weights_without_leaking_the_token(hub, tmp_path):
    from hf_distill.cascade import parse_recipe
    from hf_distill.cascade.runner import run_cascade

    recipe = parse_recipe({
        "name": "pushed", "tokenizer": {"vocab_size": 300}, "evaluation": False,
        "data": {"generator": {"n_train": 16, "n_test": 2, "min_steps": 1, "max_steps": 1}},
        "stages": [{"name": "root", "method": "sft", "push_to_hub": {"repo_id": "alice/tiny", "private": True},
                    "training": {"max_steps": 1, "per_device_train_batch_size": 4},
                    "student": {"config": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64,
                                           "num_hidden_layers": 1, "num_attention_heads": 2}}}],
    })
    logs: list[str] = []
    manifest = run_cascade(recipe, tmp_path, log=logs.append, token=TOKEN)
    assert manifest["stages"]["root"]["pushed"].startswith("https://hub.test/alice/tiny/commit/")
    assert {"model.safetensors", "README.md", "tokenizer.json"} <= set(hub.files)
    assert b"# tiny" in hub.files["README.md"] and b"from_pretrained(\"alice/tiny\")" in hub.files["README.md"]
    assert f"Bearer {TOKEN}" in hub.auth
    assert not any(TOKEN in line for line in logs)
    assert not any(TOKEN.encode() in f.read_bytes() for f in tmp_path.rglob("*") if f.is_file())


def test_trainer_push_to_hub_uploads_our_card(hub, tmp_path, tokenizer, student):
    from datasets import Dataset
    from helpers import CORPUS, make_llama, tiny_config

    from hf_distill import DistillationTrainer

    teacher_dir = tmp_path / "my-teacher"
    make_llama(len(tokenizer), hidden=64, layers=2, seed=2).save_pretrained(teacher_dir)
    tokenizer.save_pretrained(teacher_dir)
    args = tiny_config(tmp_path, max_steps=1, hub_model_id="alice/distilled", hub_token=TOKEN, temperature=3.0)
    trainer = DistillationTrainer(student, args, train_dataset=Dataset.from_dict({"text": CORPUS[:8]}),
                                  processing_class=tokenizer, teacher_model=str(teacher_dir))
    trainer.train()
    trainer.push_to_hub()
    card = hub.files["README.md"].decode()
    kd_loss = [entry for entry in trainer.state.log_history if "kd_loss" in entry][-1]["kd_loss"]
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= set(hub.files)
    assert "from the teacher `my-teacher` (a local checkpoint;" in card and "| temperature | 3 |" in card
    assert f"| kd_loss | {kd_loss:.4g} | 1 |" in card and 'from_pretrained("alice/distilled")' in card
    assert "model_name: distilled" in card and "None" not in card and str(tmp_path) not in card and TOKEN not in card
    assert card == (tmp_path / "out" / "README.md").read_text()  # the card pushed is the one kept locally
