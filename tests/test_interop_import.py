"""Hugging Face import: config.json both ways, tensors read slice by slice into their
sharding (every device holds exactly its slice), export as the exact inverse, and bad
checkpoints named by file and tensor. (Logits against transformers: test_hf_fixtures.)"""

import json
import os

import flax.linen as nn
import jax
import numpy as np
import pytest

from t5x_rationale.architectures import build_model, get_preset, model_inputs
from t5x_rationale.benchmarks.random_batches import RandomBatches
from t5x_rationale.import_hf import import_hf
from t5x_rationale.interop.exporter import hf_tensors
from t5x_rationale.interop.hf_config import HfConfigError, from_hf_config, to_hf_config
from t5x_rationale.interop.importer import HfCheckpointMismatchError, import_params
from t5x_rationale.interop.safetensors_io import SafetensorsCheckpoint, write_safetensors
from t5x_rationale.runtime.checkpoints import restore_params
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.trainer import abstract_params

CONFIGS = {
    "llama": get_preset("decoder-tiny"),
    "mistral": get_preset("decoder-tiny", sliding_window=3, tie_embeddings=True),
    "llama3": get_preset(
        "decoder-tiny", rope_theta=5e5, rope_scaling=("llama3", 8.0, 1.0, 4.0, 16)
    ),
    "qwen2": get_preset("decoder-tiny", attention_bias=True, tie_embeddings=True),
    "t5": get_preset("t5-tiny"),
    "t5-original": get_preset("t5-tiny", mlp_activations=("relu",), logits_via_embedding=True),
}
MODEL_TYPES = {
    "llama": "llama",
    "mistral": "mistral",
    "llama3": "llama",
    "qwen2": "qwen2",
    "t5": "t5",
    "t5-original": "t5",
}


def _example(config):
    enc_dec = config.architecture == "encoder_decoder"
    return next(
        RandomBatches(
            vocab_size=config.vocab_size,
            batch_size=2,
            target_length=8,
            input_length=8 if enc_dec else 0,
        )
    )


def _random_params(config, seed=0):
    model = build_model(config)
    variables = model.init(jax.random.PRNGKey(seed), **model_inputs(_example(config)))
    params = jax.tree.map(np.asarray, nn.unbox(variables["params"]))
    # Norm scales start at one: make them distinct so a dropped or swapped norm shows.
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda x: x + rng.normal(0, 0.1, x.shape).astype(x.dtype), params)


def _write_hf(directory, config, params, **kw):
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(to_hf_config(config, model_type=MODEL_TYPES[_name(config)]), f)
    write_safetensors(directory, hf_tensors(config, params), **kw)


def _name(config):
    return next(k for k, v in CONFIGS.items() if v == config)


def _targets(config, mesh):
    partitioner = Partitioner(create_mesh(MeshConfig.parse(mesh)))
    return abstract_params(build_model(config), partitioner, _example(config))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_config_json_both_ways(name):
    config = CONFIGS[name]
    hf = to_hf_config(config, model_type=MODEL_TYPES[name])
    assert from_hf_config(json.loads(json.dumps(hf))) == config
    if config.architecture == "decoder":  # transformers 4.x reads only the legacy fields
        legacy = {k: v for k, v in hf.items() if k != "rope_parameters"}
        assert from_hf_config(json.loads(json.dumps(legacy))) == config


def test_q_k_v_biases_export_only_as_qwen2():
    with pytest.raises(HfConfigError, match="attention_bias=True does not export as llama"):
        to_hf_config(CONFIGS["qwen2"], model_type="llama")
    with pytest.raises(HfConfigError, match="attention_bias=False does not export as qwen2"):
        to_hf_config(CONFIGS["llama"], model_type="qwen2")


@pytest.mark.parametrize(
    "change, field",
    [
        ({"model_type": "gpt2"}, "model_type"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope_parameters"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling"),
        ({"attention_bias": True}, "attention_bias"),
        ({"num_hidden_layers": None}, "num_hidden_layers"),
    ],
)
def test_unsupported_config_values_name_the_file_and_field(change, field):
    hf = to_hf_config(CONFIGS["llama"], model_type="llama") | change
    hf = {k: v for k, v in hf.items() if v is not None or k != field}
    with pytest.raises(HfConfigError, match=f"my/config.json.*{field}"):
        from_hf_config(hf, source="my/config.json")


