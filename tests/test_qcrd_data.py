"""QCRD's data side: self-consistent positives, the label in candidate rows, and the paired
stream's resumable state."""

import json

import numpy as np
import pytest

from t5x_rationale.data import registry
from t5x_rationale.data.converters import EncDecConverter
from t5x_rationale.data.pipeline import StreamSpec, TaskStream
from t5x_rationale.data.qcrd_converter import QcrdCandidatesConverter
from t5x_rationale.data.qcrd_stream import QcrdStream
from t5x_rationale.data.self_consistency import consistent_rationales, filter_positives
from t5x_rationale.data.vocab import get_vocabulary

LENGTHS = {"inputs": 64, "positives": 48, "negatives": 48, "targets": 8}


@pytest.mark.parametrize(
    "rationales, label, keep",
    [
        (
            ["So 3. The answer is 3.", "The answer is 4.", "It is 3, the answer is 3"],
            "3",
            [1, 0, 1],
        ),
        # a tie: the gold label's answer wins when it is among the tied
        (["The answer is 4.", "The answer is 3."], "3", [0, 1]),
        # a tie without the gold answer: the answer stated first
        (["The answer is 4.", "The answer is 5."], "3", [1, 0]),
        # the majority wins even against the label (self-consistency needs no label)
        (["The answer is 4.", "The answer is 4.", "The answer is 3."], "3", [1, 1, 0]),
        (["The answer is 1,000."], "7", [1]),  # one rationale: kept as it is
        (["The answer is 1,000.", "the answer is 1000"], "", [1, 1]),  # normalised numbers
    ],
)
def test_consistent_rationales(rationales, label, keep):
    assert consistent_rationales(rationales, label) == [bool(k) for k in keep]


def _jsonl(tmp_path):
    rows = [
        {
            "id": str(i),
            "input": f"Tom has {i} apples and gets 2 more. How many apples does he have?",
            "label": str(i + 2),
            "rationales": [
                f"{i} + 2 = {i + 2}. The answer is {i + 2}.",
                f"Tom ends with {i} + 2 = {i + 2}. The answer is {i + 2}.",
                f"He gets {i} + 3 = {i + 3}. The answer is {i + 3}.",  # inconsistent
            ],
            "negatives": [f"{i} - 2 = {i - 2}. The answer is {i - 2}."],
            "negative_labels": [str(i - 2)],
        }
        for i in range(10, 18)
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    registry.register_jsonl("qcrd_data_test", train=str(path))
    return rows


def _candidates(seed=0, positives=3):
    spec = StreamSpec("qcrd_data_test_contrastive", "train", LENGTHS, 4, shuffle=True, seed=seed)
    return TaskStream(spec, QcrdCandidatesConverter(positives, 1), host_rows=slice(0, 4))


def test_candidate_rows_carry_the_label_and_lose_inconsistent_positives(tmp_path):
    rows = {r["input"]: r for r in _jsonl(tmp_path)}
    vocab = get_vocabulary()
    batch = next(_candidates())
    filtered, dropped = filter_positives(batch, vocab)
    assert dropped == 4  # one per question
    for b in range(4):
        row = rows[vocab.decode([int(t) for t in batch["encoder_input_tokens"][b] if t])]
        assert (
            vocab.decode([int(t) for t in batch["candidate_label_tokens"][b] if t]) == row["label"]
        )
        np.testing.assert_array_equal(filtered["candidate_mask"][b], [1, 1, 0, 1])
        np.testing.assert_array_equal(batch["candidate_mask"][b], [1, 1, 1, 1])  # not mutated


def test_paired_stream_resumes_both_positions(tmp_path):
    _jsonl(tmp_path)
    label_spec = StreamSpec(
        "qcrd_data_test_label", "train", {"inputs": 64, "targets": 8}, 4, shuffle=True, seed=0
    )

    def stream():
        labels = TaskStream(label_spec, EncDecConverter(pack=False), host_rows=slice(0, 4))
        return QcrdStream(
            labels, _candidates(), lambda a, b: {"label": a, "cand": b}, get_vocabulary()
        )

    first = stream()
    first.set_state({"position": 0})
    for _ in range(3):
        next(first)
    state = json.loads(json.dumps(first.get_state()))
    want = next(first)
    assert state["inconsistent_positives"] == 12
    second = stream()
    second.set_state(state)
    got = next(second)
    for part in ("label", "cand"):
        assert sorted(got[part]) == sorted(want[part])
        for key in want[part]:
            np.testing.assert_array_equal(got[part][key], want[part][key])
    assert second.stats()["data/inconsistent_positives"] == 16
    with pytest.raises(ValueError, match="not a QCRD stream"):
        stream().set_state({"position": 3})
