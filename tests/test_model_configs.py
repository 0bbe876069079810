"""Model params carry logical axis names; dummy batches, presets and config validation."""

from __future__ import annotations

import flax.linen as nn
import jax
import pytest

from t5x_rationale.architectures import build_model, dummy_batch, get_preset, model_inputs


@pytest.mark.parametrize(
    "preset,scan",
    [("t5-tiny", False), ("t5-tiny", True), ("decoder-tiny", False), ("decoder-tiny", True)],
)
def test_every_param_has_logical_axis_names(preset, scan):
    c = get_preset(preset, scan_layers=scan)
    model = build_model(c)
    batch = model_inputs(dummy_batch(c, 2, target_length=4, input_length=3))
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), **batch)["params"]
    leaves = jax.tree_util.tree_leaves_with_path(
        params, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned)
    )
    assert leaves
    for path, leaf in leaves:
        name = jax.tree_util.keystr(path)
        assert isinstance(leaf, nn.LogicallyPartitioned), name
        assert len(leaf.names) == leaf.value.ndim, (name, leaf.names, leaf.value.shape)
        assert all(isinstance(n, str) for n in leaf.names), (name, leaf.names)
        if scan and "layers" in name and "layers_" not in name:
            assert leaf.names[0] == "layers", (name, leaf.names)


def test_model_inputs_and_dummy_batch():
    t5 = get_preset("t5-tiny")
    batch = dummy_batch(t5, 3, target_length=5, input_length=4)
    assert batch["encoder_input_tokens"].shape == (3, 4)
    assert batch["decoder_input_tokens"].shape == (3, 5)
    assert set(model_inputs(batch)) == {"encoder_input_tokens", "decoder_input_tokens"}
    with pytest.raises(ValueError, match="input_length"):
        dummy_batch(t5, 1, target_length=4)
    dec = dummy_batch(get_preset("decoder-tiny"), 2, target_length=6)
    assert "encoder_input_tokens" not in dec and set(model_inputs(dec)) == {"decoder_input_tokens"}
    with pytest.raises(TypeError):
        build_model(object())


def test_get_preset_errors_name_the_problem():
    with pytest.raises(ValueError, match="t5-nonexistent"):
        get_preset("t5-nonexistent")
    with pytest.raises(ValueError, match="num_layerz"):
        get_preset("decoder-tiny", num_layerz=3)
    with pytest.raises(ValueError, match="num_layers"):  # decoder field on a T5 preset
        get_preset("t5-tiny", num_layers=3)
    c = get_preset("decoder-tiny", num_layers=3, dtype="bfloat16")
    assert c.num_layers == 3 and c.dtype == "bfloat16" and c.num_kv_heads == 4
    assert get_preset("decoder-tiny").num_layers == 2  # the preset itself is untouched


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: get_preset("decoder-tiny", num_heads=8, num_kv_heads=3), "multiple"),
        (lambda: get_preset("decoder-tiny", head_dim=7), "even head_dim"),
        (lambda: get_preset("decoder-tiny", sliding_window=0), "sliding_window"),
        (lambda: get_preset("decoder-tiny", rope_theta=0.0), "rope_theta"),
        (lambda: get_preset("decoder-tiny", rope_scaling=("yarn", 4.0)), "rope_scaling must"),
        (lambda: get_preset("decoder-tiny", rope_scaling=("llama3", 8.0, 1.0, 4.0)), "takes"),
        (
            lambda: get_preset("decoder-tiny", rope_scaling=("llama3", 8.0, 4.0, 1.0, 16)),
            "low_freq_factor < high_freq_factor",
        ),
        (
            lambda: get_preset("decoder-tiny", rope_scaling=("llama3", 8.0, 1.0, 4.0, 16.5)),
            "original_max_position_embeddings",
        ),
        (lambda: get_preset("decoder-tiny", rope_scaling=["llama3"]), "rope_scaling must"),
        (lambda: get_preset("decoder-tiny", attention_bias="yes"), "attention_bias"),
        (lambda: get_preset("decoder-tiny", num_layers=0), "num_layers"),
        (lambda: get_preset("decoder-tiny", emb_dim=0), "emb_dim"),
        (lambda: get_preset("decoder-tiny", dropout_rate=1.0), "dropout_rate"),
        (lambda: get_preset("decoder-tiny", dtype="float8"), "float8"),
        (lambda: get_preset("t5-tiny", remat_policy="some"), "remat_policy"),
        (lambda: get_preset("t5-tiny", attention_impl="flash"), "attention_impl"),
        (lambda: get_preset("t5-tiny", num_decoder_layers=0), "at least one"),
        (
            lambda: get_preset("t5-tiny", relative_attention_num_buckets=1),
            "relative_attention_num_buckets",
        ),
    ],
)
def test_config_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_kv_heads_defaults_to_num_heads():
    assert get_preset("decoder-125m").kv_heads == 12
    assert get_preset("decoder-tiny").kv_heads == 4
