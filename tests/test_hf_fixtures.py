"""Imported Hugging Face checkpoints compute what transformers computed: logits on fixed
inputs within 1e-5 (float32), for the tiny random checkpoints of tests/fixtures/hf (made by
tests/fixtures/make_hf_fixtures.py; CI needs neither torch nor transformers)."""

import json
import os

import jax
import numpy as np
import pytest

from t5x_rationale.architectures import build_model, dummy_batch
from t5x_rationale.architectures.position import rope_inv_freq
from t5x_rationale.interop.hf_config import HfConfigError, from_hf_config, read_hf_config
from t5x_rationale.interop.importer import import_params
from t5x_rationale.interop.safetensors_io import SafetensorsCheckpoint
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.trainer import abstract_params

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf")
IMPORTED = ("llama2", "llama3", "mistral", "qwen2", "t5_v1_1", "t5_original")
DECODERS = ("llama2", "llama3", "mistral", "qwen2")


def _imported(name, mesh="1x4x2"):
    directory = os.path.join(FIXTURES, name)
    config = read_hf_config(directory)
    enc_dec = config.architecture == "encoder_decoder"
    example = dummy_batch(config, 2, target_length=8, input_length=8 if enc_dec else 0)
    model = build_model(config)
    partitioner = Partitioner(create_mesh(MeshConfig.parse(mesh)))
    targets = abstract_params(model, partitioner, example)
    params = import_params(SafetensorsCheckpoint.open(directory), config, targets)
    return model, params, np.load(os.path.join(directory, "reference.npz"))


def _logits(model, params, ref):
    if "decoder_input_ids" in ref.files:  # T5: right-padded encoder input, pad id 0
        inputs = {
            "encoder_input_tokens": ref["input_ids"],
            "decoder_input_tokens": ref["decoder_input_ids"],
            "encoder_segment_ids": ref["attention_mask"].astype(np.int32),
        }
        return model.apply({"params": params}, **inputs), None
    mask = ref["attention_mask"].astype(np.int32)  # left-padded decoder rows
    inputs = {
        "decoder_input_tokens": ref["input_ids"],
        "decoder_segment_ids": mask,
        "decoder_positions": ref["position_ids"].astype(np.int32),
    }
    return model.apply({"params": params}, **inputs), mask


@pytest.mark.parametrize("name", IMPORTED)
def test_imported_logits_equal_transformers(name):
    model, params, ref = _imported(name)
    logits, mask = _logits(model, params, ref)
    logits = np.asarray(jax.device_get(logits))
    want = ref["logits"]
    if mask is not None:  # pad queries' logits mean nothing
        logits, want = logits[mask == 1], want[mask == 1]
    np.testing.assert_allclose(logits, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", DECODERS)
def test_both_config_formats_give_the_same_config(name):
    """transformers 5's `rope_parameters` and 4.x's `rope_theta` / `rope_scaling`."""
    with open(os.path.join(FIXTURES, name, "config.legacy.json")) as f:
        legacy = from_hf_config(json.load(f))
    assert legacy == read_hf_config(os.path.join(FIXTURES, name))


def test_the_fixtures_rope_frequencies_and_biases_are_read():
    llama3 = read_hf_config(os.path.join(FIXTURES, "llama3"))
    assert llama3.rope_theta == 500000.0
    assert llama3.rope_scaling == ("llama3", 8.0, 1.0, 4.0, 16)
    ref = np.load(os.path.join(FIXTURES, "llama3", "reference.npz"))
    got = rope_inv_freq(llama3.head_dim, llama3.rope_theta, llama3.rope_scaling)
    np.testing.assert_allclose(np.asarray(got), ref["rope_inv_freq"], rtol=1e-6)
    qwen2 = read_hf_config(os.path.join(FIXTURES, "qwen2"))
    assert qwen2.attention_bias and qwen2.rope_scaling is None
    assert not llama3.attention_bias


@pytest.mark.parametrize(
    "name, change, message",
    [
        ("llama3", {"rope_type": "yarn"}, "rope_parameters.rope_type='yarn' is not supported"),
        ("llama3", {"high_freq_factor": 0.5}, "rope_parameters: rope_scaling .* high_freq_factor"),
        ("llama3", {"factor": None}, "rope_parameters of rope_type 'llama3' lacks \\['factor'\\]"),
        ("llama2", {"rope_type": "dynamic"}, "rope_parameters.rope_type='dynamic'"),
    ],
)
def test_unmodelled_rope_parameters_are_refused_naming_the_field(name, change, message):
    with open(os.path.join(FIXTURES, name, "config.json")) as f:
        hf = json.load(f)
    hf["rope_parameters"] = {**hf["rope_parameters"], **change}
    with pytest.raises(HfConfigError, match=f"{name}/config.json: {message}"):
        from_hf_config(hf, source=f"{name}/config.json")


@pytest.mark.parametrize(
    "name, change, message",
    [
        (
            "llama3",
            {"rope_scaling": {"type": "yarn", "factor": 4.0}},
            "rope_scaling.rope_type='yarn'",
        ),
        ("qwen2", {"attention_bias": False}, "attention_bias=False is not supported"),
        ("llama2", {"attention_bias": True}, "attention_bias=True is not supported"),
    ],
)
def test_unmodelled_legacy_fields_are_refused_naming_the_field(name, change, message):
    with open(os.path.join(FIXTURES, name, "config.legacy.json")) as f:
        hf = json.load(f) | change
    with pytest.raises(HfConfigError, match=f"{name}: {message}"):
        from_hf_config(hf, source=name)


def test_an_imported_checkpoint_starts_a_run_that_trains(tmp_path):
    import optax

    from t5x_rationale.benchmarks.random_batches import RandomBatches
    from t5x_rationale.import_hf import import_hf
    from t5x_rationale.objectives import token_loss
    from t5x_rationale.runtime.trainer import Trainer
    from t5x_rationale.runtime.warm_start import warm_start

    config, imported = import_hf(os.path.join(FIXTURES, "mistral"), str(tmp_path / "ckpt"))
    partitioner = Partitioner(create_mesh(MeshConfig.parse("2x2x2")))
    trainer = Trainer(build_model(config), token_loss, optax.sgd(0.1), partitioner)
    batch = next(RandomBatches(vocab_size=config.vocab_size, batch_size=8, target_length=12))
    state = warm_start(trainer.init_state(0, batch), str(tmp_path / "ckpt" / "checkpoints"), config)
    for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(imported)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    after, metrics = trainer.train_step(state, partitioner.host_batch_to_global(batch))
    assert np.isfinite(float(metrics["loss"])) and int(after.step) == 1
    moved = [
        not np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(after.params), jax.tree.leaves(state.params))
    ]
    assert all(moved)


