"""The import benchmark: a small generated checkpoint goes through `import_hf` in a measured
process; the row has its fields and the imported params are the generated tensors."""

import json
import os

import jax
import numpy as np
import pytest

from t5x_rationale import bench_import
from t5x_rationale.architectures import build_model, dummy_batch
from t5x_rationale.benchmarks.process_memory import read_status
from t5x_rationale.benchmarks.synthetic_hf import DecoderShape, generated_tensor, plan_shards
from t5x_rationale.interop.hf_config import read_hf_config
from t5x_rationale.interop.hf_names import mappings
from t5x_rationale.interop.safetensors_io import SafetensorsCheckpoint
from t5x_rationale.runtime.checkpoints import restore_params
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.trainer import abstract_params

SMALL = ["--size", "quick", "--layers", "2", "--vocab", "4096", "--seed", "3"]


def test_shards_are_balanced_runs_in_order():
    sizes = [("a", 10), ("b", 1), ("c", 1), ("d", 1), ("e", 10)]
    assert plan_shards(sizes, 4) == [["a"], ["b", "c"], ["d"], ["e"]]
    assert plan_shards(sizes[:4], 4) == [["a"], ["b"], ["c"], ["d"]]
    with pytest.raises(ValueError):
        plan_shards(sizes[:2], 3)


def test_read_status_reports_this_process():
    status = read_status()
    assert status["VmHWM"] >= status["VmRSS"] > 0
    assert status["RssAnon"] + status["RssFile"] <= status["VmRSS"]


def test_bench_import_row_and_imported_params(tmp_path):
    out = tmp_path / "row.json"
    bench_import.main([*SMALL, "--work_dir", str(tmp_path), "--keep", "--json", str(out)])
    row = json.loads(out.read_text())
    shape = DecoderShape(hidden=512, layers=2, intermediate=1408, heads=8, kv_heads=2, vocab=4096)
    assert row["params"] == shape.num_params() and row["shards"] == 4
    assert row["largest_tensor_bytes"] == 4096 * 512 * 4
    assert row["bytes"] > row["params"] * 4 == row["params_bytes"]
    assert 0 < row["read_s"] + row["save_s"] < row["import_s"]
    assert row["peak_rss"] >= row["peak_anon"] > row["baseline_anon"] > 0
    assert row["peak_rss"] >= row["anon_at_rss_peak"] + row["file_at_rss_peak"]
    assert row["peak_rss_over_baseline"] == row["peak_rss"] - row["baseline_rss"]
    assert row["overhead_bytes"] == row["peak_anon"] - row["baseline_anon"] - row["params_bytes"]
    hf_dir = os.path.join(row["work_dir"], "hf")
    assert len(SafetensorsCheckpoint.open(hf_dir)) == len(shape.tensors())
    config = read_hf_config(hf_dir)
    partitioner = Partitioner(create_mesh(MeshConfig.parse("1x-1x1")))
    targets = abstract_params(
        build_model(config), partitioner, dummy_batch(config, 1, target_length=8)
    )
    params, _ = restore_params(os.path.join(row["work_dir"], "imported", "checkpoints"), targets)
    table = {m.hf_name: m for m in mappings(config)}
    for name in (
        "model.embed_tokens.weight",
        "model.layers.1.self_attn.k_proj.weight",
        "model.layers.0.self_attn.o_proj.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
    ):
        want = table[name].layout.to_ours(generated_tensor(shape, name, dtype="float32", seed=3))
        got = params
        for key in table[name].path:
            got = got[key]
        np.testing.assert_array_equal(np.asarray(jax.device_get(got)), want, err_msg=name)


def test_bench_import_removes_its_files(tmp_path, capsys):
    bench_import.main([*SMALL, "--layers", "1", "--work_dir", str(tmp_path)])
    assert os.listdir(tmp_path) == []
    assert "| model | params | shards | largest tensor |" in capsys.readouterr().out
