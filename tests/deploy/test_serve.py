"""A real llama.cpp server (llama-cpp-python) on a loopback port serving the tiny student's GGUF file, measured by
`hf-distill bench-serve` with streamed requests; the numbers land in the student's deployment.json and card."""

from __future__ import annotations

import json
import shlex

import pytest
from conftest import needs_converter, needs_llama_cpp

from hf_distill.cli.main import main
from hf_distill.deploy.bench import bench_serve, stream_request
from hf_distill.deploy.gguf_export import export_gguf
from hf_distill.deploy.server import serving


@pytest.fixture(scope="module")
def served(student_dir, tmp_path_factory):
    gguf = export_gguf(student_dir, tmp_path_factory.mktemp("serve") / "student.f16.gguf", "f16")
    with serving(gguf, n_threads=1) as server:
        yield server


@needs_converter
@needs_llama_cpp
def test_streamed_request_times_first_token_before_the_end(served):
    for chat in (True, False):
        timing = stream_request(served.url, served.model, "Ann has 3 apples", max_tokens=12, chat=chat)
        assert 0 < timing.ttft < timing.latency
        assert 11 <= timing.tokens <= 13  # one streamed chunk per token (the wide-init model rarely stops early)


@needs_converter
@needs_llama_cpp
def test_concurrent_requests_queue_and_finish_instead_of_cutting_each_other_short(served):
    one, four = bench_serve(served.url, ["Ann has 3 apples", "Bob buys 4"], concurrency=(1, 4), max_tokens=16,
                            requests=4, progress=False)
    assert (one.concurrency, four.concurrency, one.requests, four.requests) == (1, 4, 4, 4)
    # llama-cpp-python's default would interrupt a streaming answer when the next request arrives
    assert one.mean_tokens >= 15 and four.mean_tokens >= 15
    for level in (one, four):
        assert 0 < level.ttft_p50 <= level.ttft_p95 and level.latency_p50 <= level.latency_p95
        assert level.ttft_p50 <= level.latency_p50 and level.tokens_per_second > 0 and level.throughput > 0
    # one request at a time is served: four in flight wait for each other
    assert four.latency_p95 > one.latency_p50


@needs_converter
@needs_llama_cpp
def test_bench_serve_cli_records_its_numbers_in_the_card(served, student_dir, tmp_path, capsys):
    card_dir = tmp_path / "student"
    card_dir.mkdir()
    (card_dir / "README.md").write_text("# student\n\n## Results\n\nx\n\n## Use\n\ny\n")
    (card_dir / "deployment.json").write_text(json.dumps(
        {"exports": {"f16": {"file": "student.f16.gguf", "bytes": 123_000}}, "serving": []}))
    assert main(["bench-serve", served.url, "--concurrency", "1", "2", "--requests", "2", "--max_tokens", "8",
                 "--card", str(card_dir), "--output_json", str(tmp_path / "bench.json")]) == 0
    deployment = json.loads((card_dir / "deployment.json").read_text())
    assert [row["concurrency"] for row in deployment["serving"]] == [1, 2]
    assert {row["format"] for row in deployment["serving"]} == {"f16"}  # the one export there is
    assert deployment["serving"][0]["engine"].startswith("llama.cpp")
    card = (card_dir / "README.md").read_text()
    assert card.index("## Results") < card.index("## Deployment") < card.index("## Use")
    assert "| GGUF f16 | 0.1 MB | 2 |" in card
    assert len(json.loads((tmp_path / "bench.json").read_text())) == 2
    assert "tokens/s total" in capsys.readouterr().out


@needs_converter
def test_serve_exports_a_folder_first_and_serves_the_file(student_dir, tmp_path, capsys):
    import shutil

    folder = tmp_path / "s2"
    shutil.copytree(student_dir, folder)
    assert main(["serve", str(folder), "--quant", "f16", "--port", "8123", "--print_command"]) == 0
    command = shlex.split(capsys.readouterr().out.strip().splitlines()[-1])
    assert command[1:3] == ["-m", "llama_cpp.server"]
    assert command[command.index("--model") + 1] == str(folder / "s2.f16.gguf") and (folder / "s2.f16.gguf").is_file()
    assert command[command.index("--port") + 1] == "8123"
    assert json.loads((folder / "deployment.json").read_text())["exports"]["f16"]["file"] == "s2.f16.gguf"


def test_serving_a_missing_file_names_the_export_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="hf-distill export"):
        main(["serve", str(tmp_path / "absent.gguf"), "--print_command"])
