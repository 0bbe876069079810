"""The README's recipe on a tiny model: a Hugging Face T5 directory (weights, config.json,
SentencePiece tokenizer) -> distill step-by-step on GSM8K with `configs/models/hf.gin` ->
export to a Hugging Face directory with its tokenizer (evaluate runs as in
`test_gsm8k_runs.py`).
Skips when `../shared/data/gsm8k` is absent."""

import dataclasses
import json
import os
import shutil

import gin
import jax
import numpy as np
import pytest
from random_params import random_params
from test_sources import gsm8k_dir

from t5x_rationale import export as export_mod
from t5x_rationale import gin_launch
from t5x_rationale.architectures import build_model, get_preset
from t5x_rationale.data.vocab import DEFAULT_SPM_PATH
from t5x_rationale.interop.checkpoint_files import save_params
from t5x_rationale.interop.safetensors_io import SafetensorsCheckpoint
from t5x_rationale.train import train

MODEL = get_preset("t5-tiny", vocab_size=2048)
TOKENIZER_CONFIG = {"eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}
TINY = [
    "TRAIN_STEPS = 2",
    "OptimizerConfig.warmup_steps = 1",
    "BATCH_SIZE = 8",
    "INPUT_LENGTH = 64",
    "TARGET_LENGTH = 64",
    "train.save_every = 2",
    "train.measure_mfu = False",
    "train.console = False",
    "evaluate.max_examples = 8",
    "evaluate.batch_size = 8",
    "DecodeConfig.max_decode_length = 8",
]


def _launch(entry, run_dir, hf_dir):
    argv = [
        "--gin_file=runs/gsm8k_step_by_step.gin",
        "--gin_file=models/hf.gin",
        f"--gin.HF_DIR='{hf_dir}'",
        f"--gin.GSM8K_DIR='{gsm8k_dir()}'",
        f"--gin.RUN_DIR='{run_dir}'",
    ] + [f"--gin.{b.replace(' = ', '=', 1)}" for b in TINY]
    try:
        return gin_launch.run(entry, argv)
    finally:
        gin.clear_config()


@pytest.fixture(scope="module")
def hf_t5(tmp_path_factory):
    """A T5 v1.1-shaped HF directory: random weights, the shipped tokenizer as spiece.model."""
    root = tmp_path_factory.mktemp("hf")
    ones = np.ones((1, 8), np.int32)
    params = random_params(
        build_model(MODEL), seed=5, encoder_input_tokens=ones, decoder_input_tokens=ones
    )
    save_params(str(root / "ckpt"), jax.tree.map(np.asarray, params))
    export_mod.export_hf(str(root / "ckpt"), MODEL, str(root / "flan"))
    shutil.copy(DEFAULT_SPM_PATH, root / "flan" / "spiece.model")
    (root / "flan" / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
    return str(root / "flan")


def test_import_distill_export(tmp_path, hf_t5):
    run = tmp_path / "run"
    state = _launch(train, run, hf_t5)
    assert int(state.step) == 2

    resolved = export_mod.read_model_config(str(run / "model.gin"))
    assert export_mod.read_model_config(str(run / "config.gin")) == resolved
    assert resolved == dataclasses.replace(MODEL, dtype="bfloat16", dropout_rate=0.1)
    out = tmp_path / "export"
    argv = [
        "--checkpoint",
        str(run / "checkpoints"),
        "--model_gin",
        str(run / "config.gin"),
        "--hf_dir",
        hf_t5,
        "--out_dir",
        str(out),
    ]
    assert export_mod.main(argv) == 0
    assert (out / "spiece.model").read_bytes() == open(DEFAULT_SPM_PATH, "rb").read()
    config = json.loads((out / "config.json").read_text())
    assert (config["model_type"], config["d_model"], config["eos_token_id"]) == ("t5", 64, 1)
    exported = SafetensorsCheckpoint.open(out)
    start = SafetensorsCheckpoint.open(hf_t5)
    assert exported.names() == start.names()
    moved = [n for n in start.names() if not np.array_equal(exported.read(n), start.read(n))]
    assert len(moved) == len(start.names())  # every tensor trained, none lost on the way
    assert not os.path.exists(f"{out}.exporting")
