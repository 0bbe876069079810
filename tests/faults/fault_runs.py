"""Real runs of `python -m t5x_rationale.train` for the fault suite: tiny configs of each run
kind, starting, watching and killing them, and reading what they left on disk.

Every run is a subprocess on one CPU device. The processes share a persistent compilation
cache (`JAX_COMPILATION_CACHE_DIR`), so a restart spends its time running, not compiling;
a cached executable is the same program, so results stay bitwise comparable.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
STEPS, SAVE_EVERY = 16, 4
# QCRD's trial runs fewer steps (it is in the test command): 8 still cover two saves, three
# sampling rounds, discriminator steps and a ring that wraps.
STEPS_OF = {"qcrd": 8}


def steps_of(kind: str) -> int:
    return STEPS_OF.get(kind, STEPS)


_COMMON = [
    f"--gin.TRAIN_STEPS={STEPS}",
    f"--gin.train.save_every={SAVE_EVERY}",
    "--gin.train.log_every=1",
    "--gin.train.measure_mfu=False",
    "--gin.OptimizerConfig.warmup_steps=2",
]
_TINY_T5 = [
    "--gin.INPUT_LENGTH=32",
    "--gin.TARGET_LENGTH=32",
    "--gin.train.batch_size=8",
]
_TEACHER = [  # the student's own shape, so a short run of the plain kind is a teacher
    "--gin.teacher/model_config.emb_dim=128",
    "--gin.teacher/model_config.head_dim=32",
    "--gin.teacher/model_config.mlp_dim=512",
    "--gin.teacher/model_config.num_encoder_layers=3",
    "--gin.teacher/model_config.num_decoder_layers=3",
]
RUN_KINDS = {
    "plain": ["--gin_file=runs/quickstart.gin", *_TINY_T5],
    "kd": ["--gin_file=runs/distill_kd.gin", *_TINY_T5, *_TEACHER],
    "qcrd": [
        "--gin_file=runs/qcrd.gin",
        *_TINY_T5,
        "--gin.QcrdSettings.lag=2",
        "--gin.QcrdSettings.sample_every=3",
        "--gin.QcrdSettings.discriminator_every=2",
        "--gin.QcrdSettings.discriminator_pretrain_steps=2",
    ],
    "quiet_star": [
        "--gin_file=runs/quiet_star.gin",
        "--gin.LENGTH=32",
        "--gin.train.batch_size=4",
    ],
}


def env(cache_dir: str | None = None, devices: int = 1) -> dict:
    e = dict(os.environ)
    e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    e["JAX_PLATFORMS"] = "cpu"
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    if cache_dir:
        e["JAX_COMPILATION_CACHE_DIR"] = cache_dir
        e["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        e["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
    return e


def train_cmd(kind: str, run_dir, *extra: str, teacher=None) -> list[str]:
    flags = [*RUN_KINDS[kind], *_COMMON, f"--gin.RUN_DIR='{run_dir}'"]
    flags.append(f"--gin.TRAIN_STEPS={steps_of(kind)}")
    if kind == "kd":
        flags.append(f"--gin.TEACHER_CHECKPOINT='{teacher}'")
    return [sys.executable, "-m", "t5x_rationale.train", *flags, *extra]


def run(cmd, environment, timeout=400, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=timeout, **kw
    )


def run_ok(cmd, environment, timeout=400) -> subprocess.CompletedProcess:
    done = run(cmd, environment, timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


class Watched:
    """A started run whose output is collected in the background (so the pipe never fills)."""

    def __init__(self, cmd, environment, **kw):
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            **kw,
        )
        self.chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for chunk in iter(lambda: self.proc.stdout.read1(4096), b""):
            self.chunks.append(chunk)

    @property
    def output(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def signal(self, signum: int) -> None:
        if self.running():
            self.proc.send_signal(signum)

    def wait(self, timeout: float = 400) -> int:
        code = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return code


def wait_until(condition, watched: Watched, timeout: float = 400, poll: float = 0.002) -> bool:
    """Polls `condition()` until true (True) or the run ends first (False)."""
    deadline = time.time() + timeout
    while not condition():
        if not watched.running():
            return False
        assert time.time() < deadline, watched.output[-3000:]
        time.sleep(poll)
    return True


def logged_steps(run_dir) -> int:
    try:
        with open(os.path.join(run_dir, "metrics.jsonl"), "rb") as f:
            return f.read().count(b"\n")
    except FileNotFoundError:
        return 0


def saving_now(run_dir) -> bool:
    return bool(glob.glob(os.path.join(run_dir, "checkpoints", "*.orbax-checkpoint-tmp*")))


def complete_steps(run_dir) -> list[int]:
    names = os.listdir(os.path.join(run_dir, "checkpoints")) if _has_checkpoints(run_dir) else []
    return sorted(int(n) for n in names if n.isdigit())


def _has_checkpoints(run_dir) -> bool:
    return os.path.isdir(os.path.join(run_dir, "checkpoints"))


def resumed_from(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.startswith("train: starting from ")]
    assert len(lines) == 1, output[-3000:]
    return lines[0]


def losses(run_dir) -> dict[int, float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    steps = [r["step"] for r in rows]
    assert steps == sorted(set(steps)), f"duplicate or unordered rows: {steps}"
    return {r["step"]: r["loss"] for r in rows}


def saved_state(run_dir, step: int) -> dict[str, np.ndarray]:
    """Every leaf of a saved train state (params and optimizer) as NumPy, by path."""
    import orbax.checkpoint as ocp

    path = os.path.join(run_dir, "checkpoints", str(step), "state")
    with ocp.PyTreeCheckpointer() as checkpointer:
        tree = checkpointer.restore(path)
    flat = _flatten(tree)
    with open(os.path.join(run_dir, "checkpoints", str(step), "data", "metadata")) as f:
        flat["data position"] = np.frombuffer(f.read().encode(), np.uint8)
    return flat


def _flatten(tree, prefix="") -> dict[str, np.ndarray]:
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}/{key}"))
        return out
    if isinstance(tree, (list, tuple)):
        return _flatten({str(i): v for i, v in enumerate(tree)}, prefix)
    return {prefix: np.asarray(tree)}


def assert_same_state(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert got[key].tobytes() == value.tobytes(), f"{key} differs"


def sigkill(watched: Watched) -> bool:
    """SIGKILLs the run; False if it had already ended (the kill did not land)."""
    if not watched.running():
        return False
    watched.signal(signal.SIGKILL)
    return watched.wait(60) == -signal.SIGKILL


def once(shared_dir, name: str, make) -> Path:
    """`make(path)` once per session for `name`, across pytest-xdist workers; returns `path`."""
    path = shared_dir / name
    with open(shared_dir / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared_dir / f"{name}.done").exists():
            make(path)
            (shared_dir / f"{name}.done").touch()
    return path
