"""One run per run directory: an exclusive lock, and a resumed run's config checked.

Two processes writing one run directory interleave `metrics.jsonl`, overwrite each other's
checkpoints and leave a `config.gin` that describes neither, all silently. `RunLock` takes an
OS lock on `run_dir/.lock-<process index>` (`flock`: the OS releases it when the holder
exits or is killed, so a crashed run never leaves it stuck) and a second holder is refused
with a message naming the first. `check_config_unchanged` stops a restart whose gin config
differs from the one the run's checkpoints were trained with.
"""

from __future__ import annotations

import difflib
import fcntl
import os
import re
import socket
import time
from typing import Optional

import jax


class RunDirectoryInUseError(RuntimeError):
    """Another live process holds the run directory."""


class ConfigChangedError(ValueError):
    """A restart's config differs from the config the run's checkpoints were trained with."""


class RunLock:
    """Exclusive lock on a run directory for this process index (a context manager)."""

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, f".lock-{jax.process_index()}")
        self._fd: Optional[int] = None

    def __enter__(self) -> "RunLock":
        os.makedirs(self.run_dir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 1000).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise RunDirectoryInUseError(
                f"run directory {self.run_dir} is in use by {holder}; two runs in one "
                "directory would mix their metrics and checkpoints (stop that run or choose "
                "another run_dir)"
            ) from None
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%c')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _comparable(config_gin: str) -> list[str]:
    """The config's binding lines without comments and the step count (`train.num_steps`
    and the macro it names), which a resumed run may change."""
    lines = [ln for ln in config_gin.splitlines() if ln.strip() and not ln.startswith("#")]
    macro = next(
        (m.group(1) for ln in lines if (m := re.match(r"train\.num_steps\s*=\s*%(\w+)", ln))),
        None,
    )
    skip = re.compile(rf"(train\.num_steps|{macro})\s*=" if macro else r"train\.num_steps\s*=")
    return [ln for ln in lines if not skip.match(ln)]


def check_config_unchanged(
    run_dir: str, config_gin: str, *, step: int, allow_change: bool = False
) -> None:
    """Raises `ConfigChangedError` with a diff when `run_dir/config.gin` (the config of the
    checkpoints being resumed at `step`) differs from `config_gin` in anything but the step
    count. With `allow_change`, the old config is kept as `config-before-step-<step>.gin`."""
    path = os.path.join(run_dir, "config.gin")
    if not os.path.isfile(path):
        return
    with open(path, encoding="utf-8") as f:
        saved = f.read()
    old, new = _comparable(saved), _comparable(config_gin)
    if old == new:
        return
    if allow_change:
        if jax.process_index() == 0:
            os.replace(path, os.path.join(run_dir, f"config-before-step-{step}.gin"))
        return
    diff = "\n".join(
        difflib.unified_diff(old, new, "checkpoints' config.gin", "this run", n=0, lineterm="")
    )
    raise ConfigChangedError(
        f"{path}: the checkpoints at step {step} were trained with another config; resuming "
        f"would continue them under settings they were not trained with:\n{diff}\n"
        "Pass --gin.train.allow_config_change=True to resume anyway (the old config is kept), "
        "or use a new run_dir."
    )
