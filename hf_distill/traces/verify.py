"""Rejection sampling: put a sampled trace in canonical form, check its answer against the gold one, drop repeats.

A canonical trace is the rationale (everything before the first ``####``, whitespace trimmed) followed by one line
``#### <normalised answer>``: text a teacher writes after its final answer is not trained on. A trace whose answer
cannot be found (no ``####``, no "the answer is", no number) keeps its raw text and is never verified.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hf_distill.evaluation.answers import extract_answer

_SPACES = re.compile(r"[ \t]+")


@dataclass(frozen=True)
class CheckedTrace:
    completion: str
    answer: str | None
    verified: bool


def canonical_trace(text: str) -> tuple[str, str | None]:
    """``(completion, answer)``: the rationale up to the first final-answer line, then ``#### answer``."""
    first = text.find("####")
    end = text.find("\n", first) if first >= 0 else -1
    answer = extract_answer(text if first < 0 or end < 0 else text[:end])  # the first final answer, not a later one
    if answer is None:
        return text.strip(), None
    rationale = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("####", 1)[0].strip().splitlines())
    return (f"{rationale}\n#### {answer}" if rationale else f"#### {answer}"), answer


def check_trace(text: str, gold_answer: str) -> CheckedTrace:
    """Canonicalise ``text`` and verify its final answer against the gold rationale's (``#### N``)."""
    completion, answer = canonical_trace(text)
    return CheckedTrace(completion, answer, answer is not None and answer == gold_answer)


def dedupe_key(problem_id: int, completion: str) -> tuple[int, str]:
    """Two samples for one problem are duplicates when their canonical traces agree up to case and blank lines."""
    return problem_id, "\n".join(line for line in completion.lower().splitlines() if line.strip())
