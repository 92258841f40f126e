"""Answer metrics on worked examples (SQuAD v1.1 definitions)."""

import pytest

from updatelab.metrics.qa import bootstrap_ci, contains, exact_match, normalize_answer, strict, token_f1


def test_normalisation_drops_case_punctuation_articles():
    assert normalize_answer("  The Eiffel-Tower, in PARIS! ") == "eiffeltower in paris"


def test_exact_match_after_normalisation():
    assert exact_match("The Paris.", ["Paris"]) == 1.0
    assert exact_match("Paris, France", ["Paris"]) == 0.0


def test_exact_match_takes_any_alias():
    assert exact_match("8", ["eight", "8"]) == 1.0


def test_token_f1_worked_example():
    # pred tokens {new, york, city}, gold {new, york}: precision 2/3, recall 1 -> F1 = 0.8
    assert token_f1("New York City", ["New York"]) == pytest.approx(0.8)


def test_token_f1_no_overlap_is_zero():
    assert token_f1("Berlin", ["Paris"]) == 0.0


def test_contains_respects_word_boundaries():
    assert contains("She was born in Oslo, Norway.", ["Oslo"]) == 1.0
    assert contains("She studied Oslofjord history", ["Oslo"]) == 0.0


def test_bootstrap_ci_brackets_the_mean():
    lo, hi = bootstrap_ci([1, 0, 1, 1, 0, 1, 0, 1, 1, 1], seed=0)
    assert lo <= 0.7 <= hi and 0 <= lo < hi <= 1


def test_strict_does_not_credit_a_value_copied_after_the_first_clause():
    answer = "The harbor master is Ludmila Ferre. The mayor is Jan Olsen."
    assert contains(answer, ["Jan Olsen"]) == 1.0
    assert strict(answer, ["Jan Olsen"]) == 0.0
    assert strict(answer, ["Ludmila Ferre"]) == 1.0


def test_strict_keeps_a_boundary_that_belongs_to_the_gold_answer():
    assert strict("Johnson and Johnson, the company.", ["Johnson and Johnson"]) == 1.0
    assert strict("The Eiffel Tower is in Paris, France, and is a landmark.", ["France"]) == 1.0
    assert strict("She lives in St. Louis. She works there.", ["St. Louis"]) == 1.0
