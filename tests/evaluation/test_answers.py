"""Final-answer extraction and exact-match scoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hf_distill.evaluation.answers import (
    answers_match,
    exact_match_accuracy,
    extract_answer,
    normalize_number,
    strip_calculator_annotations,
)

GSM8K_TEST = Path("/work/shared/data/gsm8k/test.jsonl")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("He has 12+15 = <<12+15=27>>27 apples.\n#### 27", "27"),
        ("#### 1,000", "1000"),
        ("#### $5", "5"),
        ("#### 5.0", "5"),
        ("#### 20.", "20"),
        ("#### 0.50", "0.5"),
        ("#### -3 apples", "-3"),
        ("#### 12\nmore text\n#### 13", "13"),  # the last #### wins
        ("She has 4 apples. #### 9", "9"),  # #### need not start a line
        ("He has 7 apples.\n#### ", "7"),  # an empty #### falls back to the last number
        ("#### seven", "seven"),  # non-numeric answers are kept for exact comparison
        ("So 3 + 4 makes 7. The answer is 42.", "42"),
        ("The answer is: $1,234.", "1234"),
        ("He had 3 and now has 4.50 apples", "4.5"),
        ("There are 1,250 coins, 3 of them gold", "3"),
        ("It costs <<3*4=12>>", None),  # numbers inside annotations are not answers
        ("no number here", None),
        ("", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_normalize_number_leaves_non_finite_words_alone():
    assert normalize_number(" inf. ") == "inf"
    assert normalize_number("100") == "100"  # not "1E+2"


def test_strip_calculator_annotations():
    text = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72"
    assert strip_calculator_annotations(text) == "Natalia sold 48/2 = 24 clips in May.\n#### 72"


def test_answers_match_compares_final_answers_only():
    gold = "He has 2*5 = <<2*5=10>>10 pens.\n#### 10"
    assert answers_match("Different steps, same end.\n#### 10.00", gold)
    assert answers_match("The answer is 10", gold)
    assert not answers_match("He has 2*5 = <<2*5=10>>10 pens.\n#### 11", gold)
    assert not answers_match("no answer at all", "no gold answer either")


def test_exact_match_accuracy():
    golds = ["#### 1", "#### 2", "#### 3", "#### 4"]
    assert exact_match_accuracy(["#### 1", "The answer is 2", "#### 4", ""], golds) == 0.5
    with pytest.raises(ValueError, match="3 predictions for 4"):
        exact_match_accuracy(["#### 1"] * 3, golds)
    with pytest.raises(ValueError, match="empty"):
        exact_match_accuracy([], [])


def test_evaluate_reasoning_scores_its_generations_with_exact_match_accuracy(monkeypatch, tokenizer):
    import importlib

    import torch

    evaluation = importlib.import_module("hf_distill.evaluation.generate")  # the package exports the function

    texts, golds = ["#### 1", "The answer is 2", "#### 4", ""], ["#### 1", "#### 2", "#### 3", "#### 4"]
    monkeypatch.setattr(evaluation, "generate", lambda model, tokenizer, prompts, *args: (texts[: len(prompts)], 1.0))
    result = evaluation.evaluate_reasoning(torch.nn.Linear(2, 2), tokenizer, ["q"] * 4, golds)
    assert result.accuracy == exact_match_accuracy(texts, golds) == 0.5
    assert result.answers == ["1", "2", "4", None]
    assert evaluation.evaluate_reasoning(torch.nn.Linear(2, 2), tokenizer, [], []).accuracy == 0.0  # no problems
    with pytest.raises(ValueError, match="3 predictions for 4"):
        evaluation.evaluate_reasoning(torch.nn.Linear(2, 2), tokenizer, ["q"] * 3, golds)


@pytest.mark.skipif(not GSM8K_TEST.is_file(), reason="GSM8K not found in /work/shared/data/gsm8k")
def test_extract_answer_reads_every_gsm8k_gold_answer():
    answers = [json.loads(line)["answer"] for line in GSM8K_TEST.read_text().splitlines()]
    assert len(answers) == 1319
    for answer in answers:
        written = answer.rsplit("####", 1)[1].strip()
        assert extract_answer(answer) == written.replace(",", ""), answer
    # and they survive stripping the calculator annotations
    assert all(extract_answer(strip_calculator_annotations(a)) == extract_answer(a) for a in answers)
