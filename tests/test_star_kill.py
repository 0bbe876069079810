"""kill -9 of a real STaR run (`python -m t5x_rationale.star`, tiny sizes), once while it
generates and once while it fine-tunes: the reruns resume (generation at its first unwritten
shard, training at its last checkpoint) and end with the same kept rationales and bit for bit
the same final params as an uninterrupted run, which runs beside them."""

import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6  # the single iteration's fine-tuning steps
TINY = [
    "--gin_file=runs/star.gin",
    "--gin.INPUT_LENGTH=64",
    "--gin.TARGET_LENGTH=32",
    "--gin.model_config.num_encoder_layers=1",
    "--gin.model_config.num_decoder_layers=1",
    "--gin.model_config.mlp_dim=128",
    "--gin.star.num_seed=8",
    "--gin.star.num_questions=16",
    "--gin.star.iterations=1",
    "--gin.star.baseline_steps=2",
    f"--gin.star.base_steps={STEPS}",
    "--gin.star.save_every=2",
    "--gin.star.batch_size=8",
    "--gin.star.generation_batch_size=4",
    "--gin.star.shard_size=4",
    "--gin.star.eval_examples=4",
    "--gin.star.eval_batch_size=4",
    "--gin.DecodeConfig.max_decode_length=12",
    "--gin.OptimizerConfig.warmup_steps=1",
]


def _env(cache: Path) -> dict:
    env = dict(os.environ)
    env.update(
        XLA_FLAGS="--xla_force_host_platform_device_count=1",
        JAX_PLATFORMS="cpu",
        JAX_COMPILATION_CACHE_DIR=str(cache),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


def _start(out_dir: Path, cache: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "t5x_rationale.star", *TINY, f"--gin.star.out_dir='{out_dir}'"]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=_env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )


def _finish(proc: subprocess.Popen) -> str:
    out = proc.communicate(timeout=300)[0].decode()
    assert proc.returncode == 0, out[-3000:]
    return out


def _kill_when(proc: subprocess.Popen, condition) -> None:
    deadline = time.time() + 300
    while not condition():
        assert proc.poll() is None, proc.communicate()[0].decode()[-3000:]
        assert time.time() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _finished(run: Path) -> list:
    path = run / "iter-1" / "state.json"
    return json.loads(path.read_text())["finished"] if path.exists() else []


def _params(run: Path) -> dict:
    import orbax.checkpoint as ocp

    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.restore(
            str(run / "iter-1" / "train" / "checkpoints" / str(STEPS) / "state")
        )
    flat = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}")
        else:
            flat[prefix] = np.asarray(node)

    walk(tree["params"], "")
    return flat


@pytest.mark.slow
def test_kill9_in_generation_and_in_finetuning_resumes_bitwise(tmp_path):
    cache = tmp_path / "jax-cache"
    reference = _start(tmp_path / "reference", cache)  # runs beside the killed one
    run = tmp_path / "killed"
    gen = run / "iter-1" / "generate"
    first = _start(run, cache)
    _kill_when(first, lambda: glob.glob(str(gen / "shard-00000-*")))
    manifest = json.loads((gen / "manifest.json").read_text())
    assert not manifest["complete"] and "generate" not in _finished(run)

    checkpoints = run / "iter-1" / "train" / "checkpoints"
    second = _start(run, cache)
    _kill_when(second, lambda: (checkpoints / "2").is_dir())
    assert "train" not in _finished(run) and "generate" in _finished(run)
    out = _finish(_start(run, cache))
    assert "train: starting from " + str(checkpoints) in out, out[-3000:]

    ref = tmp_path / "reference"
    model0 = ref / "baselines" / "cot-seed" / "checkpoints" / "2"
    # Model 0 generated, and the iteration fine-tuned model 0 again (the base), not a fresh init.
    assert f"train: starting from the params of {model0} " in _finish(reference)
    assert json.loads((ref / "iter-1" / "stats.json").read_text())["generator"] == str(model0)
    for name in ("kept.jsonl", "generated.jsonl", "train.jsonl"):
        assert (run / "iter-1" / name).read_bytes() == (ref / "iter-1" / name).read_bytes()
    got, want = _params(run), _params(ref)
    assert sorted(got) == sorted(want) and got
    for key, value in want.items():
        assert got[key].tobytes() == value.tobytes(), key
