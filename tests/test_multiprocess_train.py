"""`python -m t5x_rationale.train` in two jax.distributed processes matches one process."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The quickstart config, shortened: 3 steps of batch 8 on 32-token sequences, SGD, every host
# reading the global batch.
FLAGS = [
    "--gin_file=runs/quickstart.gin",
    "--gin.INPUT_LENGTH=32",
    "--gin.TARGET_LENGTH=32",
    "--gin.train.batch_size=8",
    "--gin.train.num_steps=3",
    "--gin.train.log_every=1",
    "--gin.train.measure_mfu=False",
    "--gin.train.console=False",
    "--gin.train.host_sharding='rows'",  # the same global batches on any number of hosts
    "--gin.OptimizerConfig.name='sgd'",
    "--gin.OptimizerConfig.learning_rate=0.5",
]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _losses(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return np.array([json.loads(line)["loss"] for line in f])


@pytest.mark.slow
def test_train_entry_point_two_processes_match_one(tmp_path):
    train = [sys.executable, "-m", "t5x_rationale.train", *FLAGS]
    port = _free_port()
    multi_dir = tmp_path / "multi"
    procs = [
        subprocess.Popen(
            [
                *train,
                f"--gin.RUN_DIR='{multi_dir}'",
                f"--coordinator_address=127.0.0.1:{port}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=ROOT,
            env=_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    single_dir = tmp_path / "single"
    single = subprocess.run(
        [*train, f"--gin.RUN_DIR='{single_dir}'"],
        cwd=ROOT,
        env=_env(8),
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-3000:]
    multi, ref = _losses(multi_dir), _losses(single_dir)
    assert len(ref) == 3 and np.all(np.isfinite(ref))
    np.testing.assert_allclose(multi, ref, rtol=1e-5)
