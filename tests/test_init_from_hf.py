"""Starting from a Hugging Face directory without an import step: `train.init_from_hf` with
`configs/models/hf.gin`, an HF teacher, and a Quiet-STaR model on an HF base LM."""

import jax
import numpy as np
import pytest
from checkpoint_setup import assert_bitwise_equal
from quiet_star_models import tiny_config
from random_params import random_params

from t5x_rationale import gin_launch
from t5x_rationale import train as train_mod
from t5x_rationale.architectures import build_model, dummy_batch, get_preset
from t5x_rationale.architectures.quiet_star_lm import thought_init
from t5x_rationale.export import export_hf
from t5x_rationale.interop.checkpoint_files import save_params
from t5x_rationale.interop.hf_config import HfConfigError
from t5x_rationale.interop.hf_start import hf_model_config, hf_params
from t5x_rationale.runtime.checkpoints import restore_params
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.teacher import attach_teacher
from t5x_rationale.runtime.trainer import abstract_params

# The shape `runs/distill_cot_decoder.gin` binds, with 2 layers; the shipped vocabulary.
MODEL = get_preset(
    "decoder-tiny",
    vocab_size=2048,
    emb_dim=128,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
    mlp_dim=512,
    num_layers=2,
)


def _abstract(config, mesh="2x2x2"):
    partitioner = Partitioner(create_mesh(MeshConfig.parse(mesh)))
    example = dummy_batch(config, 2, target_length=8)
    return abstract_params(build_model(config), partitioner, example)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """(an HF directory exported from random params, our checkpoint of the same params)."""
    root = tmp_path_factory.mktemp("hf")
    tokens = np.ones((1, 8), np.int32)
    params = random_params(build_model(MODEL), seed=7, decoder_input_tokens=tokens)
    save_params(str(root / "ckpt"), jax.tree.map(np.asarray, params))
    export_hf(str(root / "ckpt"), MODEL, str(root / "hf"))
    return str(root / "hf"), str(root / "ckpt")


def _train(run_dir, steps, *bindings):
    argv = [
        "--gin_file=runs/distill_cot_decoder.gin",
        f"--gin.RUN_DIR='{run_dir}'",
        f"--gin.TRAIN_STEPS={steps}",
        "--gin.model_config.num_layers=2",
        "--gin.PROMPT_LENGTH=32",
        "--gin.TARGET_LENGTH=32",
        "--gin.train.batch_size=8",
        "--gin.train.save_every=1",
        "--gin.train.measure_mfu=False",
        "--gin.train.console=False",
        "--gin.MeshConfig.data=2",
        "--gin.MeshConfig.fsdp=2",
        "--gin.MeshConfig.tensor=2",
        "--gin.OptimizerConfig.schedule='constant'",
        "--gin.OptimizerConfig.total_steps=None",
        "--gin.OptimizerConfig.warmup_steps=0",
        "--gin.train.vocabulary_path=None",  # the task is tokenized with the shipped model
        *bindings,
    ]
    state = gin_launch.run(train_mod.train, argv)
    return jax.device_get(state.params)


def test_a_run_starts_from_the_hf_weights_and_resumes(tmp_path, hf_dir):
    """Stopped after 1 step and rerun to 2, a run from the HF directory ends bit for bit where
    a run from the same params (our checkpoint) ends: it started from those weights and
    resumed its own checkpoint, not the HF directory."""
    hf, ckpt = hf_dir
    hf_flags = ("--gin_file=models/hf.gin", f"--gin.HF_DIR='{hf}'")
    from_ours = _train(tmp_path / "ours", 2, f"--gin.train.init_from='{ckpt}'")
    _train(tmp_path / "hf", 1, *hf_flags)
    resumed = _train(tmp_path / "hf", 2, *hf_flags)
    assert_bitwise_equal(resumed, from_ours)
    assert (tmp_path / "hf" / "model.gin").read_text().count("model_config.") > 10


def test_a_run_whose_model_differs_is_refused_naming_the_field(tmp_path, hf_dir):
    hf, _ = hf_dir
    with pytest.raises(HfConfigError, match="model_config.mlp_dim = 256"):
        _train(
            tmp_path / "run",
            1,
            "--gin_file=models/hf.gin",
            f"--gin.HF_DIR='{hf}'",
            "--gin.model_config.mlp_dim=256",
        )
    with pytest.raises(ValueError, match="exactly one of model_config.preset and"):
        _train(tmp_path / "run2", 1, f"--gin.model_config.hf_dir='{hf}'")
    with pytest.raises(ValueError, match="init_from or train.init_from_hf, not both"):
        _train(
            tmp_path / "run3",
            1,
            "--gin_file=models/hf.gin",
            f"--gin.HF_DIR='{hf}'",
            f"--gin.train.init_from='{hf_dir[1]}'",
        )
    assert not (tmp_path / "run3" / "checkpoints").exists() or not any(
        p.name.isdigit() for p in (tmp_path / "run3" / "checkpoints").iterdir()
    )


def test_runtime_fields_may_differ_but_the_architecture_may_not(hf_dir):
    hf, _ = hf_dir
    config = hf_model_config(hf, dtype="bfloat16", remat_policy="full", vocab_size=2048)
    assert config.dtype == "bfloat16" and config.emb_dim == 128
    other = get_preset("decoder-tiny", vocab_size=2048)
    with pytest.raises(HfConfigError, match="emb_dim: run 64, .* 128"):
        hf_params(hf, other, _abstract(other))


def test_a_quiet_star_model_takes_its_base_lm_and_derives_its_thoughts(hf_dir):
    from t5x_rationale.runtime.trainer import TrainState
    from t5x_rationale.runtime.warm_start import with_params

    hf, ckpt = hf_dir
    config = tiny_config(
        **{
            k: getattr(MODEL, k)
            for k in (
                "vocab_size",
                "emb_dim",
                "num_heads",
                "num_kv_heads",
                "head_dim",
                "mlp_dim",
                "num_layers",
            )
        }
    )
    abstract = _abstract(config)
    saved, _ = restore_params(ckpt, _abstract(MODEL))
    imported = hf_params(hf, config, abstract)
    assert sorted(imported) == sorted(saved)
    assert_bitwise_equal(jax.device_get(imported), jax.device_get(saved))
    fresh = jax.tree.map(
        lambda a: jax.device_put(np.full(a.shape, 0.5, a.dtype), a.sharding), abstract
    )
    state = TrainState(step=0, params=fresh, opt_state=(), rng=0, skipped_steps=0, bad_streak=0)
    state = with_params(state, imported, config)
    derived = thought_init(saved["token_embedder"]["embedding"], config)
    for name in ("start_thought", "end_thought"):
        np.testing.assert_array_equal(np.asarray(state.params[name]), np.asarray(derived))
    assert_bitwise_equal(state.params["mixing_head"], fresh["mixing_head"])


def test_a_teacher_may_be_an_hf_directory(hf_dir):
    hf, ckpt = hf_dir
    example = dummy_batch(MODEL, 2, target_length=8)
    partitioner = Partitioner(create_mesh(MeshConfig.parse("1x4x2")))
    load = lambda abstract: hf_params(hf, MODEL, abstract)  # noqa: E731
    _, constants = attach_teacher(lambda **k: None, MODEL, hf, partitioner, example, load=load)
    saved, _ = restore_params(ckpt, _abstract(MODEL, "1x4x2"))
    assert_bitwise_equal(jax.device_get(constants["teacher"]), jax.device_get(saved))
