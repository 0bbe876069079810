"""`export --format jax_export` and `interop.serving`: the exported functions decode greedily
without the model code, token for token as `inference.decoding.decode`, at two batch sizes
from one export (symbolic batch); their logits match `model.apply`; bad directories are named.

Logit tolerance: 1e-5 absolute and relative on float32 logits of order 1. The exported
functions run the same float32 ops as `model.apply`, but through the KV-cache path (attention
over the whole cache with masked keys, other matmul shapes and fusions), so sums round in
another order: differences of a few float32 ulps per layer, about 1e-6 here. A real fault (a
wrong position, mask or weight) moves logits by 1e-2 or more.
"""

import json
import os
import shutil
import subprocess
import sys

import flax.linen as nn
import jax
import numpy as np
import pytest

from t5x_rationale import export
from t5x_rationale.architectures import (
    QuietStarConfig,
    build_model,
    dummy_batch,
    get_preset,
    model_inputs,
)
from t5x_rationale.inference.decoding import DecodeConfig, decode
from t5x_rationale.interop import jax_export
from t5x_rationale.interop.checkpoint_files import gin_model_file, save_params
from t5x_rationale.interop.serving import ServingModel

PRESETS = ("decoder-tiny", "t5-tiny")
INPUT_LENGTH, DECODE_LENGTH = 8, 6
# Right-padded prompts at two batch sizes: shortest 3 (prefill 2) and shortest 1 (none).
PROMPTS = (
    [[5, 6, 7, 0, 0], [9, 10, 11, 12, 13], [3, 4, 5, 6, 0]],
    [[17, 0, 0, 0, 0], [21, 22, 23, 24, 25]],
)
BLOCKED = ("flax", "orbax", "t5x_rationale.architectures", "t5x_rationale.runtime")
LOADER = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError(f"{name} is blocked: the loader must not need it")
sys.meta_path.insert(0, Block())
from t5x_rationale.interop.serving import ServingModel
out = {}
for name, directory in DIRS.items():
    model = ServingModel.load(directory)
    out[name] = [model.generate(p)[0].tolist() for p in PROMPTS]