@pytest.mark.parametrize("mesh", ["1x4x2", "8x1x1"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_each_device_holds_exactly_its_slice(tmp_path, name, mesh):
    config = CONFIGS[name]
    params = _random_params(config)
    _write_hf(tmp_path, config, params, max_shard_bytes=20_000)
    imported = import_params(SafetensorsCheckpoint.open(tmp_path), config, _targets(config, mesh))
    flat_in = jax.tree_util.tree_flatten_with_path(params)[0]
    flat_out = dict(jax.tree_util.tree_flatten_with_path(imported)[0])
    assert len(flat_in) == len(flat_out)
    for path, want in flat_in:
        got = flat_out[path]
        assert got.shape == want.shape and got.dtype == want.dtype
        for shard in got.addressable_shards:
            np.testing.assert_array_equal(np.asarray(shard.data), want[shard.index])


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_export_gives_back_the_same_tensors_bit_for_bit(tmp_path, name):
    config = CONFIGS[name]
    _write_hf(tmp_path, config, _random_params(config, seed=1))
    source = SafetensorsCheckpoint.open(tmp_path)
    imported = import_params(source, config, _targets(config, "1x8x1"))
    for hf_name, tensor in hf_tensors(config, imported).items():
        original = source.read(hf_name)
        assert tensor.dtype == original.dtype and tensor.tobytes() == original.tobytes(), hf_name


def _broken(tmp_path, edit):
    config = CONFIGS["llama"]
    tensors = hf_tensors(config, _random_params(config))
    edit(tensors)
    with open(tmp_path / "config.json", "w") as f:
        json.dump(to_hf_config(config, model_type="llama"), f)
    write_safetensors(tmp_path, tensors)
    return SafetensorsCheckpoint.open(tmp_path), config


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), "missing.*layers.1.mlp.up_proj"),
        (lambda t: t.update(extra=np.zeros(3, np.float32)), "no place in the model.*'extra'"),
        (
            lambda t: t.update({"model.norm.weight": np.zeros(65, np.float32)}),
            "model.safetensors: tensor model.norm.weight has shape \\[65\\]",
        ),
    ],
    ids=["missing", "extra", "shape"],
)
def test_a_mismatched_checkpoint_names_the_tensor(tmp_path, edit, message):
    checkpoint, config = _broken(tmp_path, edit)
    with pytest.raises(HfCheckpointMismatchError, match=message):
        import_params(checkpoint, config, _targets(config, "1x8x1"))


def test_import_hf_writes_a_checkpoint_runs_start_from(tmp_path):
    config = CONFIGS["mistral"]
    params = _random_params(config, seed=2)
    _write_hf(tmp_path / "hf", config, params)
    out = tmp_path / "imported"
    imported_config, _ = import_hf(str(tmp_path / "hf"), str(out))
    assert imported_config == config
    assert sorted(os.listdir(out)) == ["checkpoints", "hf_config.json", "model.gin"]
    restored, step = restore_params(str(out / "checkpoints"), _targets(config, "2x2x2"))
    assert step == 0
    for (path, want), got in zip(
        jax.tree_util.tree_flatten_with_path(params)[0], jax.tree.leaves(restored)
    ):
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=str(path))
    text = (out / "model.gin").read_text()
    assert (
        "model_config.sliding_window = 3" in text and "model_config.tie_embeddings = True" in text
    )


def test_a_failed_import_leaves_no_out_dir(tmp_path):
    config = CONFIGS["llama"]
    tensors = hf_tensors(config, _random_params(config))
    del tensors["model.norm.weight"]
    os.makedirs(tmp_path / "hf")
    with open(tmp_path / "hf" / "config.json", "w") as f:
        json.dump(to_hf_config(config, model_type="llama"), f)
    write_safetensors(tmp_path / "hf", tensors)
    with pytest.raises(HfCheckpointMismatchError, match="model.norm.weight"):
        import_hf(str(tmp_path / "hf"), str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["hf"]


def test_gin_model_file_rebuilds_the_config(tmp_path):
    import gin

    import t5x_rationale.gin_configurables as configurables
    from t5x_rationale.interop.checkpoint_files import gin_model_file

    for config in CONFIGS.values():
        gin.clear_config()
        gin.parse_config(gin_model_file(config, "test"))
        assert configurables.model_config() == config
    gin.clear_config()
