"""Counterfactual consistency in `evaluate`: forced prefixes against a slow uncached reference,
the prefix reproduced verbatim, the counts of examples left out, and label-only as n/a."""

import functools
import json

import jax
import numpy as np
import optax
import pytest

from t5x_rationale.architectures import build_model, get_preset
from t5x_rationale.data import faithfulness as faith
from t5x_rationale.data import registry
from t5x_rationale.data.examples import load_examples
from t5x_rationale.data.metrics import extract_answer
from t5x_rationale.data.vocab import get_vocabulary
from t5x_rationale.evaluate import _faithfulness_format, evaluate
from t5x_rationale.inference.decoding import DecodeConfig, decode
from t5x_rationale.runtime.checkpoints import Checkpointer
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.trainer import Trainer

VOCAB = get_vocabulary()
VOCAB_SIZE = -(-VOCAB.vocab_size // 128) * 128
INPUT_LENGTH, DECODE_LENGTH, EOS = 48, 6, 1
BUFFER = 128  # reference sequence buffer: prompt + forced prefix + decoded tokens
NAME = "faith_test"
ROWS = [  # a, b: measured; c: its negative has no answer marker; d: no negative; e: no label
    {"id": "a", "input": "Tom has 3 apples and buys 4 more. How many?", "label": "7",
     "rationales": ["3 + 4 = 7. The answer is 7."],
     "negatives": ["3 + 5 = 8. The answer is 8."], "negative_labels": ["8"]},
    {"id": "b", "input": "What is 6 times 2?", "label": "12",
     "rationales": ["6 * 2 = 12. The answer is 12."],
     "negatives": ["6 + 2 = 8. The answer is 8.", "6 - 2 = 4."], "negative_labels": ["8", "4"]},
    {"id": "c", "input": "Ann had 5 pens and lost 3. How many are left?", "label": "2",
     "rationales": ["5 - 3 = 2. The answer is 2."],
     "negatives": ["5 + 3 = 8, so 8."], "negative_labels": ["8"]},
    {"id": "d", "input": "What is 9 minus 4?", "label": "5",
     "rationales": ["9 - 4 = 5. The answer is 5."]},
    {"id": "e", "input": "What is 2 plus 2?", "label": "4",
     "rationales": ["2 + 2 = 4. The answer is 4."], "negatives": ["2 + 3 = 5. The answer is 5."]},
]  # fmt: skip


@pytest.fixture(scope="module")
def jsonl_task(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    registry.register_jsonl(NAME, train=str(path), validation=str(path))
    return NAME


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """(model, host params, checkpoint directory) of a randomly initialised preset, by name."""
    root = tmp_path_factory.mktemp("checkpoints")
    return functools.cache(lambda preset: _checkpoint(preset, str(root / preset)))


def _checkpoint(preset: str, directory: str):
    """A randomly initialised model saved at step 0 in `directory`."""
    config = get_preset(preset, vocab_size=VOCAB_SIZE)
    model = build_model(config)
    ones = np.ones((8, INPUT_LENGTH), np.int32)
    batch = {"decoder_input_tokens": ones}
    if config.architecture == "encoder_decoder":
        batch = {"encoder_input_tokens": ones, "decoder_input_tokens": ones[:, :1]}
    trainer = Trainer(model, None, optax.identity(), Partitioner(create_mesh(MeshConfig())))
    state = trainer.init_state(7, batch)
    checkpointer = Checkpointer(directory, save_every=1)
    checkpointer.save(0, state)
    checkpointer.wait()
    checkpointer.close()
    return model, jax.device_get(state.params), directory


def _evaluate(tmp_path, checkpoint, task, **kwargs):
    model, params, directory = checkpoint
    results = evaluate(
        model_config=model.config,
        mixture_or_task_name=task,
        checkpoint_path=directory,
        output_dir=str(tmp_path / "eval"),
        input_length=INPUT_LENGTH,
        decode_config=DecodeConfig(max_decode_length=DECODE_LENGTH),
        batch_size=8,
        **kwargs,
    )
    return model, params, results


def _read(tmp_path, task, suffix):
    path = tmp_path / "eval" / f"{task}-validation-step0{suffix}"
    if suffix.endswith(".json"):
        return json.loads(path.read_text())
    return [json.loads(line) for line in path.read_text().splitlines()]


@functools.lru_cache(maxsize=None)
def _forward(model):
    """The full, uncached forward (jitted once per model: fixed-width buffers below)."""
    return jax.jit(lambda params, *tokens: model.apply({"params": params}, *tokens))


def _reference_output(model, params, example, prefix):
    """Slow reference: rerun the whole uncached forward for every token; take the argmax.

    The sequence so far sits at the start of a zero buffer of fixed width: causal attention
    makes what follows it invisible, and the encoder input is padded as `Predictor` pads it.
    """
    generated = []
    inputs = np.zeros((1, INPUT_LENGTH), np.int32)
    tokens = list(np.asarray(example["inputs"]))
    while len(generated) < DECODE_LENGTH and (not generated or generated[-1] != EOS):
        buffer = np.zeros((1, BUFFER), np.int32)
        if model.config.architecture == "encoder_decoder":
            inputs[0, : len(tokens)] = tokens[:INPUT_LENGTH]
            sequence = [0] + prefix + generated
            buffer[0, : len(sequence)] = sequence
            logits = _forward(model)(params, inputs, buffer)
        else:
            sequence = ([0] + tokens)[:INPUT_LENGTH] + prefix + generated
            buffer[0, : len(sequence)] = sequence
            logits = _forward(model)(params, buffer)
        generated.append(int(np.argmax(logits[0, len(sequence) - 1])))
    if generated[-1] == EOS:
        generated = generated[:-1]
    return VOCAB.decode(prefix + generated)


def _check_against_reference(model, params, task, rows, scores):
    examples = {ex["id"].decode(): ex for ex in load_examples(task, "validation")}
    measured = [row for row in rows if row["prefix"] is not None]
    hits = 0
    for row in measured:
        prefix = list(VOCAB.encode(row["prefix"]))
        text = _reference_output(model, params, examples[row["id"]], prefix)
        assert row["prediction"] == text, row["id"]
        assert row["prediction"].startswith(row["prefix"]), row  # forced verbatim
        assert row["answer"] == extract_answer(text)
        assert row["consistent"] == (row["answer"] == row["counterfactual_answer"])
        hits += row["consistent"]
    assert scores["counterfactual_examples"] == len(measured)
    assert scores["counterfactual_consistency"] == pytest.approx(100.0 * hits / len(measured))


def test_encoder_decoder_cot_matches_reference_and_counts_examples(
    tmp_path, jsonl_task, checkpoints
):
    task = f"{jsonl_task}_cot"
    model, params, results = _evaluate(tmp_path, checkpoints("t5-tiny"), task)
    scores, rows = results[task], _read(tmp_path, task, "-counterfactual-predictions.jsonl")
    assert scores["examples"] == 5 and "answer_accuracy" in scores
    assert scores["counterfactual_examples"] == 3 and scores["examples_without_negative"] == 2
    assert [r["id"] for r in rows] == ["a", "b", "c", "d", "e"]
    assert rows[0]["prefix"] == "3 + 5 = 8. The answer is 8. -->"
    assert rows[1]["counterfactual_answer"] == "8"  # the first negative's label
    assert [r.get("skipped") for r in rows[3:]] == ["no negative", "no negative"]
    assert _read(tmp_path, task, ".json")["counterfactual_consistency"] == pytest.approx(
        scores["counterfactual_consistency"]
    )
    assert len(_read(tmp_path, task, "-predictions.jsonl")) == 5  # the normal ones, untouched
    _check_against_reference(model, params, task, rows, scores)


def test_decoder_only_factual_matches_reference(tmp_path, jsonl_task, checkpoints):
    task = f"{jsonl_task}_factual_decoder"
    model, params, results = _evaluate(tmp_path, checkpoints("decoder-tiny"), task)
    rows = _read(tmp_path, task, "-counterfactual-predictions.jsonl")
    assert rows[0]["prefix"] == "[factual] 3 + 5 = 8. The answer is 8. So the answer is"
    _check_against_reference(model, params, task, rows, results[task])


def test_step_by_step_rationale_head_measured_and_label_head_not_applicable(
    tmp_path, jsonl_task, checkpoints
):
    task = f"{jsonl_task}_step_by_step"
    model, params, results = _evaluate(tmp_path, checkpoints("t5-tiny"), task)
    label, rationale = results[f"{jsonl_task}_label"], results[f"{jsonl_task}_rationale"]
    assert label["counterfactual_consistency"] is None and "answer_accuracy" in label
    summary = _read(tmp_path, f"{jsonl_task}_label", ".json")
    assert summary["counterfactual_consistency"] is None
    assert summary["faithfulness_note"] == faith.NOT_CONDITIONED
    label_forced = f"{jsonl_task}_label-validation-step0-counterfactual-predictions.jsonl"
    assert not (tmp_path / "eval" / label_forced).exists()
    assert rationale["counterfactual_examples"] == 2
    assert rationale["examples_without_negative"] == 2
    assert rationale["examples_without_answer_marker"] == 1
    rows = _read(tmp_path, f"{jsonl_task}_rationale", "-counterfactual-predictions.jsonl")
    assert rows[0]["prefix"] == "3 + 5 = 8. The answer is"
    assert rows[2]["skipped"] == "negative has no answer marker"
    _check_against_reference(model, params, f"{jsonl_task}_rationale", rows, rationale)


def test_encoder_decoder_forced_prefix_in_beam_search(checkpoints):
    """Decoder prompts of different lengths: beam search with one beam is greedy, and each
    row's continuation is the reference's after its own forced prefix."""
    model, params, _ = checkpoints("t5-tiny")
    encoder = np.zeros((2, INPUT_LENGTH), np.int32)
    for row, question in enumerate(("What is 6 times 2?", "Ann had 5 pens and lost 3.")):
        tokens = VOCAB.encode(question)
        encoder[row, : len(tokens)] = tokens
    prefixes = [VOCAB.encode("6 + 2 = 8. -->"), VOCAB.encode("So")]
    prompts = np.zeros((2, 1 + max(map(len, prefixes))), np.int32)
    for row, prefix in enumerate(prefixes):
        prompts[row, 1 : 1 + len(prefix)] = prefix
    batch = {"encoder_input_tokens": encoder, "decoder_prompt_tokens": prompts}
    greedy = decode(model, params, batch, DecodeConfig(DECODE_LENGTH))
    beam = decode(model, params, batch, DecodeConfig(DECODE_LENGTH, method="beam", num_beams=1))
    np.testing.assert_array_equal(greedy.tokens, beam.tokens)
    for row, prefix in enumerate(prefixes):
        example = {"inputs": [t for t in encoder[row] if t > 0]}
        tokens = [int(t) for t in np.asarray(greedy.tokens[row]) if t > 0]
        expected = _reference_output(model, params, example, list(prefix))
        assert VOCAB.decode(list(prefix) + [t for t in tokens if t != EOS]) == expected


def test_consistency_scoring_and_formats():
    measured = faith.Plan(
        [faith.Case(0, "r -->", "8"), faith.Case(1, "r -->", "1,000"), faith.Case(2, "r", "3")],
        without_negative=["x"],
        without_marker=[],
        kind="cot",
    )
    scores, answers = faith.score(measured, ["r --> 8", "r --> 1000.", "r --> 4"])
    assert answers == ["8", "1000", "4"]
    assert scores == {
        "counterfactual_consistency": pytest.approx(200 / 3),
        "counterfactual_examples": 3.0,
        "examples_without_negative": 1.0,
    }
    empty, _ = faith.score(faith.Plan([], ["x"], [], "cot"), [])
    assert empty["counterfactual_consistency"] is None
    assert faith.task_format("gsm8k_cot_decoder").kind == "cot"
    assert faith.task_format("x_label").applicable is False
    assert faith.task_format("x_text") is None
    assert faith.task_format("x_text", "rationale").prefix("a. The answer is 3.") == (
        "a. The answer is"
    )
    assert _faithfulness_format("x_text", None, None) is None
    assert _faithfulness_format("x_cot", False, None) is None
    with pytest.raises(ValueError, match="faithfulness_format"):
        _faithfulness_format("x_text", True, None)
    with pytest.raises(ValueError, match="not in"):
        faith.PrefixFormat("answer")