@pytest.mark.parametrize("name", IMPORTED)
def test_import_then_export_gives_back_the_same_tensors_and_config(tmp_path, name):
    from t5x_rationale.export import export_hf, read_model_config
    from t5x_rationale.import_hf import import_hf

    source = os.path.join(FIXTURES, name)
    import_hf(source, str(tmp_path / "ckpt"))
    config = read_model_config(str(tmp_path / "ckpt" / "model.gin"))
    with open(os.path.join(source, "config.json")) as f:
        want = json.load(f)
    export_hf(str(tmp_path / "ckpt" / "checkpoints"), config, str(tmp_path / "hf"), max_shard_mb=1)
    with open(tmp_path / "hf" / "config.json") as f:
        assert json.load(f)["model_type"] == want["model_type"]  # the imported one
    assert "tokenizer.json" not in os.listdir(tmp_path / "hf")  # the fixtures have none
    original, exported = (
        SafetensorsCheckpoint.open(source),
        SafetensorsCheckpoint.open(tmp_path / "hf"),
    )
    assert exported.names() == original.names()
    for tensor in original.names():
        assert exported.read(tensor).tobytes() == original.read(tensor).tobytes(), tensor
    assert read_hf_config(str(tmp_path / "hf")) == read_hf_config(source)
    with open(tmp_path / "hf" / "config.json") as g:
        got = json.load(g)
    assert got["model_type"] == want["model_type"]
    if "rope_parameters" in want:
        assert got["rope_parameters"] == want["rope_parameters"]
    for key in ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id"):
        assert got.get(key) == want.get(key), key


def test_the_model_file_may_be_a_run_config_and_a_bad_value_is_named(tmp_path):
    from t5x_rationale.export import read_model_config

    run_config = tmp_path / "config.gin"
    run_config.write_text(
        "train.batch_size = 8\nmodel_config.preset = 't5-tiny'\nmodel_config.emb_dim = 32\n"
        "train.model_config = @model_config()\n"
    )
    assert read_model_config(str(run_config)).emb_dim == 32
    run_config.write_text("model_config.preset = 't5-tiny'\nmodel_config.dtype = %DTYPE\n")
    with pytest.raises(ValueError, match="config.gin:2: '%DTYPE' is not a literal"):
        read_model_config(str(run_config))
