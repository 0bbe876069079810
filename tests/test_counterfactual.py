"""SCOTT counterfactual training: the loss against a token-by-token reference, answer-only
masking, and the `{name}_counterfactual` tasks through their converters on real rows."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import seqio
from random_params import random_params

from t5x_rationale.architectures import build_model, get_preset
from t5x_rationale.data import counterfactual as cf_data
from t5x_rationale.data import registry, tasks
from t5x_rationale.data.vocab import get_vocabulary
from t5x_rationale.objectives import counterfactual as cf_loss
from t5x_rationale.objectives import counterfactual_loss

VOCAB = 11
# Rows of packed segments: (task id, tokens, answer tokens with loss; None = all tokens).
ROWS = [
    [(1, 7, None), (2, 6, 2)],
    [(2, 9, 3)],
    [(3, 5, None), (2, 4, 1), (1, 3, None)],
    [(1, 12, None)],
]
LENGTH = 16


def _batch(rng) -> dict:
    """A packed batch with factual (1), factual-only (3) and counterfactual (2) segments."""
    shape = (len(ROWS), LENGTH)
    batch = {k: np.zeros(shape, np.int32) for k in ("targets", "inputs", "task", "seg", "pos")}
    weights = np.zeros(shape, np.float32)
    for r, segments in enumerate(ROWS):
        start = 0
        for s, (task, n, answer) in enumerate(segments, 1):
            span = slice(start, start + n)
            tokens = rng.integers(3, VOCAB, n)
            batch["targets"][r, span] = tokens
            batch["inputs"][r, span] = np.concatenate([[0], tokens[:-1]])
            batch["task"][r, span], batch["seg"][r, span] = task, s
            batch["pos"][r, span] = np.arange(n)
            weights[r, start + n - (answer or n) : start + n] = 1.0
            start += n
    return {
        "encoder_input_tokens": rng.integers(3, VOCAB, (len(ROWS), 5)).astype(np.int32),
        "decoder_target_tokens": batch["targets"],
        "decoder_input_tokens": batch["inputs"],
        "decoder_loss_weights": weights,
        "decoder_task_ids": batch["task"],
        "decoder_segment_ids": batch["seg"],
        "decoder_positions": batch["pos"],
    }


class TableLogits(nn.Module):
    """A 'model' whose logits are its parameter: the loss is tested on exactly these logits."""

    @nn.compact
    def __call__(self, encoder_input_tokens, decoder_input_tokens, **unused):
        shape = decoder_input_tokens.shape + (VOCAB,)
        return self.param("logits", nn.initializers.normal(1.0), shape)


def _reference(logits, batch, alpha, z_loss):
    """Per-part weighted token means, written out token by token in float64."""
    logits = np.asarray(logits, np.float64)
    sums, counts = {"factual": 0.0, "counter": 0.0}, {"factual": 0.0, "counter": 0.0}
    for r in range(logits.shape[0]):
        for i in range(logits.shape[1]):
            w, task = batch["decoder_loss_weights"][r, i], batch["decoder_task_ids"][r, i]
            if w == 0 or task == 0:
                continue
            row = logits[r, i]
            log_z = row.max() + np.log(np.sum(np.exp(row - row.max())))
            ce = log_z - row[batch["decoder_target_tokens"][r, i]] + z_loss * log_z**2
            part = "counter" if task == 2 else "factual"
            sums[part] += w * ce
            counts[part] += w
    means = {k: sums[k] / counts[k] if counts[k] else 0.0 for k in sums}
    return (1 - alpha) * means["factual"] + alpha * means["counter"], means, counts


@pytest.mark.parametrize("alpha", [0.5, 0.2, 1.0])
def test_loss_matches_reference(alpha):
    batch = _batch(np.random.default_rng(0))
    logits = np.random.default_rng(1).normal(0, 2, batch["decoder_target_tokens"].shape + (VOCAB,))
    params = {"logits": jnp.asarray(logits, jnp.float32)}
    loss, metrics = counterfactual_loss(TableLogits(), params, batch, None, alpha=alpha)
    expected, means, counts = _reference(logits, batch, alpha, 1e-4)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["factual_loss"]), means["factual"], rtol=1e-5)
    np.testing.assert_allclose(float(metrics["counterfactual_loss"]), means["counter"], rtol=1e-5)
    assert counts == {"factual": 27.0, "counter": 6.0}  # 7 + 12 + 5 + 3 and 2 + 3 + 1
    assert float(metrics["denominator"]) == 33.0
    # 3 counterfactual rows of 7; 1 of the 4 factual rows had no negative
    np.testing.assert_allclose(float(metrics["counterfactual_row_fraction"]), 3 / 7)
    np.testing.assert_allclose(float(metrics["factual_only_fraction"]), 1 / 4)


def test_only_answer_tokens_of_counterfactual_rows_count():
    batch = _batch(np.random.default_rng(2))
    logits = np.random.default_rng(3).normal(0, 2, batch["decoder_target_tokens"].shape + (VOCAB,))
    loss_of = lambda x: counterfactual_loss(TableLogits(), {"logits": x}, batch, None)[0]  # noqa: E731
    base = float(loss_of(jnp.asarray(logits, jnp.float32)))
    counter = batch["decoder_task_ids"] == 2
    rationale = counter & (batch["decoder_loss_weights"] == 0)
    answer = counter & (batch["decoder_loss_weights"] > 0)
    padding = batch["decoder_target_tokens"] == 0
    assert rationale.sum() == 13 and answer.sum() == 6 and padding.sum() == 18
    noise = np.random.default_rng(4).normal(0, 5, logits.shape)
    for positions, changes in ((rationale, False), (padding, False), (answer, True)):
        moved = np.where(positions[..., None], logits + noise, logits)
        after = float(loss_of(jnp.asarray(moved, jnp.float32)))
        assert (after != base) == changes, (positions, after, base)
    grad = np.asarray(jax.grad(loss_of)(jnp.asarray(logits, jnp.float32)))
    assert np.all(np.isfinite(grad))
    assert not grad[rationale | padding].any()
    assert np.abs(grad[answer]).sum(-1).min() > 0


def test_t5_student_loss_and_gradients():
    batch = _batch(np.random.default_rng(5))
    for key in ("decoder_segment_ids", "decoder_positions"):  # one packed decoder, no encoder ids
        batch.pop(key)
    model = build_model(get_preset("t5-tiny", num_encoder_layers=1, num_decoder_layers=1))
    inputs = {k: batch[k] for k in ("encoder_input_tokens", "decoder_input_tokens")}
    params = random_params(model, **inputs)
    step = jax.jit(jax.value_and_grad(lambda p: counterfactual_loss(model, p, batch, None)[0]))
    loss, grads = step(params)
    logits = jax.jit(lambda p: model.apply({"params": p}, **inputs))(params)
    np.testing.assert_allclose(float(loss), _reference(logits, batch, 0.5, 1e-4)[0], rtol=1e-5)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0


def test_bad_settings_are_clear_errors():
    batch = _batch(np.random.default_rng(6))
    with pytest.raises(ValueError, match="alpha"):
        counterfactual_loss(TableLogits(), {}, batch, None, alpha=1.5)
    batch.pop("decoder_task_ids")
    with pytest.raises(KeyError, match="Counterfactual"):
        counterfactual_loss(TableLogits(), {}, batch, None)


def test_objective_and_data_agree_on_task_ids():
    for name in ("FACTUAL_TASK_ID", "COUNTERFACTUAL_TASK_ID", "FACTUAL_ONLY_TASK_ID"):
        assert getattr(cf_loss, name) == getattr(cf_data, name)


# ---------------------------------------------------------------- data: tasks and converters


def _converted(task_name, converter, lengths, split="validation", batch_size=None):
    ds = seqio.get_mixture_or_task(task_name).get_dataset(
        sequence_length=lengths,
        split=split,
        shuffle=False,
        num_epochs=1,
        use_cached=False,
        trim_output_features=False,
    )
    ds = converter(ds, lengths)
    return ds.batch(batch_size) if batch_size else ds


def _segments(row, vocabulary):
    """(task id, all target text, text of the weighted tokens w/o EOS, weights) per segment."""
    segment_ids = row.get("decoder_segment_ids", (row["decoder_target_tokens"] > 0).astype(int))
    for s in range(1, segment_ids.max() + 1):
        here = segment_ids == s
        tokens, weights = row["decoder_target_tokens"][here], row["decoder_loss_weights"][here]
        assert tokens[-1] == 1  # EOS, which always carries loss
        assert weights[-1] == 1 and set(weights) <= {0.0, 1.0}
        assert np.all(np.diff(weights) >= 0)  # weights start at one token and stay on
        task = set(row["decoder_task_ids"][here])
        assert len(task) == 1
        weighted = vocabulary.decode(tokens[(weights > 0) & (tokens != 1)].tolist())
        yield task.pop(), vocabulary.decode(tokens.tolist()), weighted, weights


def test_shipped_corpus_batch_marks_the_answer_span():
    vocabulary = get_vocabulary()
    assert "synthetic_arith_counterfactual" in seqio.TaskRegistry.names()
    lengths = {"inputs": 192, "targets": 256}  # two or three examples per packed row
    converter = cf_data.CounterfactualEncDecConverter(pack=True)
    batch = next(
        _converted(
            "synthetic_arith_counterfactual", converter, lengths, batch_size=3
        ).as_numpy_iterator()
    )
    assert set(batch) >= {"decoder_task_ids", "decoder_segment_ids", "decoder_loss_weights"}
    assert batch["decoder_segment_ids"].max() >= 2  # packed
    seen = {1: 0, 2: 0}
    for r in range(3):
        row = {k: v[r] for k, v in batch.items()}
        for task, text, weighted, weights in _segments(row, vocabulary):
            seen[task] += 1
            head, answer = text.rsplit(" So the answer is ", 1)
            if task == 1:
                assert text.startswith("[factual] ") and weights.all()
            else:  # the negative's own answer: its rationale ends "The answer is a'."
                assert not text.startswith("[")
                assert weighted == answer and head.endswith(f"The answer is {answer}.")
                assert weights.sum() == len(vocabulary.encode(answer)) + 1  # a' and EOS only
    assert seen[1] >= 2 and seen[2] >= 2


def _jsonl_task(tmp_path):
    rows = [
        {"id": "a", "input": "What is 2 + 3?", "label": "5", "rationales": ["2 + 3 = 5."],
         "negatives": ["2 + 3 = 6.", "2 + 3 = 7."], "negative_labels": ["6", "7"]},
        {"id": "b", "input": "What is 4 + 4?", "label": "8", "rationales": ["4 + 4 = 8."]},
        {"id": "c", "input": "What is 1 + 1?", "label": "2", "rationales": ["1 + 1 = 2."],
         "negatives": ["1 + 1 = 3."]},
    ]  # fmt: skip
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return registry.register_jsonl("cf_test", train=str(path), overwrite=True)


def test_rows_without_usable_negatives_are_factual_only(tmp_path):
    names = _jsonl_task(tmp_path)
    assert (names.counterfactual, names.factual) == ("cf_test_counterfactual", "cf_test_factual")
    lengths = {"inputs": 32, "targets": 48}
    converter = cf_data.CounterfactualEncDecConverter(pack=False)
    rows = list(_converted(names.counterfactual, converter, lengths, "train").as_numpy_iterator())
    vocabulary = get_vocabulary()
    found = [next(_segments(row, vocabulary))[:3] for row in rows]
    assert found == [
        (1, "[factual] 2 + 3 = 5. So the answer is 5", "[factual] 2 + 3 = 5. So the answer is 5"),
        (2, "2 + 3 = 6. So the answer is 6", "6"),  # the first negative only
        (3, "[factual] 4 + 4 = 8. So the answer is 8", "[factual] 4 + 4 = 8. So the answer is 8"),
        (3, "[factual] 1 + 1 = 2. So the answer is 2", "[factual] 1 + 1 = 2. So the answer is 2"),
    ]
    assert [vocabulary.decode(r["encoder_input_tokens"].tolist()) for r in rows[:2]] == [
        "[factual] What is 2 + 3?",
        "[counterfactual] What is 2 + 3?",
    ]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    params = {"logits": jnp.zeros(batch["decoder_target_tokens"].shape + (VOCAB,))}
    batch["decoder_target_tokens"] = np.minimum(batch["decoder_target_tokens"], VOCAB - 1)
    metrics = counterfactual_loss(TableLogits(), params, batch, None)[1]
    np.testing.assert_allclose(float(metrics["factual_only_fraction"]), 2 / 3)
    np.testing.assert_allclose(float(metrics["counterfactual_row_fraction"]), 1 / 4)


def test_factual_task_and_decoder_converter(tmp_path):
    names = _jsonl_task(tmp_path)
    vocabulary = get_vocabulary()
    assert seqio.get_mixture_or_task(names.factual).metric_fns
    lengths = {"inputs": 32, "targets": 48}
    plain = cf_data.CounterfactualEncDecConverter(pack=False)
    factual = list(_converted(names.factual, plain, lengths, "train").as_numpy_iterator())
    assert [set(r["decoder_task_ids"][r["decoder_task_ids"] > 0]) for r in factual] == [{3}] * 3
    decoder = cf_data.CounterfactualDecoderConverter(pack=True)
    lengths = {"inputs": 48, "targets": 64}  # the two rows of question "a" in one packed row
    row = next(
        _converted(names.counterfactual_decoder, decoder, lengths, "train", 1).as_numpy_iterator()
    )
    row = {k: v[0] for k, v in row.items()}
    segments = {s: row["decoder_segment_ids"] == s for s in (1, 2)}
    texts = [vocabulary.decode(row["decoder_target_tokens"][m].tolist()) for m in segments.values()]
    assert texts[1].startswith("[counterfactual] What is 2 + 3? ###")
    weighted = row["decoder_target_tokens"][segments[2] & (row["decoder_loss_weights"] > 0)]
    assert vocabulary.decode(weighted.tolist()) == "6"  # prompt and r' carry no loss
    weighted = row["decoder_target_tokens"][segments[1] & (row["decoder_loss_weights"] > 0)]
    # factual: the whole target, not its prompt (packing keeps the 0/1 weights in place)
    assert vocabulary.decode(weighted.tolist()) == "[factual] 2 + 3 = 5. So the answer is 5"


def test_converter_needs_the_loss_start():
    with pytest.raises(ValueError, match="targets_loss_start"):
        _converted(
            "synthetic_arith_rationale",
            cf_data.CounterfactualEncDecConverter(),
            {"inputs": 8, "targets": 8},
        )
    assert "counterfactual" in tasks.RationaleTaskNames.__dataclass_fields__
