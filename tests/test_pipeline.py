"""Data streams: exact resume, host row slices, truncation counts, refusing another stream."""

import numpy as np
import pytest

import t5x_rationale.data.registry  # noqa: F401  (registers the shipped corpus)
from t5x_rationale.data.converters import EncDecConverter, MultiTaskEncDecConverter
from t5x_rationale.data.examples import load_examples
from t5x_rationale.data.pipeline import StreamSpec, TaskStream

LENGTHS = {"inputs": 64, "targets": 96}


def _stream(
    task="synthetic_arith_step_by_step",
    *,
    converter=None,
    rows=slice(0, 4),
    seed=3,
    shuffle=True,
    lengths=LENGTHS,
    batch_size=4,
    sharding="source",
    host=(0, 1),
):
    spec = StreamSpec(
        task, "train", lengths, batch_size, shuffle=shuffle, seed=seed, host_sharding=sharding
    )
    return TaskStream(
        spec,
        converter or MultiTaskEncDecConverter(pack=True),
        host_rows=rows,
        process_index=host[0],
        process_count=host[1],
    )


def _assert_same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_restored_stream_continues_exactly():
    uninterrupted = _stream()
    batches = [next(uninterrupted) for _ in range(5)]
    first = _stream()
    for _ in range(2):
        next(first)
    state = first.get_state()
    assert state["position"] == 2
    resumed = _stream()
    resumed.set_state(state)
    for expected in batches[2:]:
        _assert_same(next(resumed), expected)
    # Both tasks of the mixture appear, tagged with their task ids.
    ids = np.concatenate([b["decoder_task_ids"].ravel() for b in batches])
    assert {1, 2} <= set(ids.tolist())


def test_host_rows_are_slices_of_the_global_batch():
    full, half = _stream(), _stream(rows=slice(2, 4))
    for _ in range(2):
        batch, part = next(full), next(half)
        _assert_same({k: v[2:4] for k, v in batch.items()}, part)


def test_seed_changes_the_stream_and_state_from_another_stream_is_refused():
    a, b = next(_stream(seed=1)), next(_stream(seed=2))
    assert not np.array_equal(a["decoder_target_tokens"], b["decoder_target_tokens"])
    other = _stream(seed=2)
    with pytest.raises(ValueError, match="seed"):
        other.set_state(_stream(seed=1).get_state())
    with pytest.raises(ValueError, match="task"):
        _stream("synthetic_arith_cot").set_state(_stream().get_state())


def test_truncated_examples_are_counted():
    lengths = {"inputs": 24, "targets": 16}
    stream = _stream(
        "synthetic_arith_cot",
        converter=EncDecConverter(pack=False),
        shuffle=False,
        lengths=lengths,
        batch_size=8,
    )
    next(stream)
    # Reference: the first 8 unshuffled examples, measured one by one.
    examples = load_examples("synthetic_arith_cot", "train", max_examples=8, unique_ids=False)
    expected = sum(len(ex["inputs"]) > 24 or len(ex["targets"]) > 16 for ex in examples)
    assert expected > 0
    assert stream.stats() == {"data/examples": 8.0, "data/truncated_examples": float(expected)}


def test_one_host_reads_the_same_stream_with_either_sharding_and_resumes_across():
    rows, source = _stream(sharding="rows"), _stream(sharding="source")
    batches = [next(rows) for _ in range(2)]
    for batch in batches:
        _assert_same(next(source), batch)
    for saved, resumed in (("rows", "source"), ("source", "rows")):
        first = _stream(sharding=saved)
        next(first)
        stream = _stream(sharding=resumed)
        stream.set_state(first.get_state())
        _assert_same(next(stream), batches[1])


def test_source_shards_give_each_host_its_own_rows_and_pin_the_host_count():
    one = [next(_stream(batch_size=4, host=(i, 2), rows=slice(2 * i, 2 * i + 2))) for i in (0, 1)]
    tokens = [b["decoder_target_tokens"] for b in one]
    assert [t.shape[0] for t in tokens] == [2, 2]
    assert not np.array_equal(tokens[0], tokens[1])
    two_hosts = _stream(host=(0, 2)).get_state()
    with pytest.raises(ValueError, match="written by 2 hosts reading source shards"):
        _stream(host=(0, 4)).set_state(two_hosts)
    with pytest.raises(ValueError, match="host_sharding='source' \\(2 hosts\\)"):
        _stream(host=(0, 2), sharding="rows").set_state(two_hosts)
