"""Trace and logit-cache collection spread over 2 processes (a launcher's ranks) equals a one-process collection.

The launched script is tests/scripts/collect_shards.py; it is launched as tests/test_multiprocess.py launches
training (accelerate's shipped DDP config: torchrun, two CPU processes; see that test's docstring for why not
``--cpu``). The one-process reference runs the same script in this process. Both use one thread, so the tiny
teacher's arithmetic, and with it every shard's bytes, is the same. The served teachers are loopback engines in this
process: vLLM's documented reply shapes over the same tiny teacher, and a chat engine answering by the request's seed.
"""

from __future__ import annotations

import importlib.util
import json
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
from datasets import load_from_disk
from helpers import make_llama, make_tokenizer, subprocess_env

from hf_distill.cache.reader import TeacherCache
from hf_distill.utils.manifest import ShardManifest, WorkShare, progress_files

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "scripts" / "collect_shards.py"
sys.path.insert(0, str(ROOT / "tests" / "served"))
from fake_server import FakeServer, models_reply, vllm_handler  # noqa: E402

LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
          str(ROOT / "recipes" / "accelerate" / "ddp.yaml"), "--num_processes", "2", str(SCRIPT)]


def _script():
    spec = importlib.util.spec_from_file_location("collect_shards", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class SeededChat:
    """/v1/chat/completions: ``n`` answers drawn with the request's seed (reproducible, like a seeded engine)."""

    def __init__(self):
        self.seeds, self.lock = [], threading.Lock()

    def __call__(self, method, path, body):
        if path == "/v1/models":
            return 200, models_reply("teacher-7b", "vllm")
        with self.lock:
            self.seeds.append(body["seed"])
        rng = random.Random(body["seed"])
        texts = [f"{rng.randint(0, 9)} + {rng.randint(0, 9)} = {rng.randint(0, 18)}\n#### {rng.randint(0, 18)}"
                 for _ in range(body["n"])]
        return 200, {"choices": [{"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
                                 for i, t in enumerate(texts)], "usage": {"prompt_tokens": 10, "completion_tokens": 5}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("collection")
    tokenizer = make_tokenizer()
    teacher = make_llama(len(tokenizer), hidden=32, layers=1, seed=3).eval()
    teacher.save_pretrained(tmp / "teacher")
    tokenizer.save_pretrained(tmp / "teacher")
    chat, killed_chat = SeededChat(), SeededChat()
    servers = [FakeServer(chat), FakeServer(vllm_handler("big-teacher", teacher)), FakeServer(killed_chat)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the launched processes (OMP_NUM_THREADS=1): the same float arithmetic
    yield {"tmp": tmp, "tokenizer": tokenizer, "chat": chat, "chat_url": servers[0].url, "vllm_url": servers[1].url,
           "killed_chat": killed_chat, "killed_chat_url": servers[2].url, "script": _script()}
    torch.set_num_threads(threads)
    for server in servers:
        server.close()


def _launch(setup, out: Path, *flags: str) -> subprocess.CompletedProcess:
    out.mkdir()
    return subprocess.run([*LAUNCH, str(out), str(setup["tmp"] / "teacher"), "--chat_url", setup["chat_url"],
                           "--vllm_url", setup["vllm_url"], *flags], cwd=ROOT, env=subprocess_env(),
                          capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def runs(setup):
    tmp, chat = setup["tmp"], setup["chat"]
    # one launch: a collection killed after 2 shards a rank (into two/killed), then the whole collections
    result = _launch(setup, tmp / "two", "--killed_chat_url", setup["killed_chat_url"])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    two_seeds, chat.seeds = sorted(chat.seeds), []
    (tmp / "one").mkdir()
    setup["script"].main(tmp / "one", tmp / "teacher", setup["chat_url"], setup["vllm_url"], share=WorkShare(0, 1))
    ranks = [json.loads((tmp / "two" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    return {"two": tmp / "two", "one": tmp / "one", "ranks": ranks, "seeds": (two_seeds, sorted(chat.seeds))}


def _files(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*.parquet"))
            + sorted(directory.glob("shard-*.arrow"))}


def _manifest(directory: Path) -> dict:
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest.pop("usage", None)  # served traces: seconds and rates differ
    for entry in manifest["shards"]:
        entry.pop("usage", None)
    return manifest


def test_each_rank_collects_every_other_shard_and_gets_the_whole_result(runs):
    (rank0, rank1) = runs["ranks"]
    assert (rank0["rank"], rank1["rank"], rank0["world_size"]) == (0, 1, 2)
    assert set(rank0["shards"]) >= {"traces_local", "cache_local", "traces_served", "cache_served"}
    for name in ("traces_local", "cache_local", "traces_served", "cache_served"):  # 5 shards each: round-robin
        assert (rank0["shards"][name], rank1["shards"][name]) == ([0, 2, 4], [1, 3]), name
    assert rank0["results"] == rank1["results"]  # every rank returns the merged result
    assert rank0["results"] == {"traces_local": 20, "traces_served": 20, "cache_local": 5, "cache_served": 5,
                                "traces_cli": 0, "cache_cli": 0}  # (the CLIs' exit status)


@pytest.mark.parametrize("name", ["traces_local", "traces_served", "traces_cli"])
def test_two_processes_write_the_traces_of_one_process(runs, name):
    two, one = runs["two"] / name, runs["one"] / name
    assert _files(two) == _files(one) and len(_files(one)) in (3, 5)  # the same shards, byte for byte
    assert _manifest(two) == _manifest(one)
    assert load_from_disk(str(two / "dataset")).to_dict() == load_from_disk(str(one / "dataset")).to_dict()
    assert progress_files(two / "manifest.json") == []  # merged into the one manifest
    assert not list(two.rglob(".*.tmp*"))


def test_two_served_processes_ask_each_prompt_once(runs):
    two_seeds, one_seeds = runs["seeds"]
    assert two_seeds == one_seeds and len(one_seeds) == 10  # one request (n=2) per problem, none twice
    usage = json.loads((runs["two"] / "traces_served" / "manifest.json").read_text())["usage"]
    assert usage["requests"] == 10 and usage["completion_tokens"] == 50


@pytest.mark.parametrize("name", ["cache_local", "cache_served", "cache_cli"])
def test_two_processes_write_the_logit_cache_of_one_process(runs, setup, name):
    two, one = runs["two"] / name, runs["one"] / name
    assert _files(two) == _files(one) and len(_files(one)) in (4, 5)
    assert _manifest(two) == _manifest(one) and _manifest(two)["complete"] is True
    assert progress_files(two / "manifest.json") == []
    cache = TeacherCache(two)  # verifies every shard's sha256
    cache.check(tokenizer=setup["tokenizer"], temperature=1.0)
    assert cache.num_examples == (12 if name == "cache_cli" else 20)


def test_a_killed_two_process_run_resumes_in_one_process_without_redoing_finished_shards(runs, setup):
    out, chat = runs["two"] / "killed", setup["killed_chat"]
    assert [json.loads((out / f"rank-{r}.json").read_text())["killed"] for r in (0, 1)] == \
        [["cache_local", "traces_served"]] * 2  # both ranks stopped after 2 shards of each
    recorded = {}
    for name in ("cache_local", "traces_served"):
        assert not (out / name / "manifest.json").exists()  # no merged manifest yet, one progress file per rank
        progress = progress_files(out / name / "manifest.json")
        assert [p.name for p in progress] == ["manifest.rank-0.json", "manifest.rank-1.json"]
        recorded[name] = sorted(e["index"] for p in progress for e in json.loads(p.read_text())["shards"])
    # a cache shard is recorded after its log line: each rank's 2nd shard (2, 3) is written but not recorded
    assert recorded == {"cache_local": [0, 1], "traces_served": [0, 1, 2, 3]}
    kept = {"cache_local": [f"shard-0000{i}.arrow" for i in range(4)],
            "traces_served": [f"shards/shard-0000{i}.parquet" for i in range(4)]}
    stats = {name: {f: (out / name / f).stat().st_mtime_ns for f in files} for name, files in kept.items()}

    assert sorted(chat.seeds) == [2 * p for p in range(8)]  # the killed run asked problems 0-7 (4 shards)
    chat.seeds = []
    report = setup["script"].main(out, setup["tmp"] / "teacher", setup["killed_chat_url"], setup["vllm_url"],
                                  only=["cache_local", "traces_served"], share=WorkShare(0, 1))
    assert report["shards"] == {"cache_local": [4], "traces_served": [4]}  # orphans 2, 3 adopted, not redone
    assert sorted(chat.seeds) == [16, 18]  # only problems 8 and 9 (seed + problem * num_samples) were asked
    for name in ("cache_local", "traces_served"):
        assert _files(out / name) == _files(runs["one"] / name)
        assert _manifest(out / name) == _manifest(runs["one"] / name)
        assert progress_files(out / name / "manifest.json") == []
        assert {f: (out / name / f).stat().st_mtime_ns for f in kept[name]} == stats[name]  # never rewritten


# -- the protocol, in one process ------------------------------------------------------------------------------------


class Mismatch(ValueError):
    pass


def _open(path, share, fields=None):
    return ShardManifest.open(path, fields or {"format": "x"}, mismatch=lambda *d: Mismatch(*d), share=share)


def test_ranks_record_in_their_own_files_and_rank_0_merges_what_one_process_would_write(tmp_path):
    path = tmp_path / "manifest.json"
    one = _open(tmp_path / "one.json", WorkShare(0, 1))
    for index in range(3):
        one.record({"index": index})
    single = one.gather(3, lambda shards: {"complete": True})
    ranks = [_open(path, WorkShare(r, 2)) for r in (0, 1)]
    assert not path.exists() and progress_files(path) == []  # nothing written before a rank's first shard
    ranks[1].record({"index": 1})
    assert [p.name for p in progress_files(path)] == ["manifest.rank-1.json"]
    merged = {}
    waiter = threading.Thread(target=lambda: merged.update(ranks[1].gather(3, poll=0.01)))
    waiter.start()  # rank 1 waits for rank 0's merged manifest
    for index in (0, 2):
        ranks[0].record({"index": index})
    assert ranks[0].gather(3, lambda shards: {"complete": True}, poll=0.01) == single
    waiter.join(timeout=10)
    assert merged == single and json.loads(path.read_text()) == single
    assert progress_files(path) == []


def test_a_run_resumed_with_another_world_size_redoes_only_unrecorded_shards(tmp_path):
    path = tmp_path / "manifest.json"
    for rank, indices in ((0, [0, 4]), (1, [1]), (3, [3])):  # a killed run of 4 ranks; rank 2 did nothing
        manifest = _open(path, WorkShare(rank, 4))
        for index in indices:
            manifest.record({"index": index})
    resumed = [_open(path, WorkShare(r, 2)) for r in (0, 1)]
    assert [sorted(m.finished()) for m in resumed] == [[0, 1, 3, 4]] * 2  # any rank's shards count for all
    todo = [[i for i in range(6) if m.share.owns(i) and i not in m.finished()] for m in resumed]
    assert todo == [[2], [5]]
    with pytest.raises(Mismatch, match="format"):  # another run's progress file is refused, naming the field
        _open(path, WorkShare(0, 3), fields={"format": "y"})


def test_rank_0_waits_for_a_shard_being_redone_instead_of_merging_its_stale_entry(tmp_path):
    path = tmp_path / "manifest.json"
    killed = _open(path, WorkShare(1, 2))
    killed.record({"index": 1, "file": "shard-1"})  # recorded by rank 1 of a killed run; its file was deleted since
    (tmp_path / "shard-0").write_text("0")
    intact = lambda entry: (tmp_path / entry["file"]).exists()  # noqa: E731
    ranks = [_open(path, WorkShare(r, 2)) for r in (0, 1)]
    assert [sorted(m.finished(intact)) for m in ranks] == [[], []]  # shard 1 is to redo, by its owner
    ranks[0].record({"index": 0, "file": "shard-0"})
    merged = {}
    rank0 = threading.Thread(target=lambda: merged.update(ranks[0].gather(2, poll=0.01)))
    rank0.start()
    rank0.join(timeout=0.5)
    assert rank0.is_alive() and not path.exists()  # the stale entry of shard 1 does not count
    (tmp_path / "shard-1").write_text("1")  # rank 1 redoes shard 1
    ranks[1].record({"index": 1, "file": "shard-1"})
    assert ranks[1].gather(2, poll=0.01)["shards"] == [{"index": 0, "file": "shard-0"}, {"index": 1, "file": "shard-1"}]
    rank0.join(timeout=10)
    assert not rank0.is_alive() and merged == json.loads(path.read_text()) and progress_files(path) == []


def test_work_share_comes_from_the_launcher_variables(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    share = WorkShare.from_env()
    assert share == WorkShare(1, 3) and [i for i in range(7) if share.owns(i)] == [1, 4]
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert WorkShare.from_env() == WorkShare(0, 1)
    with pytest.raises(ValueError, match="rank"):
        WorkShare(2, 2)
