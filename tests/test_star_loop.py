"""STaR's loop without a model: hint stripping, the filter and its counts (checked against a
recount of the files written), the step schedule, fine-tuning from the base, resume by phase
and bad input. The model-facing work is a scripted fake."""

import json
import os

import pytest

from t5x_rationale.data.metrics import extract_answer, normalize_answer
from t5x_rationale.self_training import loop_state as ls
from t5x_rationale.self_training.hints import strip_hint, with_hint
from t5x_rationale.self_training.loop import StarPlan, StarWork, run_star
from t5x_rationale.self_training.questions import read_questions, training_rows
from t5x_rationale.self_training.selection import iteration_stats, judge

QUESTIONS = [
    {"id": f"q{i}", "input": f"What is {i} + {i}?", "label": str(2 * i)} for i in range(1, 9)
]


def _answers(question, hinted: bool) -> str:
    """A scripted model: right on even questions; with the hint, q1 copies the hint into its
    rationale, q3 writes only the hint, q5 stays wrong, q7 gives no answer at all."""
    i, label = int(question["id"][1:]), question["label"]
    if not hinted:
        return f"{i} + {i} = {label}. --> {label}" if i % 2 == 0 else f"{i} plus {i}"
    return {
        1: f"{i} + {i} = {label} (hint: {label}) --> {label}",
        3: f"(hint: {label}) --> {label}",
        5: f"{i} + {i} = 0 --> 0",
        7: "I do not know",
    }.get(i, "no idea")


