"""Logic-Match: how closely a student's reasoning path follows the teacher's (definition: docs/logic_match.md).

A rationale is reduced to its *steps*: the arithmetic equations it writes, in order (``12+15 = 27``, or GSM8K's
``<<12+15=27>>`` calculator annotations). The words around them are ignored, so "He has 12+15 = 27 apples" and
"Adding gives 15+12 = 27." are the same step. Two paths are compared by the best order-preserving alignment of
their steps::

    sim(s, t) = 1    same expression (up to commutativity of + and *) and same result
                0.5  same result by another expression, or same expression with another result (a slip)
                0    otherwise
    logic_match(S, T) = max over monotone alignments A of  sum_{(i, j) in A} sim(S[i], T[j])  /  max(|S|, |T|)

1.0 exactly when the step sequences are identical; missing, extra, reordered or wrong steps lower it. Two paths
without any step score 1.0 when their final answers agree and 0.0 otherwise.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from hf_distill.evaluation.answers import extract_answer, normalize_number

_ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
# a stated result: a number or a fraction (``= 1/4``), not followed by a letter (``= 5A/5`` is algebra, not a step)
_RESULT = re.compile(r"\s*\$?\s*(-?(?:\d[\d,]*(?:\.\d+)?|\.\d+)(?:/\d+)?)(?![\d.,/]*[A-Za-z])")
_EXPRESSION_CHARS = set("0123456789.,$ ()+-*/×÷")
_OPERATORS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_COMMUTATIVE = (ast.Add, ast.Mult)
PARTIAL_CREDIT = 0.5


@dataclass(frozen=True)
class Step:
    """One intermediate computation: a canonical expression, the result the text states for it, and whether that
    result is what the expression evaluates to (an arithmetic slip such as ``28/3 = 9`` is not)."""

    expression: str
    result: str
    correct: bool = field(default=True, compare=False)


def canonical_expression(text: str) -> str | None:
    """A canonical form of an arithmetic expression, or None if ``text`` is not one with at least one operator.

    Numbers are normalised (``$1,000.0`` -> ``1000``), ``×``/``÷`` read as ``*``/``/``, and chains of ``+`` or ``*``
    are flattened and sorted, so ``3 + (2+1)`` and ``1+2+3`` are the same expression; ``-`` and ``/`` keep their order.
    """
    return _canonical_or_none(_parse(text))


def _canonical_or_none(tree: ast.BinOp | None) -> str | None:
    try:
        return None if tree is None else _canonical(tree)
    except ValueError:
        return None


def _parse(text: str) -> ast.BinOp | None:
    cleaned = text.replace("×", "*").replace("÷", "/").replace("$", "")
    cleaned = re.sub(r"(?<=\d),(?=\d{3})", "", cleaned).strip(" ,")
    try:
        tree = ast.parse(cleaned, mode="eval").body
    except SyntaxError:
        return None
    return tree if isinstance(tree, ast.BinOp) else None


def _value(node: ast.AST) -> Fraction:
    """Exact value of an expression that :func:`_canonical` accepted (raises ZeroDivisionError for x/0)."""
    if isinstance(node, ast.Constant):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp):
        return -_value(node.operand)
    left, right = _value(node.left), _value(node.right)
    if isinstance(node.op, ast.Add):
        return left + right
    if isinstance(node.op, ast.Sub):
        return left - right
    return left * right if isinstance(node.op, ast.Mult) else left / right


def _states_value(result: str, value: Fraction) -> bool:
    """Whether the stated result is the exact value; one stated with 2+ decimals may round it (money: 3.33)."""
    stated = Fraction(result)
    decimals = len(result.split(".")[1]) if "." in result else 0
    return stated == value or (decimals >= 2 and abs(stated - value) <= Fraction(1, 2 * 10**decimals))


def _canonical(node: ast.AST) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return normalize_number(repr(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return "-" + _canonical(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        symbol = _OPERATORS[type(node.op)]
        if isinstance(node.op, _COMMUTATIVE):
            terms = sorted(_flatten(node, type(node.op)))
            return "(" + symbol.join(terms) + ")"
        return f"({_canonical(node.left)}{symbol}{_canonical(node.right)})"
    raise ValueError(f"not arithmetic: {ast.dump(node)}")


def _flatten(node: ast.AST, op: type) -> list[str]:
    if isinstance(node, ast.BinOp) and isinstance(node.op, op):
        return _flatten(node.left, op) + _flatten(node.right, op)
    return [_canonical(node)]


def _rationale(text: str) -> str:
    """The text before the final-answer line: steps after ``####`` are not part of the path."""
    return text.split("####", 1)[0]


