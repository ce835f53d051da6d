"""Synthetic multi-step arithmetic word problems in GSM8K format.

GSM8K itself is too hard for the few-million-parameter students that train in minutes on a CPU, so
demos and tests need a task with the same *format* (question; rationale with ``<<a+b=c>>``
calculator annotations; ``#### answer``) but a small, regular vocabulary and small numbers.

Every problem follows one person's stock of one kind of object through ``num_steps`` rationale
lines. Each line is a single operation on the running total (``+``, ``-``, ``*`` or exact ``/``),
so a model that has learnt one-operation arithmetic on numbers below 1000 can solve the chain::

    Tom has 12 apples. He buys 5 bags with 3 apples each. He gives away 7 apples.
    How many apples does Tom have now?

    Tom buys 5*3 = <<5*3=15>>15 apples.
    He has 12+15 = <<12+15=27>>27 apples.
    He has 27-7 = <<27-7=20>>20 apples.
    #### 20
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from datasets import Dataset, DatasetDict, Features, Value

MAX_STEPS = 4
MIN_MAX_VALUE = 50
"""The smallest ``max_value`` that still leaves room for every start value and step size."""

NAMES = {"Tom": "he", "Sam": "he", "Ben": "he", "Max": "he", "Ann": "she", "Mia": "she", "Eva": "she", "Zoe": "she"}
OBJECTS = ("apples", "books", "cards", "coins", "cookies", "marbles", "pens", "stickers")
FEATURES = Features({"question": Value("string"), "answer": Value("string"), "num_steps": Value("int64")})


@dataclass
class _Person:
    """The running state of one problem: who, what, and how many they hold."""

    name: str
    pronoun: str
    obj: str
    value: int
    max_value: int

    @property
    def subject(self) -> str:
        return self.pronoun.capitalize()

    def has(self, calc: str) -> str:
        """The rationale line for a new total: every operation reads the same, to keep lines short."""
        return f"{self.subject} has {calc} {self.obj}."


@dataclass
class _Step:
    """One operation: the sentence it adds to the question and the rationale lines it produces."""

    sentence: str
    lines: list[str]


def _calc(a: int, op: str, b: int) -> tuple[str, int]:
    """Return ``"a+b = <<a+b=c>>c"`` and ``c``, the GSM8K calculator-annotated form of one operation."""
    result = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    expr = f"{a}{op}{b}"
    return f"{expr} = <<{expr}={result}>>{result}", result


def _gain(rng: random.Random, p: _Person) -> _Step | None:
    n = rng.randint(2, 20)
    if p.value + n > p.max_value:
        return None
    verb = rng.choice(("buys", "finds", "wins"))
    calc, p.value = _calc(p.value, "+", n)
    return _Step(f"{p.subject} {verb} {n} more {p.obj}.", [p.has(calc)])


def _loss(rng: random.Random, p: _Person) -> _Step | None:
    if p.value < 4:
        return None
    n = rng.randint(2, min(20, p.value - 2))
    verb = rng.choice(("gives away", "loses", "sells"))
    calc, p.value = _calc(p.value, "-", n)
    return _Step(f"{p.subject} {verb} {n} {p.obj}.", [p.has(calc)])


def _times(rng: random.Random, p: _Person) -> _Step | None:
    factors = [k for k in (2, 3, 4) if p.value * k <= p.max_value]
    if not factors:
        return None
    k = rng.choice(factors)
    calc, p.value = _calc(p.value, "*", k)
    return _Step(f"Then {p.pronoun} has {k} times as many {p.obj}.", [p.has(calc)])


def _share(rng: random.Random, p: _Person) -> _Step | None:
    divisors = [k for k in (2, 3, 4, 5) if p.value % k == 0 and p.value // k >= 2]
    if not divisors:
        return None
    k = rng.choice(divisors)
    calc, p.value = _calc(p.value, "/", k)
    return _Step(f"{p.subject} puts them into {k} equal boxes and keeps one.", [p.has(calc)])


def _bags(rng: random.Random, p: _Person) -> _Step | None:
    """A two-line step: a product, then adding or removing it."""
    bags, each = rng.randint(2, 9), rng.randint(2, 9)
    product, total = _calc(bags, "*", each)
    if rng.random() < 0.5 and p.value + total <= p.max_value:
        sentence = f"{p.subject} buys {bags} bags with {each} {p.obj} each."
        first = f"{p.name} buys {product} {p.obj}."
        calc, p.value = _calc(p.value, "+", total)
    elif p.value - total >= 2:
        sentence = f"{p.subject} gives {bags} friends {each} {p.obj} each."
        first = f"{p.name} gives away {product} {p.obj}."
        calc, p.value = _calc(p.value, "-", total)
    else:
        return None
    return _Step(sentence, [first, p.has(calc)])


_ONE_LINE_STEPS: tuple[Callable[[random.Random, _Person], _Step | None], ...] = (_gain, _loss, _times, _share)


def generate_problem(rng: random.Random, num_steps: int, max_value: int = 999) -> dict[str, str | int]:
    """Draw one problem whose rationale has exactly ``num_steps`` lines before ``#### answer``.

    Operations that would leave the range ``[2, max_value]`` or need an inexact division are
    skipped for that step, so every intermediate result is an integer in that range (and every
    count reads as a plural).
    """
    if not 1 <= num_steps <= MAX_STEPS:
        raise ValueError(f"num_steps must be between 1 and {MAX_STEPS}, got {num_steps}")
    if max_value < MIN_MAX_VALUE:
        raise ValueError(f"max_value must be at least {MIN_MAX_VALUE}, got {max_value}")
    name = rng.choice(sorted(NAMES))
    person = _Person(name, NAMES[name], rng.choice(OBJECTS), rng.randint(2, 30), max_value)
    sentences = [f"{name} has {person.value} {person.obj}."]
    lines: list[str] = []
    while len(lines) < num_steps:
        makers = list(_ONE_LINE_STEPS) + ([_bags] if num_steps - len(lines) >= 2 else [])
        rng.shuffle(makers)
        for make in makers:
            step = make(rng, person)
            if step is not None:
                break
        else:  # unreachable: _gain fits any value up to max_value - 20 and _loss any value above 3
            raise RuntimeError(f"no operation fits the value {person.value}")
        sentences.append(step.sentence)
        lines.extend(step.lines)
    sentences.append(f"How many {person.obj} does {name} have now?")
    answer = "\n".join([*lines, f"#### {person.value}"])
    return {"question": " ".join(sentences), "answer": answer, "num_steps": num_steps}


def make_arithmetic_dataset(
    n_train: int, n_test: int, seed: int = 0, max_steps: int = 3, min_steps: int = 2, max_value: int = 999
) -> DatasetDict:
    """Build ``train``/``test`` splits of distinct problems, deterministic in ``seed``.

    Two difficulty knobs: ``num_steps`` is drawn uniformly from ``[min_steps, max_steps]``, and
    ``max_value`` bounds every number (99 keeps them to two digits). Questions are unique across
    both splits, so test accuracy measures generalisation, not recall.
    """
    if not 1 <= min_steps <= max_steps <= MAX_STEPS:
        raise ValueError(f"need 1 <= min_steps <= max_steps <= {MAX_STEPS}, got {min_steps=}, {max_steps=}")
    if n_train < 0 or n_test < 0:
        raise ValueError(f"split sizes must be non-negative, got {n_train=}, {n_test=}")
    rng = random.Random(seed)
    wanted = n_train + n_test
    problems: dict[str, dict[str, str | int]] = {}
    attempts_left = 20 * wanted + 100
    while len(problems) < wanted:
        if attempts_left == 0:
            raise ValueError(f"could only draw {len(problems)} distinct problems of the {wanted} asked for")
        attempts_left -= 1
        problem = generate_problem(rng, rng.randint(min_steps, max_steps), max_value)
        problems.setdefault(str(problem["question"]), problem)
    rows = list(problems.values())
    return DatasetDict({"train": _to_dataset(rows[:n_train]), "test": _to_dataset(rows[n_train:])})


def _to_dataset(rows: list[dict[str, str | int]]) -> Dataset:
    """Columns built explicitly: ``Dataset.from_list([], features=...)`` fails in datasets 5."""
    return Dataset.from_dict({column: [row[column] for row in rows] for column in FEATURES}, features=FEATURES)
