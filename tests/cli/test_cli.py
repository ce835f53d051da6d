"""The `hf-distill` command line as a whole: one dialect (TRL's snake_case names through `HfArgumentParser`),
`--config FILE.yaml` for every subcommand with flags overriding it, last release's spellings still read (with a
warning naming the new one), `hf-distill env` and `python -m hf_distill`."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings

import pytest
import torch
import trl
import yaml

import hf_distill.hub
from hf_distill.cli import cache_logits, cascade, demo, env, push, traces, train
from hf_distill.cli.main import COMMANDS, main

PARSE = {"train": train.parse, "cache-logits": cache_logits.parser().parse, "cascade": cascade.parser().parse,
         "push": push.parser().parse, "traces": traces.parser().parse, "demo": demo.parser().parse}
# what each command cannot parse without
REQUIRED = {"train": [], "cache-logits": ["--teacher_model_name_or_path", "t", "--output_dir", "cache"],
            "cascade": ["recipe.yaml"], "push": ["folder", "--repo_id", "a/b"],
            "traces": ["--teacher_model_name_or_path", "t", "--output_dir", "traces"], "demo": []}


def parsed(command: str, argv: list[str]) -> dict:
    """Every field of every dataclass the command parsed, by name."""
    return {name: value for args in PARSE[command](argv) for name, value in vars(args).items()}


def deprecations(caught) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)
            and "is deprecated, use" in str(w.message)]


# (command, old spelling, its value, field, parsed value, new spelling): every flag renamed in this release
DEPRECATED = [
    ("train", "--dataset", "gsm8k.jsonl", "dataset_name", "gsm8k.jsonl", "--dataset_name"),
    ("train", "--output-dir", "o", "output_dir", "o", "--output_dir"),
    ("train", "--per-device-train-batch-size", "3", "per_device_train_batch_size", 3, "--per_device_train_batch_size"),
    ("cache-logits", "--teacher", "./teacher", "teacher_model_name_or_path", "./teacher",
     "--teacher_model_name_or_path"),
    ("cache-logits", "--dataset", "d.jsonl", "dataset_name", "d.jsonl", "--dataset_name"),
    ("cache-logits", "--out", "c2", "output_dir", "c2", "--output_dir"),
    ("cache-logits", "--top-k", "4", "top_k", 4, "--top_k"),
    ("cache-logits", "--top-k=5", None, "top_k", 5, "--top_k"),
    ("cache-logits", "--batch-size", "2", "batch_size", 2, "--batch_size"),
    ("cache-logits", "--shard-size", "8", "shard_size", 8, "--shard_size"),
    ("cache-logits", "--max-length", "128", "max_length", 128, "--max_length"),
    ("cache-logits", "--num-examples", "12", "num_examples", 12, "--num_examples"),
    ("cache-logits", "--dataset-train-split", "train[:5]", "dataset_train_split", "train[:5]",
     "--dataset_train_split"),
    ("cache-logits", "--question-column", "q", "question_column", "q", "--question_column"),
    ("cache-logits", "--answer-column", "a", "answer_column", "a", "--answer_column"),
    ("cache-logits", "--teacher-dtype", "bfloat16", "teacher_dtype", "bfloat16", "--teacher_dtype"),
    ("cache-logits", "--logprob-dtype", "float32", "logprob_dtype", "float32", "--logprob_dtype"),
    ("cache-logits", "--device", "cpu", "teacher_device", "cpu", "--teacher_device"),
    ("cascade", "--dry-run", None, "dry_run", True, "--dry_run"),
    ("cascade", "--from-stage", "s2", "from_stage", "s2", "--from_stage"),
    ("cascade", "--output-dir", "runs", "output_dir", "runs", "--output_dir"),
    ("push", "--repo-id", "bob/x", "repo_id", "bob/x", "--repo_id"),
    ("traces", "--teacher", "./teacher", "teacher_model_name_or_path", "./teacher", "--teacher_model_name_or_path"),
    ("traces", "--dataset", "d.jsonl", "dataset_name", "d.jsonl", "--dataset_name"),
    ("traces", "--split", "test", "dataset_train_split", "test", "--dataset_train_split"),
    ("traces", "--max_problems", "3", "num_examples", 3, "--num_examples"),
    ("traces", "--no-dedupe", None, "dedupe", False, "--no_dedupe"),
    ("demo", "--out", "d", "output_dir", "d", "--output_dir"),
    ("demo", "--teacher-steps", "5", "teacher_steps", 5, "--teacher_steps"),
    ("demo", "--student-steps", "6", "student_steps", 6, "--student_steps"),
]


@pytest.mark.parametrize(("command", "old", "value", "name", "expected", "new"), DEPRECATED,
                         ids=[f"{c} {o}" for c, o, *_ in DEPRECATED])
def test_old_spelling_still_parses_to_the_new_name_with_a_warning(command, old, value, name, expected, new, capsys):
    with pytest.warns(DeprecationWarning, match=re.escape(f"use {new} ")):
        args = parsed(command, [*REQUIRED[command], old, *([] if value is None else [value])])
    assert args[name] == expected
    assert f"{old.split('=')[0]} is deprecated, use {new}" in capsys.readouterr().err  # seen without -W flags


NEW = {
    "train": ["--model_name_or_path", "s", "--dataset_name", "d.jsonl", "--output_dir", "o", "--num_examples", "4",
              "--dataset_train_split", "train[:4]", "--max_length", "64"],
    "cache-logits": ["--dataset_name", "d.jsonl", "--top_k", "4", "--max_length", "64", "--temperature", "2.0",
                     "--teacher_device", "cpu", "--logprob_dtype", "float32"],
    "cascade": ["--dry_run", "--from_stage", "s2", "--output_dir", "runs"],
    "push": ["--private", "--revision", "dev"],
    "traces": ["--dataset_name", "d.jsonl", "--dataset_train_split", "test", "--num_examples", "3", "--no_dedupe"],
    "demo": ["--output_dir", "d", "--fast", "--teacher_steps", "5"],
}


@pytest.mark.parametrize("command", sorted(NEW))
def test_new_spellings_parse_without_a_deprecation(command, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = parsed(command, [*REQUIRED[command], *NEW[command]])
    assert deprecations(caught) == [] and "deprecated" not in capsys.readouterr().err
    flags = REQUIRED[command] + NEW[command]
    name = next(f[2:] for f in flags if f.startswith("--") and not f.startswith("--no_"))
    assert args[name] is not None and args[name] is not False  # the flags did land


def test_cache_logits_reads_distillation_config_fields_as_training_does():
    data, cache, config = cache_logits.parser().parse([*REQUIRED["cache-logits"], *NEW["cache-logits"]])
    assert (config.max_length, config.temperature, config.teacher_device) == (64, 2.0, "cpu")
    assert (config.teacher_model_name_or_path, config.output_dir) == ("t", "cache")
    assert (cache.top_k, cache.logprob_dtype, data.dataset_name) == (4, "float32", "d.jsonl")
    assert not {"temperature", "max_length", "teacher_dtype"} & set(vars(cache))  # declared once, by the config


# (command, the file's values, flags given too, what is parsed): the file fills in, the flags win
CONFIGS = [
    ("train", {"num_examples": 7, "dataset_train_split": "train[:9]"}, ["--dataset_train_split", "train[:3]"],
     {"num_examples": 7, "dataset_train_split": "train[:3]"}),
    ("cache-logits", {"teacher_model_name_or_path": "t", "output_dir": "c", "top_k": 4}, ["--top_k", "8"],
     {"teacher_model_name_or_path": "t", "output_dir": "c", "top_k": 8}),
    ("cascade", {"recipe": "a.yaml", "from_stage": "s1"}, ["--from_stage", "s2"], {"recipe": "a.yaml",
                                                                                  "from_stage": "s2"}),
    ("push", {"folder": "f", "repo_id": "a/b", "message": "x"}, ["--message", "y"],
     {"folder": "f", "repo_id": "a/b", "message": "y"}),
    ("traces", {"teacher_model_name_or_path": "t", "output_dir": "o", "num_samples": 2}, ["--num_samples", "3"],
     {"teacher_model_name_or_path": "t", "output_dir": "o", "num_samples": 3}),
    ("demo", {"output_dir": "d", "fast": True}, ["--output_dir", "e"], {"output_dir": "e", "fast": True}),
]


@pytest.mark.parametrize(("command", "config", "flags", "expected"), CONFIGS, ids=[c[0] for c in CONFIGS])
def test_every_subcommand_reads_a_config_file_that_flags_override(command, config, flags, expected, tmp_path):
    path = tmp_path / "args.yaml"
    path.write_text(yaml.safe_dump(config))
    args = parsed(command, ["--config", str(path), *flags])
    assert {name: args[name] for name in expected} == expected


def test_config_file_sets_its_env_and_accepts_the_equals_form(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DISTILL_CLI_TEST", "before")  # restored after the test
    path = tmp_path / "demo.yaml"
    path.write_text("output_dir: d\nenv:\n  HF_DISTILL_CLI_TEST: from-config\n")
    assert parsed("demo", [f"--config={path}"])["output_dir"] == "d"
    assert os.environ["HF_DISTILL_CLI_TEST"] == "from-config"


def test_config_file_old_key_is_translated_with_a_warning(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text("dataset: gsm8k.jsonl\nnum_examples: 3\n")
    with pytest.warns(DeprecationWarning, match="use `dataset_name:`"):
        args = parsed("train", ["--config", str(path)])
    assert (args["dataset_name"], args["num_examples"]) == ("gsm8k.jsonl", 3)
    assert "`dataset:` is deprecated" in capsys.readouterr().err


def test_config_file_with_an_unknown_key_is_refused(tmp_path):
    path = tmp_path / "push.yaml"
    path.write_text("repo_idd: a/b\n")
    with pytest.raises(ValueError, match="repo_idd"):
        parsed("push", ["folder", "--repo_id", "a/b", "--config", str(path)])


def test_lone_yaml_after_train_is_still_its_config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model_name_or_path: s\nnum_examples: 5\n")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        args = parsed("train", [str(path)])
    assert (args["model_name_or_path"], args["num_examples"]) == ("s", 5) and deprecations(caught) == []


def test_positional_argument_and_its_flag_are_the_same_field():
    assert parsed("cascade", ["r.yaml", "--dry_run"])["recipe"] == "r.yaml"
    assert parsed("cascade", ["--recipe", "r.yaml"])["recipe"] == "r.yaml"
    assert parsed("push", ["--repo_id", "a/b", "model"])["folder"] == "model"  # after the flags too


@pytest.mark.parametrize(("argv", "message"), [
    (["cascade", "--dry_run"], "a recipe is required"),
    (["push", "--repo_id", "a/b"], "a model folder is required"),
    (["cache-logits", "--output_dir", "c"], "--teacher_model_name_or_path"),
    (["traces", "--teacher_model_name_or_path", "t"], "--output_dir"),
])
def test_missing_required_argument_is_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_help_offers_config(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and f"usage: hf-distill {command}" in out and "--config FILE.yaml" in out


def test_usage_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"\n  {name} " in out for name in COMMANDS) and "env" in COMMANDS
    assert main(["no-such-command"]) == 2


def test_push_with_the_old_repo_id_spelling_still_pushes(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(hf_distill.hub, "push_folder", lambda *a, **kw: calls.append((a, kw)) or "https://hub/c/1")
    with pytest.warns(DeprecationWarning, match="use --repo_id"):
        assert main(["push", "model", "--repo-id", "alice/tiny", "--private"]) == 0
    assert calls == [(("model", "alice/tiny"), {"private": True, "revision": None, "commit_message": None})]
    assert "Pushed model to https://hub/c/1" in capsys.readouterr().out


def test_hub_main_still_runs_push_with_a_warning(monkeypatch):
    calls = []
    monkeypatch.setattr(hf_distill.hub, "push_folder", lambda *a, **kw: calls.append(a) or "https://hub/c/2")
    with pytest.warns(DeprecationWarning, match="hf_distill.cli.push.main"):
        assert hf_distill.hub.main(["model", "--repo_id", "alice/tiny"]) == 0
    assert calls == [("model", "alice/tiny")]


def test_env_prints_the_versions_for_a_bug_report(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    for name in ("hf_distill", "Python", "Platform", "torch", "CUDA", *env.LIBRARIES):
        assert f"\n- {name}: " in out, name
    assert f"- torch: {torch.__version__}\n" in out and f"- trl: {trl.__version__}\n" in out
    assert f"- Python: {sys.version.split()[0]}\n" in out
    assert ("- CUDA: available" in out) == torch.cuda.is_available()


def test_python_dash_m_hf_distill_is_the_console_script():
    result = subprocess.run([sys.executable, "-m", "hf_distill", "env"], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    assert f"- trl: {trl.__version__}\n" in result.stdout and "Copy-paste the following" in result.stdout
    usage = subprocess.run([sys.executable, "-m", "hf_distill"], capture_output=True, text=True, timeout=300)
    assert usage.returncode == 2 and "cache-logits" in usage.stdout


def test_traces_num_examples_is_the_old_max_problems(tmp_path):
    """`--max_problems N` kept the first N of 2000 generated problems; `--num_examples N` generates N: the same ones."""
    from hf_distill.cli.arguments import DatasetArguments

    first = traces.load_problems(DatasetArguments(num_examples=5))
    assert first["question"] == traces.load_problems(DatasetArguments())["question"][:5]
    folder = tmp_path / "gsm8k"
    folder.mkdir()
    for split, n in (("train", 3), ("test", 2)):
        (folder / f"{split}.jsonl").write_text("".join(
            f'{{"question": "{split} {i}?", "answer": "#### {i}"}}\n' for i in range(n)))
    picked = traces.load_problems(DatasetArguments(dataset_name=str(folder), dataset_train_split="test[1:]"))
    assert picked["question"] == ["test 1?"]
    assert len(traces.load_problems(DatasetArguments(dataset_name=str(folder), num_examples=2))) == 2
