"""Final-answer extraction and exact-match scoring for GSM8K-style rationales.

Small students rarely produce perfectly formatted output, so extraction is layered: the last
``#### X`` line (the GSM8K convention the models are trained on), then ``The answer is X``, then
the last number anywhere. Numbers are normalised so that ``$1,000.00`` and ``1000`` match.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_CALCULATOR = re.compile(r"<<[^<>]*>>")
_NUMBER = re.compile(r"-?\$?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_HASH_ANSWER = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS = re.compile(r"answer is[:\s]*(-?\$?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)


def strip_calculator_annotations(text: str) -> str:
    """Remove GSM8K ``<<48/2=24>>`` calculator annotations, which shorten sequences by about a third."""
    return _CALCULATOR.sub("", text)


def normalize_number(text: str) -> str:
    """Canonical form of a numeric answer: ``"$1,000.00"`` -> ``"1000"``, ``"5.50."`` -> ``"5.5"``.

    Text that is not a number is returned stripped of whitespace and a trailing period, so that
    non-numeric answers can still be compared exactly.
    """
    cleaned = text.strip().rstrip(".").replace(",", "").replace("$", "").strip()
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return cleaned
    if not value.is_finite():  # "nan", "inf" parse as decimals but are no answer
        return cleaned
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def extract_answer(text: str) -> str | None:
    """The normalised final answer in ``text``, or ``None`` if it holds no answer at all.

    Looks, in order, for the last non-empty ``#### X``, the last ``The answer is X``, and the last
    number outside calculator annotations. After ``####`` the first number wins, so
    ``#### 20 apples`` gives ``"20"``; text with no number there is kept as it is.
    """
    hashes = [h for h in _HASH_ANSWER.findall(text) if h.strip()]
    if hashes:
        numbers = _NUMBER.findall(hashes[-1])
        return normalize_number(numbers[0] if numbers else hashes[-1])
    answer_is = _ANSWER_IS.findall(text)
    if answer_is:
        return normalize_number(answer_is[-1])
    numbers = _NUMBER.findall(strip_calculator_annotations(text))
    return normalize_number(numbers[-1]) if numbers else None


def answers_match(pred_text: str, gold_text: str) -> bool:
    """Whether a generated rationale reaches the gold rationale's final answer."""
    gold = extract_answer(gold_text)
    return gold is not None and extract_answer(pred_text) == gold


def exact_match_accuracy(predictions: list[str], golds: list[str]) -> float:
    """Fraction of predictions whose final answer matches the gold one."""
    if len(predictions) != len(golds):
        raise ValueError(f"got {len(predictions)} predictions for {len(golds)} gold answers")
    if not golds:
        raise ValueError("cannot score an empty list of predictions")
    return sum(answers_match(p, g) for p, g in zip(predictions, golds, strict=True)) / len(golds)