loaded = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
print(json.dumps({"tokens": out, "loaded": loaded}))
"""


def _params(config, seed=0):
    model = build_model(config)
    enc_dec = config.architecture == "encoder_decoder"
    batch = dummy_batch(config, 2, target_length=8, input_length=8 if enc_dec else 0)
    variables = model.init(jax.random.PRNGKey(seed), **model_inputs(batch))
    params = jax.tree.map(np.asarray, nn.unbox(variables["params"]))
    rng = np.random.default_rng(seed)  # norm scales off one, so every weight matters
    return jax.tree.map(lambda x: x + rng.normal(0, 0.1, x.shape).astype(x.dtype), params)


def _checkpoint(root, preset):
    """A saved checkpoint and its gin model file, as import_hf leaves them."""
    config = get_preset(preset)
    params = _params(config)
    save_params(str(root / "checkpoints"), params)
    (root / "model.gin").write_text(gin_model_file(config, preset))
    return config, params


def _export_args(root, out, *extra):
    return [
        "--checkpoint", str(root / "checkpoints"), "--model_gin", str(root / "model.gin"),
        "--format", "jax_export", "--out_dir", str(out),
        "--max_input_length", str(INPUT_LENGTH), "--max_decode_length", str(DECODE_LENGTH),
        *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """preset -> (config, params, export directory); the default platforms (cpu, cuda)."""
    out = {}
    for preset in PRESETS:
        root = tmp_path_factory.mktemp(preset)
        config, params = _checkpoint(root, preset)
        assert export.main(_export_args(root, root / "served")) == 0
        out[preset] = (config, params, root / "served")
    return out


def _padded(prompt):
    prompt = np.asarray(prompt, np.int32)
    return np.pad(prompt, ((0, 0), (0, INPUT_LENGTH - prompt.shape[1])))


def _decode(config, params, prompt, eos_id=1):
    name = "encoder_input_tokens" if config.architecture == "encoder_decoder" else None
    batch = {name or "decoder_prompt_tokens": _padded(prompt)}
    result = decode(build_model(config), params, batch, DecodeConfig(DECODE_LENGTH, eos_id=eos_id))
    return np.asarray(result.tokens), np.asarray(result.lengths)


def test_the_loader_needs_no_model_code_and_matches_decode(exported):
    """In a process where flax, orbax and the model code cannot be imported: both batch
    sizes of one export decode token for token as `decode` does."""
    dirs = {preset: str(directory) for preset, (_, _, directory) in exported.items()}
    code = f"BLOCKED = {BLOCKED!r}\nDIRS = {dirs!r}\nPROMPTS = {PROMPTS!r}\n" + LOADER
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    for preset, (config, params, _) in exported.items():
        for prompt, got in zip(PROMPTS, result["tokens"][preset]):
            want, _ = _decode(config, params, prompt)
            np.testing.assert_array_equal(np.asarray(got), want, err_msg=preset)


@pytest.mark.parametrize("preset", PRESETS)
def test_rows_stop_at_eos_and_pad_after_as_decode_does(exported, preset):
    config, params, directory = exported[preset]
    model = ServingModel.load(str(directory))
    prompt = PROMPTS[0]
    first, _ = _decode(config, params, prompt)
    eos_id = int(first[0, 2])  # row 0 ends at (or before) its third token
    end = list(first[0]).index(eos_id) + 1
    want, want_lengths = _decode(config, params, prompt, eos_id=eos_id)
    tokens, lengths = model.generate(prompt, eos_id=eos_id)
    np.testing.assert_array_equal(tokens, want)
    np.testing.assert_array_equal(lengths, want_lengths)
    assert lengths[0] == end < DECODE_LENGTH and not tokens[0, end:].any()


def test_decoder_prompts_ending_with_id_zero_decode_with_their_lengths(exported):
    """Where id 0 is a text token, `lengths` says where each prompt ends (as `decode`'s
    `decoder_prompt_lengths`); inferred lengths would drop the final 0s."""
    config, params, directory = exported["decoder-tiny"]
    prompt = np.asarray(PROMPTS[0], np.int32)
    lengths = np.array([4, 5, 5], np.int32)  # rows 0 and 2 end with id 0
    batch = {"decoder_prompt_tokens": _padded(prompt), "decoder_prompt_lengths": lengths}
    want = decode(build_model(config), params, batch, DecodeConfig(DECODE_LENGTH))
    tokens, got_lengths = ServingModel.load(str(directory)).generate(prompt, lengths=lengths)
    np.testing.assert_array_equal(tokens, np.asarray(want.tokens))
    np.testing.assert_array_equal(got_lengths, np.asarray(want.lengths))
    inferred, _ = _decode(config, params, prompt)
    assert (inferred[[0, 2]] != tokens[[0, 2]]).any(axis=1).all()
    with pytest.raises(ValueError, match="lengths must be"):
        ServingModel.load(str(directory)).generate(prompt, lengths=lengths + 1)


def test_a_quiet_star_model_exports_as_its_decoder(tmp_path):
    """Decoded without thinking, as `decode` runs a Quiet-STaR model."""
    config = QuietStarConfig(get_preset("decoder-tiny"))
    params = _params(config)
    save_params(str(tmp_path / "checkpoints"), params)
    out = tmp_path / "served"
    jax_export.export_jax(
        str(tmp_path / "checkpoints"),
        config,
        str(out),
        max_input_length=INPUT_LENGTH,
        max_decode_length=DECODE_LENGTH,
        special_ids={"eos_token_id": 1},
        platforms=("cpu",),
    )
    tokens, _ = ServingModel.load(str(out)).generate(PROMPTS[1])
    np.testing.assert_array_equal(tokens, _decode(config, params, PROMPTS[1])[0])


def test_decoder_prefill_and_step_logits_match_apply(exported):
    config, params, directory = exported["decoder-tiny"]
    model = ServingModel.load(str(directory))
    tokens = np.array([[5, 6, 7, 8, 9], [9, 10, 11, 12, 13]], np.int32)
    want = np.asarray(build_model(config).apply({"params": params}, tokens))
    logits, cache = model.prefill(tokens[:, :4])
    np.testing.assert_allclose(np.asarray(logits), want[:, :4], rtol=1e-5, atol=1e-5)
    logits, _ = model.step(cache, tokens[:, 4])
    np.testing.assert_allclose(np.asarray(logits), want[:, 4], rtol=1e-5, atol=1e-5)


def test_t5_encode_and_step_logits_match_apply(exported):
    config, params, directory = exported["t5-tiny"]
    model = ServingModel.load(str(directory))
    inputs = _padded(PROMPTS[0])
    targets = np.array([[0, 4, 5, 6], [0, 7, 8, 9], [0, 10, 11, 12]], np.int32)
    t5 = build_model(config)
    want = np.asarray(t5.apply({"params": params}, inputs, targets))
    encoded = model.encode(inputs)
    np.testing.assert_allclose(
        np.asarray(encoded),
        np.asarray(t5.apply({"params": params}, inputs, method="encode")),
        rtol=1e-5,
        atol=1e-5,
    )
    cache = model.init_cache(inputs)
    for position in range(targets.shape[1]):
        logits, cache = model.step(cache, targets[:, position], encoded, inputs)
        np.testing.assert_allclose(np.asarray(logits), want[:, position], rtol=1e-5, atol=1e-5)


def test_manifest_lists_arrays_and_batch_is_symbolic(exported):
    _, params, directory = exported["decoder-tiny"]
    manifest = json.loads((directory / jax_export.MANIFEST).read_text())
    assert [p["name"] for p in manifest["params"]] == list(jax_export.named_params(params))
    assert manifest["cache_length"] == INPUT_LENGTH + DECODE_LENGTH
    assert manifest["special_ids"] == {"eos_token_id": 1, "pad_token_id": 0}
    kv = [c for c in manifest["cache"] if c["name"].endswith("cached_key")]
    assert kv and all(c["shape"][0] == "b" for c in kv)
    assert sorted(manifest["functions"]) == ["init_cache", "prefill", "step"]
    sizes = [os.path.getsize(directory / f["file"]) for f in manifest["functions"].values()]
    assert max(sizes) < os.path.getsize(directory / "model.safetensors")  # no baked params


def test_an_existing_out_dir_is_refused(exported, tmp_path, capsys):
    root = exported["t5-tiny"][2].parent
    assert export.main(_export_args(root, exported["t5-tiny"][2])) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("missing", ["step.jax_exported", "model.safetensors", "manifest.json"])
def test_a_missing_file_is_named(exported, tmp_path, missing):
    directory = tmp_path / "served"
    shutil.copytree(exported["decoder-tiny"][2], directory)
    os.unlink(directory / missing)
    with pytest.raises(FileNotFoundError, match=missing):
        ServingModel.load(str(directory))


def test_a_failed_export_leaves_nothing(exported, tmp_path, monkeypatch):
    root = exported["decoder-tiny"][2].parent

    def fail(directory, *args, **kwargs):
        os.makedirs(directory)
        raise OSError("disk full")

    monkeypatch.setattr(jax_export, "write_safetensors", fail)
    with pytest.raises(OSError, match="disk full"):
        export.main(_export_args(root, tmp_path / "out", "--platforms", "cpu"))
    assert os.listdir(tmp_path) == []
