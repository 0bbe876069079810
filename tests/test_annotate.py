"""Teacher annotation: agreement and majority filtering against a slow reference, annotate end to
end from a checkpoint, and the bad inputs (training on the written JSONL:
test_annotate_training.py)."""

import collections
import json

import gin
import pytest
from generation_setup import save_checkpoint

from t5x_rationale import annotate as annotate_mod
from t5x_rationale import gin_launch
from t5x_rationale.architectures import get_preset
from t5x_rationale.data.annotation import teacher_rows
from t5x_rationale.data.annotation_inputs import read_few_shot
from t5x_rationale.data.metrics import extract_answer, normalize_answer
from t5x_rationale.data.vocab import get_vocabulary
from t5x_rationale.inference.decoding import DecodeConfig

VOCAB = get_vocabulary()
MODEL = get_preset("t5-tiny", vocab_size=-(-VOCAB.vocab_size // 128) * 128)
QUESTIONS = [
    {"id": "a", "input": "Tom has 3 apples and buys 4 more. How many?", "label": "7"},
    {"id": "b", "input": "What is 2 plus 3?", "label": None},
    {"id": "c", "input": "Ann had 5 pens and lost 3. How many are left?", "label": "2"},
    {"id": "d", "input": "A long question that was skipped.", "label": "1"},
    {"id": "e", "input": "Pick 1 or 2.", "label": None},
    {"id": "f", "input": "What is 10 times 100?", "label": "1,000"},
]
SAMPLES = {  # (text, finished) per question; d has none (its prompt was skipped)
    "a": [("3 + 4 = 7. --> 7", True), ("3 + 4 = 7. --> 7", True), ("3 + 5 = 8. --> 8", True),
          ("the answer is 7", True), ("3 + 4 = 7. --> 7", False), ("3 + 4 is seven --> 7.0", True)],
    "b": [("2 + 3 = 5 --> 5", True), ("two and three --> 5", True), ("2 * 3 = 6 --> 6", True),
          ("two and three --> 6", True), ("--> 5", True), ("2 + 3 -->", True)],
    "c": [("5 + 3 = 8 --> 8", True), ("5 * 3 = 15 --> 15", True)],
    "e": [("one --> 1", True), ("two --> 2", True)],
    "f": [("10 * 100 = 1000 --> 1000", True), ("10 * 100 = 1000 --> $1,000", True)],
}  # fmt: skip


def _generations():
    return [
        {"id": key, "sample": k, "prompt": "", "text": text, "finished": finished}
        for key, samples in SAMPLES.items()
        for k, (text, finished) in enumerate(samples)
    ]


def _reference(questions, generations):
    """Slow reference: each question's samples parsed and sorted into positives and negatives."""
    rows, counts = [], collections.Counter()
    for q in questions:
        samples = [g for g in generations if g["id"] == q["id"]]
        if not samples:
            counts["prompts_skipped"] += 1
            continue
        parsed = []
        for g in samples:
            head, marker, _ = g["text"].rpartition("-->")
            answer = extract_answer(g["text"])
            if not g["finished"]:
                counts["unfinished"] += 1
            elif not marker or not head.strip() or answer is None:
                counts["unparseable"] += 1
            else:
                parsed.append((head.strip(), answer))
        if q["label"] is not None:
            target = normalize_answer(q["label"])
        else:
            votes = collections.Counter(a for _, a in parsed)
            target = next((a for _, a in parsed if votes[a] == max(votes.values())), None)
        good, bad = [], []
        for r, a in parsed:
            (good if a == target else bad).append((r, a))
        counts["agree"] += len(good)
        counts["disagree"] += len(bad)
        rationales = []
        for r, _ in good:
            if r not in rationales:
                rationales.append(r)
        negatives, labels = [], []
        for r, a in bad:
            if r not in rationales and r not in negatives:
                negatives.append(r)
                labels.append(a)
        counts["duplicates_dropped"] += len(good) + len(bad) - len(rationales) - len(negatives)
        if not rationales:
            counts["questions_without_positive"] += 1
            continue
        label = q["label"] if q["label"] is not None else target
        rows.append(
            {"id": q["id"], "input": q["input"], "label": label, "rationales": rationales,
             "negatives": negatives, "negative_labels": labels}
        )  # fmt: skip
    return rows, counts


def test_filtering_matches_the_reference():
    rows, counts = teacher_rows(QUESTIONS, _generations())
    expected_rows, expected_counts = _reference(QUESTIONS, _generations())
    assert rows == expected_rows
    assert {k: v for k, v in counts.items() if v} == {
        **{k: v for k, v in expected_counts.items() if v},
        "questions": 6,
        "questions_written": 4,
        "samples": 18,
    }
    by_id = {r["id"]: r for r in rows}
    assert by_id["a"]["rationales"] == ["3 + 4 = 7.", "3 + 4 is seven"]
    assert (by_id["a"]["negatives"], by_id["a"]["negative_labels"]) == (["3 + 5 = 8."], ["8"])
    # No label: the majority answer (5) decides, and a negative repeating a rationale is dropped.
    assert by_id["b"]["label"] == "5" and by_id["b"]["negatives"] == ["2 * 3 = 6"]
    assert by_id["e"]["label"] == "1"  # a tie goes to the answer stated first
    assert by_id["f"]["rationales"] == ["10 * 100 = 1000"]  # "1,000" and "$1,000" agree
    assert counts["unparseable"] == 3 and counts["unfinished"] == 1
    assert counts["questions_without_positive"] == 1 and counts["prompts_skipped"] == 1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A randomly initialised tiny T5 over the shipped vocabulary, saved at step 0."""
    directory = str(tmp_path_factory.mktemp("checkpoint") / "t5")
    save_checkpoint("t5-tiny", directory, vocab_size=MODEL.vocab_size)
    return directory


def _annotate(tmp_path, checkpoint, questions, **overrides):
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in questions))
    kwargs = dict(
        model_config=MODEL,
        checkpoint_path=checkpoint,
        output_file=str(tmp_path / "out" / "teacher.jsonl"),
        questions_file=str(path),
        num_samples=3,
        decode_config=DecodeConfig(max_decode_length=8, method="sample", top_p=0.9),
        input_length=32,
        batch_size=8,
        shard_size=4,
    )
    return annotate_mod.annotate(**{**kwargs, **overrides})


def test_annotate_end_to_end(tmp_path, checkpoint):
    questions = [{k: v for k, v in q.items() if v is not None} for q in QUESTIONS]
    questions[3]["input"] = "a very long question " * 10
    summary = _annotate(tmp_path, checkpoint, questions, skip_long_prompts=True)
    written = json.loads((tmp_path / "out" / "teacher.summary.json").read_text())
    assert written == summary
    assert summary["prompts_skipped"] == 1 and summary["generation"]["skipped_ids"] == ["d"]
    assert summary["questions"] == 6 and summary["samples"] == 15
    outcomes = ("agree", "disagree", "unparseable", "unfinished")
    assert sum(summary[k] for k in outcomes) == 15
    assert summary["questions_written"] + summary["questions_without_positive"] == 5
    lines = (tmp_path / "out" / "teacher.jsonl").read_text().splitlines()
    assert len(lines) == summary["questions_written"]
    assert summary["generation"]["tokens_per_second"] > 0
    assert summary["generation"]["rows"] == 15
    # Run again: the finished generations are read back, not sampled again.
    teacher = (tmp_path / "out" / "teacher.jsonl").read_text()
    again = _annotate(tmp_path, checkpoint, questions, skip_long_prompts=True)
    assert again["generation"]["shards_written_now"] == 0
    assert (tmp_path / "out" / "teacher.jsonl").read_text() == teacher
    with pytest.raises(ValueError, match=r"id 'd'\) is \d+ tokens, over input_length 32"):
        _annotate(tmp_path / "again", checkpoint, questions)


def test_empty_questions_file_names_it(tmp_path):
    with pytest.raises(ValueError, match=r"questions file .*questions.jsonl has no questions"):
        _annotate(tmp_path, "/unused", [])


@pytest.mark.parametrize(
    "text,message",
    [
        ('{"input": "q", "target": "r --> 1"}\n{"input": "q2"\n', r"shots.jsonl:2: not valid JSON"),
        ('\n{"input": "q", "rationale": "r"}\n', r"shots.jsonl:2: needs 'target', or 'rationale'"),
        ('{"input": "", "target": "t"}\n', r"shots.jsonl:1: field 'input'"),
    ],
)
def test_malformed_few_shot_file_names_file_and_line(tmp_path, text, message):
    (tmp_path / "shots.jsonl").write_text(text)
    with pytest.raises(ValueError, match=message):
        _annotate(tmp_path, "/unused", QUESTIONS[:1], few_shot_file=str(tmp_path / "shots.jsonl"))


def test_few_shot_prefix(tmp_path):
    """A JSONL file's examples are rendered as CoT targets; a text file is used verbatim."""
    path = tmp_path / "shots.jsonl"
    path.write_text(
        '{"input": "1 + 1?", "rationale": "1 + 1 = 2.", "label": 2}\n'
        '{"input": "2 + 2?", "target": "4 --> 4"}\n'
    )
    (tmp_path / "shots.txt").write_text("Q: 1 + 1? A: 2\n")
    assert read_few_shot(str(tmp_path / "shots.txt")) == "Q: 1 + 1? A: 2\n\n"
    with pytest.raises(ValueError, match="few-shot file .*empty.txt is empty"):
        (tmp_path / "empty.txt").write_text("\n")
        read_few_shot(str(tmp_path / "empty.txt"))
    assert (
        read_few_shot(str(path), " ###") == "1 + 1? ### 1 + 1 = 2. --> 2\n\n2 + 2? ### 4 --> 4\n\n"
    )


def test_annotate_gin_file_builds():
    gin_launch.register(annotate_mod.annotate)
    gin.clear_config()
    gin_launch.parse_config(["runs/annotate.gin"], [])
    bindings = gin.get_bindings("annotate")
    assert bindings["decode_config"].method == "sample"
    assert bindings["decode_config"].max_decode_length == 128
    assert bindings["mixture_or_task_name"] == "synthetic_arith_easy_cot"
    gin.clear_config()
