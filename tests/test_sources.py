"""Teacher-rationale and GSM8K readers, their error messages, and the seqio sources."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from t5x_rationale.data import sources
from t5x_rationale.data.metrics import parse_number
from t5x_rationale.data.sources import (
    DataFormatError,
    read_gsm8k,
    read_rationale_jsonl,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

FULL_ROW = {
    "id": "q1",
    "input": "Which is bigger, 3 or 5?",
    "label": "5",
    "rationales": ["5 - 3 = 2 > 0, so 5 is bigger.", "5 comes after 3."],
    "negatives": ["3 has more letters."],
    "negative_labels": ["3"],
    "choices": ["3", "5"],
}
MINIMAL_ROW = {"id": 7, "input": "2 + 2?", "label": "4", "rationales": ["2 + 2 = 4."]}

GSM8K_ROWS = [
    {
        "question": "A shop sold 400 pens on Monday and 600 on Tuesday. How many in all?",
        "answer": "It sold 400 + 600 = <<400+600=1000>>1000 pens.\n#### 1,000",
    },
    {
        "question": "Tom had 5 apples and owes 8. What is his balance?",
        "answer": "5 - 8 = <<5-8=-3>>-3\n\nHis balance is -3.\n#### -3",
    },
]


# ----------------------------------------------------------------------------- helpers


def write_lines(path: Path, lines: list[Any]) -> Path:
    """Write rows (dicts are JSON-encoded, strings written as they are), one per line."""
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def with_fields(**changes: Any) -> dict[str, Any]:
    """MINIMAL_ROW with some fields replaced; a value of ... removes the field."""
    row = {**MINIMAL_ROW, **changes}
    return {key: value for key, value in row.items() if value is not ...}


def gsm8k_dir() -> Path:
    """<repo>/../shared/data/gsm8k, or skip the test when this checkout lacks it."""
    path = REPO_ROOT.parent / "shared" / "data" / "gsm8k"
    if not (path / "train.jsonl").is_file():
        pytest.skip(f"GSM8K data not found at {path}")
    return path


def decode(example: dict[str, Any]) -> dict[str, Any]:
    """A numpy example from the seqio source as Python strings and lists."""
    out: dict[str, Any] = {}
    for key, value in example.items():
        out[key] = value.decode() if isinstance(value, bytes) else [v.decode() for v in value]
    return out


def expect_error(path: Path, line: int | None, field: str | None, **kwargs: Any) -> str:
    """Read `path`, assert DataFormatError names file/line/field; return its message."""
    with pytest.raises(DataFormatError) as info:
        read_rationale_jsonl(path, **kwargs)
    error, message = info.value, str(info.value)
    assert str(path) in message
    assert (error.line, error.field) == (line, field)
    if line is not None:
        assert f"{path}:{line}: " in message
    if field is not None:
        assert f"field '{field}'" in message
    return message


# ----------------------------------------------------------------------------- JSONL


def test_good_file_round_trips(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "good.jsonl", [FULL_ROW, "", "   ", MINIMAL_ROW])
    result = read_rationale_jsonl(path)
    assert result.path == str(path)
    assert result.skipped == []
    assert result.rows == [
        FULL_ROW,
        {**MINIMAL_ROW, "id": "7", "negatives": [], "negative_labels": [], "choices": []},
    ]


def test_optional_edge_cases_are_accepted(tmp_path: Path) -> None:
    rows = [
        with_fields(id="a", rationales=[], negatives=["wrong"]),  # labels may be absent
        with_fields(id="b", choices=[]),  # empty choices: not multiple choice
        with_fields(id="c", source="hand-written"),
    ]
    path = write_lines(tmp_path / "edge.jsonl", rows)
    result = read_rationale_jsonl(path, require_rationales=False, allow_extra_fields=True)
    assert [row["id"] for row in result.rows] == ["a", "b", "c"]
    assert result.rows[0]["negatives"] == ["wrong"] and result.rows[0]["negative_labels"] == []
    assert result.rows[2]["source"] == "hand-written"


BAD_ROWS = {
    "label_int": (with_fields(label=42), "label", "expected a string, got int (42)"),
    "missing_input": (with_fields(input=...), "input", "missing required field"),
    "empty_input": (with_fields(input="  "), "input", "must not be empty"),
    "rationales_string": (with_fields(rationales="a"), "rationales", "expected a list"),
    "rationale_not_string": (
        with_fields(rationales=["ok", 7]),
        "rationales[1]",
        "expected a string, got int (7)",
    ),
    "no_rationales": (with_fields(rationales=[]), "rationales", "at least one rationale"),
    "bool_id": (with_fields(id=True), "id", "got bool (True)"),
    "unknown_field": (with_fields(rationale=["x"]), "rationale", "unknown field"),
    "label_not_in_choices": (with_fields(choices=["1", "2"]), "label", "not one of the choices"),
    "negative_repeats_rationale": (
        with_fields(rationales=["r1", "r2"], negatives=["x", " r2 "]),
        "negatives[1]",
        "is the same text as rationales[1]",
    ),
    "negative_labels_mismatch": (
        with_fields(negatives=["a", "b"], negative_labels=["1"]),
        "negative_labels",
        "has 1 entries but 'negatives' has 2",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_ROWS))
def test_bad_row_names_file_line_and_field(tmp_path: Path, case: str) -> None:
    row, field, reason = BAD_ROWS[case]
    path = write_lines(tmp_path / "data.jsonl", [FULL_ROW, "", row])
    assert reason in expect_error(path, 3, field)


def test_bad_json_names_file_line_and_column(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "data.jsonl", [MINIMAL_ROW, '{"id": "x" "input": 1}'])
    message = expect_error(path, 2, None)
    assert message == f"{path}:2: not valid JSON: Expecting ',' delimiter (column 12)"


def test_non_object_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "data.jsonl", ['["a", "b"]'])
    assert "expected a JSON object, got list" in expect_error(path, 1, None)


def test_duplicate_id_names_first_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "data.jsonl", [MINIMAL_ROW, FULL_ROW, with_fields(id="7")])
    message = expect_error(path, 3, "id")
    assert "duplicate id '7' (first seen on line 1)" in message


@pytest.mark.parametrize("content", ["", "\n\n  \n"])
def test_empty_file(tmp_path: Path, content: str) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text(content)
    assert "no rows" in expect_error(path, None, None)


def test_missing_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_rationale_jsonl(path)


def test_skip_invalid_counts_and_reports(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = [MINIMAL_ROW, "{bad", with_fields(id="x", label=1), FULL_ROW, with_fields(id="7")]
    path = write_lines(tmp_path / "data.jsonl", lines)
    with caplog.at_level(logging.WARNING, logger=sources.__name__):
        result = read_rationale_jsonl(path, skip_invalid=True)
    assert [row["id"] for row in result.rows] == ["7", "q1"]
    assert [line for line, _ in result.skipped] == [2, 3, 5]
    assert result.skipped[0][1].startswith("not valid JSON")
    assert result.skipped[1][1] == "field 'label': expected a string, got int (1)"
    assert "duplicate id '7'" in result.skipped[2][1]
    assert result.stats().num_skipped == 3 and result.stats().num_rows == 2
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "skipped 3 of 5 rows" in warning and "line 2: not valid JSON" in warning


def test_skip_invalid_with_no_valid_row_still_fails(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "data.jsonl", ["{bad", with_fields(label=1)])
    message = expect_error(path, None, None, skip_invalid=True)
    assert "all 2 rows are invalid" in message and "line 1: not valid JSON" in message


def test_readers_work_without_tensorflow(tmp_path: Path) -> None:
    """The pure-Python readers must not import TF (data tools run where it is absent)."""
    path = write_lines(tmp_path / "data.jsonl", [MINIMAL_ROW])
    code = (
        "import sys; sys.modules['tensorflow'] = sys.modules['seqio'] = None\n"
        "from t5x_rationale.data.sources import read_rationale_jsonl\n"
        f"print(len(read_rationale_jsonl({str(path)!r}).rows))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "1"


# ----------------------------------------------------------------------------- GSM8K


def test_gsm8k_fixture(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "mini.jsonl", GSM8K_ROWS)
    rows = read_gsm8k(path).rows
    assert rows[0] == {
        "id": "mini.jsonl-1",
        "input": GSM8K_ROWS[0]["question"],
        "label": "1000",
        "rationales": ["It sold 400 + 600 = 1000 pens."],
        "negatives": [],
        "negative_labels": [],
        "choices": [],
    }
    assert rows[1]["label"] == "-3"
    assert rows[1]["rationales"] == ["5 - 8 = -3\nHis balance is -3."]


def test_gsm8k_keep_annotations(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "mini.jsonl", GSM8K_ROWS)
    rows = read_gsm8k(path, keep_annotations=True).rows
    assert rows[0]["rationales"] == ["It sold 400 + 600 = <<400+600=1000>>1000 pens."]


@pytest.mark.parametrize(
    "answer, reason",
    [
        ("It is 4.", "found no"),
        ("It is 4.\n#### four", "not a number: 'four'"),
        ("It is 4.\n#### 4\n#### 5", "found more than one"),
        ("#### 4", "no rationale"),
    ],
)
def test_gsm8k_bad_answer(tmp_path: Path, answer: str, reason: str) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [GSM8K_ROWS[0], {"question": "q", "answer": answer}])
    with pytest.raises(DataFormatError, match=f"^{path}:2: field 'answer': ") as info:
        read_gsm8k(path)
    assert reason in str(info.value)


def test_gsm8k_skip_invalid(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "bad.jsonl", [{"question": "q"}, *GSM8K_ROWS])
    result = read_gsm8k(path, skip_invalid=True)
    assert len(result.rows) == 2
    assert result.skipped == [(1, "field 'answer': missing required field")]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("1,000", "1000"),
        ("5.0", "5"),
        ("$18", "18"),
        (" -0.50 ", "-0.5"),
        ("-$1,234", "-1234"),
        (".5", "0.5"),
        ("18.", "18"),
        ("-0", "0"),
        ("1,2", None),
        ("abc", None),
        ("", None),
        ("$", None),
        ("1e3", None),
    ],
)
def test_parse_number(text: str, expected: str | None) -> None:
    assert parse_number(text) == expected


@pytest.mark.parametrize("split, num_rows", [("train", 7473), ("test", 1319)])
def test_real_gsm8k(split: str, num_rows: int) -> None:
    result = read_gsm8k(gsm8k_dir() / f"{split}.jsonl")
    assert len(result.rows) == num_rows and result.skipped == []
    for row in result.rows:
        assert parse_number(row["label"]) is not None, row
        assert len(row["rationales"]) == 1 and row["rationales"][0].strip(), row
        assert "<<" not in row["rationales"][0], row


# ----------------------------------------------------------------------------- seqio


def test_rationale_source_matches_python_rows(tmp_path: Path) -> None:
    rows = [FULL_ROW, MINIMAL_ROW, with_fields(id="e", rationales=["a", "b", "c"])]
    write_lines(tmp_path / "train.jsonl", rows)
    source = sources.rationale_source({"train": str(tmp_path / "train.jsonl")})
    dataset = source.get_dataset("train", shuffle=False)
    expected = read_rationale_jsonl(tmp_path / "train.jsonl").rows
    assert [decode(ex) for ex in dataset.as_numpy_iterator()] == expected
    assert dataset.element_spec["rationales"].shape.as_list() == [None]
    assert dataset.element_spec["id"].shape.as_list() == []
    assert source.num_input_examples("train") == 3
    assert source.last_read_stats[str(tmp_path / "train.jsonl")].num_rows == 3


def test_rationale_source_reports_errors_when_built(tmp_path: Path) -> None:
    write_lines(tmp_path / "a.jsonl", [MINIMAL_ROW])
    write_lines(tmp_path / "b.jsonl", [MINIMAL_ROW, with_fields(id="z", label=3)])
    source = sources.rationale_source({"train": str(tmp_path / "*.jsonl")})  # no reading yet
    with pytest.raises(DataFormatError, match=f"^{tmp_path / 'b.jsonl'}:2: field 'label'"):
        source.get_dataset("train", shuffle=False)


def test_rationale_source_skip_invalid_stats(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "a.jsonl", [MINIMAL_ROW, "{bad"])
    source = sources.rationale_source({"train": str(path)}, skip_invalid=True)
    assert len(list(source.get_dataset("train", shuffle=False))) == 1
    assert source.last_read_stats[str(path)].skipped[0][0] == 2


def test_rationale_source_globs_in_sorted_order(tmp_path: Path) -> None:
    for name in ["b", "a", "c"]:
        rows = [with_fields(id=f"{name}1"), with_fields(id=f"{name}2")]
        write_lines(tmp_path / f"{name}.jsonl", rows)
    write_lines(tmp_path / "notes.txt", ["not data"])
    source = sources.rationale_source(
        {
            "train": str(tmp_path / "[ab].jsonl"),
            "all": [str(tmp_path / "c.jsonl"), str(tmp_path / "*.jsonl")],
        }
    )

    def ids(split: str) -> list[str]:
        dataset = source.get_dataset(split, shuffle=False)
        return [ex["id"].decode() for ex in dataset.as_numpy_iterator()]

    assert ids("train") == ["a1", "a2", "b1", "b2"]
    assert ids("all") == ["c1", "c2", "a1", "a2", "b1", "b2"]  # patterns in order, files once


def test_rationale_source_shuffles_files_with_seed(tmp_path: Path) -> None:
    for i in range(8):
        write_lines(tmp_path / f"{i}.jsonl", [with_fields(id=f"{i}-1"), with_fields(id=f"{i}-2")])
    source = sources.rationale_source({"train": str(tmp_path / "*.jsonl")})

    def ids(seed: int) -> list[str]:
        dataset = source.get_dataset("train", shuffle=True, seed=seed)
        return [ex["id"].decode() for ex in dataset.as_numpy_iterator()]

    assert ids(3) == ids(3)
    assert sorted(ids(3)) == sorted(ids(4)) and ids(3) != ids(4)
    first = ids(3)
    # Only the file order changes: the two rows of each file stay together, in order.
    assert all(first[k + 1] == first[k][:-1] + "2" for k in range(0, len(first), 2))


def test_rationale_source_missing_pattern(tmp_path: Path) -> None:
    source = sources.rationale_source({"train": str(tmp_path / "missing-*.jsonl")})
    with pytest.raises(FileNotFoundError, match="missing-"):
        source.get_dataset("train", shuffle=False)


def test_rationale_source_rejects_options_of_the_other_reader() -> None:
    with pytest.raises(ValueError, match="keep_annotations"):
        sources.rationale_source({"train": "x"}, keep_annotations=True)
    with pytest.raises(ValueError, match="unknown reader"):
        sources.rationale_source({"train": "x"}, reader="csv")


def test_gsm8k_source_real_data() -> None:
    path = gsm8k_dir() / "test.jsonl"
    source = sources.rationale_source({"test": str(path)}, reader="gsm8k")
    examples = [decode(ex) for ex in source.get_dataset("test", shuffle=False).as_numpy_iterator()]
    assert examples == read_gsm8k(path).rows
    assert source.num_input_examples("test") == 1319


def test_text_line_source(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("first doc\n\n  \nsecond doc\n")
    (tmp_path / "b.txt").write_text("third doc")
    source = sources.text_line_source({"train": str(tmp_path / "*.txt")})
    dataset = source.get_dataset("train", shuffle=False)
    assert sorted(ex["text"].decode() for ex in dataset.as_numpy_iterator()) == [
        "first doc",
        "second doc",
        "third doc",
    ]
    empty = sources.text_line_source({"train": str(tmp_path / "none-*.txt")})
    with pytest.raises(FileNotFoundError, match="none-"):
        empty.get_dataset("train", shuffle=False)
