"""Answer extraction and the task metrics."""

import pytest

from t5x_rationale.data import metrics


@pytest.mark.parametrize(
    "text,answer",
    [
        ("Tom has 3 + 4 = 7 apples. --> 7", "7"),
        ("a --> b --> 1,000", "1000"),
        ("So the total is 12. The answer is 12.", "12"),
        ("The answer is $18.50.", "18.5"),
        ("42", "42"),
        (" 5.0 ", "5"),
        ("-3", "-3"),
        ("blue", "blue"),
        ("x -->", None),
    ],
)
def test_extract_answer(text, answer):
    assert metrics.extract_answer(text) == answer


def test_postprocessor_accepts_bytes():
    assert metrics.answer_postprocessor(b"steps --> 9", is_target=True) == "9"


def test_answer_accuracy_counts_hits():
    targets = ["1", "2", "3", "4"]
    predictions = ["1", None, "3", "5"]
    assert metrics.answer_accuracy(targets, predictions) == {"answer_accuracy": 50.0}


def test_exact_match_strips_whitespace_and_decodes():
    assert metrics.exact_match([b"a b", "c"], ["a b ", "d"]) == {"exact_match": 50.0}


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 targets but 1 predictions"):
        metrics.answer_accuracy(["1", "2"], ["1"])
