"""The input-pipeline benchmark: its counts match a slow count over the same batches, its rates
are those counts over its times, and the summary and GPU figures follow from the rows."""

import json

import pytest

from t5x_rationale import bench_pipeline
from t5x_rationale.architectures import get_preset
from t5x_rationale.data.converters import EncDecConverter
from t5x_rationale.data.pipeline import StreamSpec
from t5x_rationale.data.pipeline_speed import host_rows, measure_host
from t5x_rationale.runtime.flops import train_step_flops


def _slow_counts(batches):
    """Examples, non-padding tokens and slots, one entry at a time."""
    examples = tokens = slots = 0
    for batch in batches:
        for name in ("encoder_input_tokens", "decoder_target_tokens"):
            for row in batch.get(name, []):
                for token in row.tolist():
                    slots += 1
                    tokens += token != 0
        for row in batch["decoder_segment_ids"]:
            examples += len({s for s in row.tolist() if s != 0})
    return examples, tokens, slots


@pytest.mark.parametrize("sharding", ["rows", "source"])
def test_counts_and_rates_of_one_host(sharding):
    spec = StreamSpec(
        "synthetic_arith_easy_cot",
        "train",
        {"inputs": 96, "targets": 160},
        8,
        seed=1,
        host_sharding=sharding,
    )
    seen = []
    rate = measure_host(
        spec,
        EncDecConverter(pack=True),
        process_index=1,
        process_count=2,
        batches=3,
        warmup=1,
        on_batch=seen.append,
    )
    assert len(seen) == rate.batches == 3
    assert all(len(b["decoder_target_tokens"]) == 4 for b in seen)  # half of the global 8
    assert (rate.examples, rate.tokens, rate.slots) == _slow_counts(seen)
    assert rate.slots == 3 * 4 * (96 + 160)
    assert 0 < rate.tokens < rate.slots and rate.examples > 3 * 4  # packed
    rates = rate.rates()
    for name in ("examples", "tokens", "slots"):
        assert rates[f"{name}_per_s"] * rate.seconds == pytest.approx(getattr(rate, name))
        assert rates[f"{name}_per_cpu_s"] * rate.cpu_seconds == pytest.approx(getattr(rate, name))


def test_host_rows_cover_the_batch_and_refuse_an_uneven_split():
    assert [host_rows(8, i, 4) for i in range(4)] == [slice(2 * i, 2 * i + 2) for i in range(4)]
    with pytest.raises(ValueError, match="not divisible"):
        host_rows(6, 0, 4)


def test_bench_pipeline_summary_and_gpu_figures(tmp_path, capsys):
    out = tmp_path / "pipeline.json"
    argv = ["--task", "synthetic_arith_easy_text", "--lengths", "targets=64", "--converter"]
    argv += ["lm", "--batch", "4", "--hosts", "1,2", "--batches", "2", "--warmup", "1"]
    bench_pipeline.main(argv + ["--json", str(out)])
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out
    assert "assumed, not measured" in printed and "40% MFU of 989 TFLOP/s" in printed

    gpu = result["gpu"]
    flops_per_token = train_step_flops(get_preset("decoder-1b"), 1, target_length=64) / 64
    assert gpu["row_length"] == 64
    assert gpu["gpu_tokens_per_s"] == pytest.approx(0.4 * 989e12 / flops_per_token)

    summaries = {(s["host_sharding"], s["hosts"]): s for s in result["summaries"]}
    assert sorted(summaries) == [("rows", 1), ("rows", 2), ("source", 1), ("source", 2)]
    for (sharding, count), summary in summaries.items():
        hosts = [
            h
            for h in result["hosts"]
            if h["host_sharding"] == sharding and h["process_count"] == count
        ]
        assert [h["process_index"] for h in hosts] == list(range(count))
        for h in hosts:
            assert h["slots"] == 2 * (4 // count) * 64  # batches x host rows x length
            assert h["examples_per_s"] * h["seconds"] == pytest.approx(h["examples"])
        mean = sum(h["tokens_per_s"] for h in hosts) / count
        assert summary["tokens_per_s"] == pytest.approx(mean)
        slowest_core = min(h["slots_per_cpu_s"] for h in hosts)
        assert summary["cores_per_gpu"] == pytest.approx(gpu["gpu_tokens_per_s"] / slowest_core)
        padding = 1 - sum(h["tokens"] for h in hosts) / sum(h["slots"] for h in hosts)
        assert summary["padding"] == pytest.approx(padding)
