"""A Quiet-STaR checkpoint exports as its base LM (the plain decoder's HF tensors) plus
`quiet_star.safetensors` (thought embeddings and mixing head, documented layout), and its
run's config.gin serves as the model file."""

import json

import jax
import numpy as np
from quiet_star_models import tiny_config, tiny_params

from t5x_rationale.export import export_hf, read_model_config
from t5x_rationale.interop.checkpoint_files import gin_model_file, save_params
from t5x_rationale.interop.safetensors_io import SafetensorsCheckpoint

RUN_CONFIG = """\
DTYPE = 'float32'
include 'thinking/reference.gin'
model_config.preset = 'decoder-tiny'
model_config.dtype = %DTYPE
quiet_star_config.decoder = @model_config()
quiet_star_config.thought_token_ids = (5, 7)
quiet_star_config.thought_scale = 10.0
train.model_config = @quiet_star_config()
"""


def test_a_quiet_star_checkpoint_exports_its_lm_and_its_additions(tmp_path):
    (tmp_path / "config.gin").write_text(RUN_CONFIG)
    config = read_model_config(str(tmp_path / "config.gin"))
    assert config.thought_token_ids == (5, 7) and config.decoder == tiny_config().decoder
    assert config.thought_scale == 10.0 and config.decoder.dtype == "float32"
    (tmp_path / "model.gin").write_text(gin_model_file(config, "a test"))  # what train writes
    assert read_model_config(str(tmp_path / "model.gin")) == config
    params = jax.tree.map(np.asarray, tiny_params(config, seed=3, mixing_random=True))
    save_params(str(tmp_path / "qs"), params)
    lm = {k: params[k] for k in ("token_embedder", "decoder")}
    save_params(str(tmp_path / "lm"), lm)
    export_hf(str(tmp_path / "qs"), config, str(tmp_path / "hf_qs"))
    export_hf(str(tmp_path / "lm"), config.decoder, str(tmp_path / "hf_lm"))

    exported, plain = (SafetensorsCheckpoint.open(tmp_path / d) for d in ("hf_qs", "hf_lm"))
    assert exported.names() == plain.names()
    for name in plain.names():
        assert exported.read(name).tobytes() == plain.read(name).tobytes(), name
    for name in ("config.json", "generation_config.json"):
        assert json.loads((tmp_path / "hf_qs" / name).read_text()) == json.loads(
            (tmp_path / "hf_lm" / name).read_text()
        )

    added = SafetensorsCheckpoint.open(tmp_path / "hf_qs" / "quiet_star.safetensors")
    head = params["mixing_head"]
    want = {
        "start_thought": params["start_thought"] * np.float32(10.0),
        "end_thought": params["end_thought"] * np.float32(10.0),
        "mixing_head.0.weight": head["hidden_0_kernel"].T,
        "mixing_head.0.bias": head["hidden_0_bias"],
        "mixing_head.1.weight": head["hidden_1_kernel"].T,
        "mixing_head.1.bias": head["hidden_1_bias"],
        "mixing_head.2.weight": head["out_kernel"].T,
    }
    assert sorted(added.names()) == sorted(want)
    for name, value in want.items():
        got = added.read(name)
        assert got.dtype == np.float32 and got.shape == value.shape, name
        np.testing.assert_array_equal(got, value, err_msg=name)
    assert json.loads(added.metadata["thought_token_ids"]) == [5, 7]
    assert json.loads(added.metadata["thought_scale"]) == 10.0
    assert added.metadata["format"] == "pt"
