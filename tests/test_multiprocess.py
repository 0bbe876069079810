"""Two JAX processes over loopback (gloo CPU collectives) match one process."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "train_script.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the script sets its own device count
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["decoder-tiny", "t5-tiny"])
def test_two_processes_match_single_process(tmp_path, preset):
    common = ["--preset", preset, "--steps", "3", "--optimizer", "sgd"]
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                SCRIPT,
                *common,
                "--mesh",
                "2x2x2",
                "--local_devices",
                "4",
                "--coordinator",
                f"127.0.0.1:{port}",
                "--num_processes",
                "2",
                "--process_id",
                str(i),
                "--out",
                str(tmp_path / "multi.npz"),
            ],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    single = subprocess.run(
        [sys.executable, SCRIPT, *common, "--mesh", "1x1x1", "--out", str(tmp_path / "single.npz")],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-3000:]
    multi, ref = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
    assert sorted(multi.files) == sorted(ref.files)
    assert sum(k.startswith("loss:") for k in ref.files) == 3
    for key in ref.files:
        np.testing.assert_allclose(multi[key], ref[key], rtol=1e-5, atol=1e-6, err_msg=key)
