"""Generation across processes: two JAX processes (loopback, gloo) write the shards one process
writes, and a run killed with SIGKILL after its first shard resumes to the same bytes."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from generation_setup import CharVocabulary, generation_config, prompts, save_checkpoint

from t5x_rationale.architectures import get_preset
from t5x_rationale.generation import generate_to_shards
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh

SCRIPT = os.path.join(os.path.dirname(__file__), "generation_setup.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(checkpoint directory, the one-process output directory) of the t5-tiny test run."""
    root = tmp_path_factory.mktemp("generation")
    save_checkpoint("t5-tiny", str(root / "checkpoint"))
    generate_to_shards(
        get_preset("t5-tiny"),
        str(root / "checkpoint"),
        CharVocabulary(),
        prompts(),
        str(root / "one"),
        generation_config(),
        Partitioner(create_mesh(MeshConfig())),
        log=lambda line: None,
    )
    return str(root / "checkpoint"), root / "one"


def _env():
    env = dict(os.environ)
    env.pop("XLA_FLAGS", None)  # the script sets its own device count
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _launch(checkpoint, out, *args):
    command = [sys.executable, SCRIPT, "--checkpoint", checkpoint, "--out", str(out), *args]
    return subprocess.Popen(
        command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _files(out):
    names = sorted(n for n in os.listdir(out) if n != "summary.json")
    return {n: (out / n).read_bytes() for n in names}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_write_the_one_process_shards(tmp_path, setup):
    checkpoint, one = setup
    port = _free_port()
    procs = [
        _launch(
            checkpoint,
            tmp_path,
            "--mesh=2x4x1",
            "--local_devices=4",
            f"--coordinator=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-3000:]
    assert _files(tmp_path) == _files(one)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_bytes(tmp_path, setup):
    checkpoint, one = setup
    proc = _launch(checkpoint, tmp_path, "--sleep_after_shard=60")
    lines = []
    deadline = time.time() + 240
    while time.time() < deadline:  # wait for the first shard, then SIGKILL mid-run
        line = proc.stdout.readline()
        lines.append(line)
        if "wrote shard-00000" in line or not line:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert "wrote shard-00000" in lines[-1], "".join(lines)[-3000:]
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "shard-00000-of-00003.jsonl"]
    resumed = generate_to_shards(
        get_preset("t5-tiny"),
        checkpoint,
        CharVocabulary(),
        prompts(),
        str(tmp_path),
        generation_config(),
        Partitioner(create_mesh(MeshConfig())),
        log=lambda line: None,
    )
    assert resumed["shards_written_now"] == 2
    assert _files(tmp_path) == _files(one)
