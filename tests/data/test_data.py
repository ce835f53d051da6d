"""The arithmetic generator, the reasoning-data loader and the prompt-completion conversion."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from hf_distill.data.arithmetic import make_arithmetic_dataset
from hf_distill.data.reasoning import load_reasoning_dataset, to_prompt_completion

GSM8K = Path("/work/shared/data/gsm8k")
CALC = re.compile(r"<<(\d+)([-+*/])(\d+)=(\d+)>>")


@pytest.fixture(scope="module")
def arithmetic() -> DatasetDict:
    return make_arithmetic_dataset(400, 100, seed=3, max_steps=4, min_steps=1)


def test_same_seed_gives_same_problems_and_other_seed_differs():
    first, again, other = (make_arithmetic_dataset(50, 10, seed=s) for s in (7, 7, 8))
    assert first["train"].to_list() == again["train"].to_list()
    assert first["test"].to_list() == again["test"].to_list()
    assert first["train"]["question"] != other["train"]["question"]


def test_splits_have_requested_sizes_and_columns(arithmetic):
    assert arithmetic["train"].num_rows == 400 and arithmetic["test"].num_rows == 100
    assert arithmetic["train"].column_names == ["question", "answer", "num_steps"]


def test_train_and_test_share_no_question(arithmetic):
    train, test = set(arithmetic["train"]["question"]), set(arithmetic["test"]["question"])
    assert len(train) == 400 and len(test) == 100
    assert not train & test


def test_every_calculator_annotation_is_correct_and_the_chain_reaches_the_answer(arithmetic):
    for row in arithmetic["train"]:
        *lines, final = row["answer"].split("\n")
        assert len(lines) == row["num_steps"]
        assert final == f"#### {int(final[5:])}"
        unit = row["question"].split()[3].rstrip(".")
        running, product = int(row["question"].split()[2]), None  # "Tom has 12 apples. ..."
        for line in lines:
            ((a, op, b, result),) = CALC.findall(line)  # exactly one annotation per line
            a, b, result = int(a), int(b), int(result)
            assert result == {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op], line
            assert op != "/" or a % b == 0, line
            assert f"{a}{op}{b} = <<" in line and line.endswith(f">>{result} {unit}."), line
            if re.search(r"(buys|gives away) \d+\*\d+", line):  # the product line of a "bags" step
                product = result
                continue
            assert a == running, (row["answer"], line)  # each line continues from the previous total
            assert product is None or b == product, (row["answer"], line)
            running, product = result, None
        assert running == int(final[5:])


def test_numbers_stay_within_max_value():
    data = make_arithmetic_dataset(300, 0, seed=1, max_steps=4, max_value=99)
    assert data["test"].num_rows == 0 and data["test"].column_names == data["train"].column_names
    numbers = [int(n) for answer in data["train"]["answer"] for n in re.findall(r"\d+", answer)]
    assert max(numbers) <= 99 and min(numbers) >= 2


def test_num_steps_cover_the_requested_range(arithmetic):
    assert set(arithmetic["train"]["num_steps"]) == {1, 2, 3, 4}
    default = make_arithmetic_dataset(100, 0)
    assert set(default["train"]["num_steps"]) == {2, 3}


@pytest.mark.parametrize("kwargs", [{"max_steps": 5}, {"min_steps": 3, "max_steps": 2}, {"max_value": 10}])
def test_invalid_difficulty_is_rejected(kwargs):
    with pytest.raises(ValueError):
        make_arithmetic_dataset(10, 10, **kwargs)


def test_loader_passes_generator_kwargs_and_picks_a_split():
    data = load_reasoning_dataset("arithmetic", n_train=20, n_test=5, seed=4)
    assert isinstance(data, DatasetDict) and data["test"].num_rows == 5
    test = load_reasoning_dataset("arithmetic", split="test", n_train=20, n_test=5, seed=4)
    assert test["question"] == data["test"]["question"]


def test_loader_reads_a_jsonl_file_and_a_directory(tmp_path):
    rows = [{"question": f"What is {i}+1?", "answer": f"{i}+1 = <<{i}+1={i + 1}>>{i + 1}\n#### {i + 1}"} for i in range(3)]
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    single = load_reasoning_dataset(tmp_path / "train.jsonl")
    assert isinstance(single, Dataset) and single.to_list() == rows
    both = load_reasoning_dataset(str(tmp_path))
    assert sorted(both) == ["test", "train"] and both["test"].to_list() == rows
    with pytest.raises(ValueError, match="available splits: \\['test', 'train'\\]"):
        load_reasoning_dataset(tmp_path, split="validation")
    with pytest.raises(ValueError, match="single split"):
        load_reasoning_dataset(tmp_path / "train.jsonl", split="train")


def test_loader_renames_custom_columns_and_keeps_the_others():
    data = Dataset.from_dict({"problem": ["1+1?"], "solution": ["#### 2"], "level": [1]})
    out = load_reasoning_dataset(data, question_column="problem", answer_column="solution")
    assert out.column_names == ["question", "answer", "level"]
    assert out[0] == {"question": "1+1?", "answer": "#### 2", "level": 1}


def test_missing_columns_error_names_found_columns_and_the_fix():
    data = DatasetDict({"train": Dataset.from_dict({"problem": ["1+1?"], "solution": ["#### 2"]})})
    with pytest.raises(ValueError) as error:
        load_reasoning_dataset(data)
    message = str(error.value)
    assert "['question', 'answer']" in message and "['problem', 'solution']" in message
    assert "question_column=" in message and "answer_column=" in message and "'train'" in message


def test_empty_dataset_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        load_reasoning_dataset(Dataset.from_dict({"question": [], "answer": []}))
    with pytest.raises(FileNotFoundError, match="no .jsonl files"):
        load_reasoning_dataset(tmp_path)


def test_unknown_source_and_misplaced_kwargs_are_rejected(tmp_path):
    with pytest.raises(FileNotFoundError, match="arithmetic"):
        load_reasoning_dataset(tmp_path / "nope.jsonl")
    with pytest.raises(TypeError, match="n_train"):
        load_reasoning_dataset(Dataset.from_dict({"question": ["q"], "answer": ["a"]}), n_train=3)


@pytest.mark.skipif(not GSM8K.is_dir(), reason="GSM8K not found in /work/shared/data/gsm8k")
def test_loader_reads_real_gsm8k():
    data = load_reasoning_dataset(GSM8K)
    assert data["train"].num_rows == 7473 and data["test"].num_rows == 1319
    assert data["train"][0]["answer"].endswith("#### 72")


def test_prompt_completion_format_keeps_question_and_answer(arithmetic):
    converted = to_prompt_completion(arithmetic)
    row = converted["test"][0]
    assert row["prompt"] == [{"role": "user", "content": row["question"]}]
    assert row["completion"] == [{"role": "assistant", "content": row["answer"]}]
    assert row["question"] == arithmetic["test"][0]["question"]

    with_system = to_prompt_completion(arithmetic["test"], system_prompt="Think step by step.")
    assert with_system[0]["prompt"][0] == {"role": "system", "content": "Think step by step."}
    assert with_system[0]["prompt"][1]["role"] == "user"
