"""Logic-Match on hand-made rationales whose scores are worked out by hand (docs/logic_match.md)."""

import pytest

from hf_distill.evaluation.logic_match import (
    Step,
    align_steps,
    arithmetic_errors,
    canonical_expression,
    extract_steps,
    logic_match,
    mean_logic_match,
)

TEACHER = "He has 10+17 = <<10+17=27>>27 apples.\nHe has 27/3 = <<27/3=9>>9 apples.\n#### 9"


def test_steps_come_from_annotations_or_visible_equations_in_order():
    assert extract_steps(TEACHER) == [Step("(10+17)", "27"), Step("(27/3)", "9")]
    assert extract_steps("First, 17 + 10 = 27. Then 27 / 3 = 9, so the answer is 9") == [
        Step("(10+17)", "27"), Step("(27/3)", "9")]


def test_steps_ignore_text_without_equations_and_after_the_final_answer():
    assert extract_steps("Tom has 27 apples.\nHe keeps a third.\n#### 9\n2+2 = 4") == []


def test_gsm8k_money_and_thousands_are_normalised():
    text = "She pays $1,000 * 2 = $<<1000*2=2000>>2,000.\nThen 2,000 - 500.00 = 1,500\n#### 1500"
    assert extract_steps(text) == [Step("(1000*2)", "2000"), Step("(2000-500)", "1500")]


@pytest.mark.parametrize("a, b", [("1+2+3", "3 + (2+1)"), ("4*5", "5 × 4"), ("2*3+1", "1+3*2")])
def test_commutative_rewrites_are_the_same_expression(a, b):
    assert canonical_expression(a) == canonical_expression(b) is not None


@pytest.mark.parametrize("a, b", [("10-3", "3-10"), ("12/4", "4/12")])
def test_subtraction_and_division_keep_their_order(a, b):
    assert canonical_expression(a) != canonical_expression(b)


@pytest.mark.parametrize("text", ["5", "2**3", "x+1", "hello"])
def test_non_arithmetic_is_no_expression(text):
    assert canonical_expression(text) is None


def test_identical_path_in_other_words_scores_one():
    student = "Adding first: 17 + 10 = 27.\nSharing into three boxes: 27/3 = 9.\nThe answer is 9."
    assert logic_match(student, TEACHER) == 1.0
    assert logic_match(TEACHER, TEACHER) == 1.0


def test_a_slip_in_one_of_two_steps_gets_half_credit_for_it():
    # step 1: same expression, other result -> 0.5; step 2 identical -> 1. (0.5 + 1) / 2
    student = "He has 10+17 = 28 apples.\nHe has 27/3 = 9 apples.\n#### 9"
    assert logic_match(student, TEACHER) == 0.75


def test_same_intermediate_result_by_another_route_gets_half_credit():
    student = "He has 30-3 = 27 apples.\nHe has 27/3 = 9 apples.\n#### 9"
    assert logic_match(student, TEACHER) == 0.75


def test_a_missing_step_divides_by_the_longer_path():
    assert logic_match("He has 27/3 = 9 apples.\n#### 9", TEACHER) == 0.5


def test_an_extra_step_is_penalised_symmetrically():
    student = "10+17 = 27\n27*1 = 27\n27/3 = 9\n#### 9"
    assert logic_match(student, TEACHER) == pytest.approx(2 / 3)
    assert logic_match(TEACHER, student) == pytest.approx(2 / 3)


def test_reordered_steps_align_only_in_order():
    teacher = "2+3 = 5\n4*6 = 24\n#### 24"
    assert logic_match("4*6 = 24\n2+3 = 5\n#### 5", teacher) == 0.5


def test_a_wrong_path_scores_zero():
    assert logic_match("He has 10*3 = 30 apples.\n#### 30", TEACHER) == 0.0


def test_paths_without_steps_compare_final_answers():
    assert logic_match("#### 9", "The answer is 9.") == 1.0
    assert logic_match("#### 8", "#### 9") == 0.0
    assert logic_match("no idea", "#### 9") == 0.0


def test_alignment_matches_brute_force_on_a_small_case():
    from itertools import combinations

    s = [Step("a", "1"), Step("b", "2"), Step("c", "3"), Step("a", "9")]
    t = [Step("b", "2"), Step("c", "4"), Step("a", "9")]  # best: b-b 1, c3-c4 0.5 (a slip), a9-a9 1

    def score(i, j):
        return sum(1.0 if (p.expression, p.result) == (q.expression, q.result) else
                   0.5 if p.expression == q.expression or p.result == q.result else 0.0 for p, q in zip(i, j))

    brute = max(score([s[k] for k in i], [t[k] for k in j]) for n in range(4)
                for i in combinations(range(4), n) for j in combinations(range(3), n))
    assert align_steps(s, t) == brute == 2.5


def test_mean_over_problems_and_length_check():
    assert mean_logic_match([TEACHER, "#### 1"], [TEACHER, TEACHER]) == 0.5
    with pytest.raises(ValueError, match="2 student rationales for 1"):
        mean_logic_match([TEACHER, TEACHER], [TEACHER])


def test_arithmetic_errors_counts_wrong_equations():
    assert arithmetic_errors(TEACHER) == 0
    assert arithmetic_errors("10+17 = <<10+17=28>>28\n28/3 = <<28/3=9>>9\n#### 9") == 2
    assert arithmetic_errors("10/3 = 3.33 and 5/0 = 1") == 1  # money rounding is fine, division by zero is not


def test_fraction_results_count_and_algebra_is_not_a_step():
    # GSM8K writes proportions as fractions; "100/5 = 5A/5" divides an equation, it is no computation
    assert extract_steps("1/2 * 1/2 = 1/4\n2/12=2/12\n100/5 = 5A/5 or 20 = A.") == [
        Step("(((1/2)*1)/2)", "1/4"), Step("(2/12)", "1/6")]
    assert arithmetic_errors("1/2 * 1/2 = 1/4\n2/12=2/12") == 0