def extract_steps(text: str) -> list[Step]:
    """The equations of a rationale, in order. A line with calculator annotations contributes those (its visible
    ``a+b = c`` repeats them); any other line contributes each ``<expression> = <number>`` it contains."""
    steps: list[Step] = []
    for line in _rationale(text).splitlines():
        annotations = _ANNOTATION.findall(line)
        for left, right in annotations or _visible_equations(line):
            tree, stated = _parse(left), _RESULT.match(right)
            expression = _canonical_or_none(tree)  # canonical_expression(left), without parsing it again
            if expression is None or stated is None:
                continue
            result = _normalize_result(stated.group(1))
            try:
                correct = _states_value(result, _value(tree))
            except ZeroDivisionError:
                correct = False
            steps.append(Step(expression, result, correct))
    return steps


def _normalize_result(text: str) -> str:
    """``"1,000.0"`` -> ``"1000"``; a fraction in lowest terms, ``"2/4"`` -> ``"1/2"``, ``"6/3"`` -> ``"2"``."""
    if "/" not in text:
        return normalize_number(text)
    numerator, denominator = text.replace(",", "").split("/")
    if Fraction(denominator) == 0:
        return text
    value = Fraction(numerator) / Fraction(denominator)
    return str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"


def arithmetic_errors(text: str) -> int:
    """How many steps of a rationale state a result their expression does not evaluate to (``28/3 = 9``)."""
    return sum(not step.correct for step in extract_steps(text))


def _visible_equations(line: str) -> list[tuple[str, str]]:
    """``(left, right)`` for every ``=`` in ``line``: left is the longest run of arithmetic characters before it."""
    pairs = []
    for match in re.finditer("=", line):
        start = match.start()
        while start > 0 and line[start - 1] in _EXPRESSION_CHARS:
            start -= 1
        pairs.append((line[start : match.start()], line[match.end() :]))
    return pairs


def step_similarity(a: Step, b: Step) -> float:
    """1 for the same step, :data:`PARTIAL_CREDIT` when only the expression or only the result agrees, else 0."""
    same_expression, same_result = a.expression == b.expression, a.result == b.result
    if same_expression and same_result:
        return 1.0
    return PARTIAL_CREDIT if same_expression or same_result else 0.0


def align_steps(student: Sequence[Step], teacher: Sequence[Step]) -> float:
    """The largest total similarity of an order-preserving alignment (a weighted longest common subsequence).

    Naive version: try every pair of increasing index sequences of equal length and keep the best sum of
    ``step_similarity``; this dynamic programme gives the same value in ``O(|S| |T|)``.
    """
    best = [[0.0] * (len(teacher) + 1) for _ in range(len(student) + 1)]
    for i, s in enumerate(student, 1):
        for j, t in enumerate(teacher, 1):
            best[i][j] = max(best[i - 1][j], best[i][j - 1], best[i - 1][j - 1] + step_similarity(s, t))
    return best[-1][-1]


def logic_match(student_text: str, teacher_text: str) -> float:
    """Logic-Match of one student rationale against the teacher's for the same problem, in [0, 1]."""
    student, teacher = extract_steps(student_text), extract_steps(teacher_text)
    if not student and not teacher:
        answer = extract_answer(student_text)
        return float(answer is not None and answer == extract_answer(teacher_text))
    return align_steps(student, teacher) / max(len(student), len(teacher))


def mean_logic_match(student_texts: Sequence[str], teacher_texts: Sequence[str]) -> float:
    """Logic-Match averaged over problems (the corpus score reported next to exact-match accuracy)."""
    if len(student_texts) != len(teacher_texts):
        raise ValueError(f"got {len(student_texts)} student rationales for {len(teacher_texts)} teacher rationales")
    if not teacher_texts:
        raise ValueError("cannot score an empty list of rationales")
    return sum(map(logic_match, student_texts, teacher_texts)) / len(teacher_texts)