class FakeWork:
    """Records every call; generation writes one JSONL file per out_dir."""

    def __init__(self, fail_train_once_at=None):
        self.calls, self.fail_at = [], fail_train_once_at

    def generate(self, checkpoint, prompts, out_dir):
        self.calls.append(("generate", checkpoint, out_dir))
        os.makedirs(out_dir, exist_ok=True)
        by_id = {q["id"]: q for q in QUESTIONS}
        rows = [
            {**p, "sample": 0, "text": _answers(by_id[p["id"]], "hint" in p["prompt"])}
            for p in prompts
        ]
        with open(os.path.join(out_dir, "rows.jsonl"), "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    def read(self, out_dir):
        with open(os.path.join(out_dir, "rows.jsonl")) as f:
            return [json.loads(line) for line in f]

    def finetune(self, tag, train_file, steps, run_dir, init_from, kind="cot"):
        self.calls.append(("finetune", tag, steps, init_from))
        if self.fail_at == tag:
            self.fail_at = None
            raise KeyboardInterrupt("killed while training")
        os.makedirs(os.path.join(run_dir, "checkpoints", str(steps)), exist_ok=True)

    def evaluate(self, checkpoint, out_dir, kind="cot"):
        self.calls.append(("evaluate", checkpoint))
        return 50.0

    def work(self):
        return StarWork(self.generate, self.read, self.finetune, self.evaluate)


SEED = [{"id": "s1", "input": "What is 10 + 10?", "label": "20", "rationales": ["10 + 10 = 20."]}]


def _plan(tmp_path, **kw):
    return StarPlan(str(tmp_path), 3, 10, initial_checkpoint="base/ckpt", **kw)


def test_hint_is_stripped_or_the_row_rejected():
    cleaned, echoed = strip_hint("4 + 4 = 8 (hint: 8) so 8")
    assert echoed and "hint" not in cleaned and cleaned == "4 + 4 = 8 so 8"
    q = {"id": "a", "input": "What is 4 + 4?", "label": "8"}
    copied = judge(q, "no idea", "4 + 4 = 8 (Hint: 8) --> 8")
    assert copied["kept"] == "rationalized" and copied["rationale"] == "4 + 4 = 8"
    assert copied["hint_echoed"]
    only_hint = judge(q, "no idea", "[hint: 8] --> 8")
    assert only_hint["kept"] is None  # nothing left once the hint is gone
    spoken_of = judge(q, "no idea", "the hint says eight is right --> 8")
    assert spoken_of["kept"] is None  # a rationale that still talks of a hint is never kept
    assert with_hint("What is 4 + 4?", "8") == "What is 4 + 4? (hint: 8)"


def test_loop_writes_no_hint_and_stats_match_a_recount(tmp_path):
    fake = FakeWork()
    stats = run_star(_plan(tmp_path), QUESTIONS, SEED, fake.work(), log=lambda s: None)
    d = ls.iteration_dir(str(tmp_path), 1)
    kept = [json.loads(line) for line in open(f"{d}/kept.jsonl")]
    records = [json.loads(line) for line in open(f"{d}/generated.jsonl")]
    for row in kept:
        assert row["input"] in {q["input"] for q in QUESTIONS}  # the question, no hint
        assert all("hint" not in r.lower() for r in row["rationales"])
    assert sorted(r["id"] for r in kept) == ["q1", "q2", "q4", "q6", "q8"]
    # The recount: re-parse every written output against the gold label.
    gold = {q["id"]: normalize_answer(q["label"]) for q in QUESTIONS}
    correct = sum(extract_answer(r["text"]) == gold[r["id"]] for r in records if "-->" in r["text"])
    unparseable = sum("-->" not in r["text"] for r in records)
    saved = json.load(open(f"{d}/stats.json"))
    assert saved["questions"] == len(records) == len(QUESTIONS)
    assert saved["correct"] == correct == 4
    assert saved["unparseable"] == unparseable == 4
    assert saved["kept"] == len(kept) and saved["rationalized"] == 1
    assert saved["rationalize_unparseable"] == 1 and saved["hint_echoed"] == 2
    assert saved["coverage_pct"] == pytest.approx(100 * len(kept) / len(QUESTIONS), abs=0.01)
    assert iteration_stats(records) == {k: saved[k] for k in iteration_stats(records)}
    assert [s["test_accuracy"] for s in stats] == [50.0] * 3


def test_steps_grow_20_percent_and_every_iteration_starts_from_the_base(tmp_path):
    assert [ls.iteration_steps(100, n) for n in (1, 2, 3, 4)] == [100, 120, 144, 173]
    fake = FakeWork()
    run_star(_plan(tmp_path), QUESTIONS, SEED, fake.work(), log=lambda s: None)
    trains = [c for c in fake.calls if c[0] == "finetune"]
    assert [c[2] for c in trains] == [10, 12, 14]
    assert {c[3] for c in trains} == {"base/ckpt"}  # never model n - 1
    generators = [c[1] for c in fake.calls if c[0] == "generate" and c[2].endswith("generate")]
    assert generators == [
        "base/ckpt",
        ls.final_checkpoint(str(tmp_path), 1, 10),
        ls.final_checkpoint(str(tmp_path), 2, 12),
    ]
    fresh = FakeWork()
    run_star(_plan(tmp_path / "fresh", fresh_base=True), QUESTIONS, SEED, fresh.work(), log=print)
    assert {c[3] for c in fresh.calls if c[0] == "finetune"} == {None}


def test_a_killed_loop_resumes_at_its_first_unfinished_phase(tmp_path):
    fake = FakeWork(fail_train_once_at="iter2")
    with pytest.raises(KeyboardInterrupt):
        run_star(_plan(tmp_path), QUESTIONS, SEED, fake.work(), log=lambda s: None)
    state = ls.IterationState(ls.iteration_dir(str(tmp_path), 2))
    assert state.finished == ["generate", "rationalize", "select"]
    rerun = FakeWork()
    run_star(_plan(tmp_path), QUESTIONS, SEED, rerun.work(), log=lambda s: None)
    assert [c[:2] for c in rerun.calls if c[0] != "evaluate"] == [
        ("finetune", "iter2"),
        ("generate", ls.final_checkpoint(str(tmp_path), 2, 12)),
        ("generate", ls.final_checkpoint(str(tmp_path), 2, 12)),
        ("finetune", "iter3"),
    ]


def test_training_rows_hint_only_the_seed_copies():
    kept = [{"id": "q2", "input": "What is 2 + 2?", "label": "4", "rationales": ["2 + 2 = 4."]}]
    rows = training_rows(SEED, kept, hinted_seed=True)
    assert [r["id"] for r in rows] == ["s1", "s1#hint", "q2"]
    assert rows[1]["input"] == "What is 10 + 10? (hint: 20)" and "hint" not in rows[2]["input"]
    assert [r["id"] for r in training_rows(SEED, kept, hinted_seed=False)] == ["s1", "q2"]


def test_bad_input_is_refused_or_counted(tmp_path):
    with pytest.raises(ValueError, match="no training questions"):
        run_star(_plan(tmp_path), [], SEED, FakeWork().work())
    with pytest.raises(ValueError, match="initial checkpoint"):
        StarPlan(str(tmp_path), 1, 10)
    with pytest.raises(ValueError, match="base_steps"):
        StarPlan(str(tmp_path), 1, 0, initial_checkpoint="x")
    garbage = [judge(q, "", "") for q in QUESTIONS] + [judge(QUESTIONS[0], "--> ", None)]
    counts = iteration_stats(garbage)
    assert counts["unparseable"] == len(garbage) and counts["kept"] == 0
    assert iteration_stats([])["coverage_pct"] == 0.0


def test_an_empty_questions_file_is_refused_and_a_missing_output_counted(tmp_path):
    empty = tmp_path / "questions.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="questions.jsonl"):
        read_questions(str(empty))

    class Skipping(FakeWork):  # generation skipped q2's prompt (too long)
        def read(self, out_dir):
            return [r for r in super().read(out_dir) if r["id"] != "q2"]

    run_star(
        StarPlan(str(tmp_path), 1, 4, initial_checkpoint="b"),
        QUESTIONS,
        SEED,
        Skipping().work(),
        log=lambda s: None,
    )
    saved = json.load(open(f"{ls.iteration_dir(str(tmp_path), 1)}/stats.json"))
    assert saved["questions"] == 8 and saved["unparseable"] == 5 and saved["correct"] == 3
