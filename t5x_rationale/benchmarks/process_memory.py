"""The host memory of a child process over its life: peak resident set, and its anonymous and
file-backed parts, from /proc (Linux).

`VmHWM` is the kernel's exact peak of the whole resident set since the process's exec, read
until it exits. (Not `ru_maxrss` from `wait4`: at exec the kernel folds the high-water mark of
the memory the child was forked from, ours, into it.) It counts file pages the process has
memory-mapped and touched (`RssFile`: the safetensors pages an import reads through
`np.memmap`; page cache the kernel can drop at will) as well as its own memory (`RssAnon`:
heap, arrays, and on a CPU backend the "device" buffers). The kernel keeps no peak of each
part, so those are polled.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time

FIELDS = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")


def read_status(pid: int | str = "self") -> dict[str, int]:
    """The memory fields of /proc/PID/status, in bytes ({} once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        key, _, value = line.partition(":")
        if key in FIELDS:
            out[key] = int(value.split()[0]) * 1024  # reported in kB
    return out


@dataclasses.dataclass
class MemoryPeaks:
    """Peaks over a process's life, in bytes; `*_at_rss_peak` are the parts at the polled
    sample with the largest VmRSS."""

    rss: int = 0  # VmHWM: exact, up to the last sample before the exit
    anon: int = 0  # polled peak of RssAnon
    file: int = 0  # polled peak of RssFile
    anon_at_rss_peak: int = 0
    file_at_rss_peak: int = 0
    polled_rss: int = 0
    samples: int = 0

    def add(self, status: dict[str, int]) -> None:
        if not status:
            return
        self.samples += 1
        self.rss = max(self.rss, status.get("VmHWM", 0))
        self.anon = max(self.anon, status.get("RssAnon", 0))
        self.file = max(self.file, status.get("RssFile", 0))
        if status.get("VmRSS", 0) > self.polled_rss:
            self.polled_rss = status["VmRSS"]
            self.anon_at_rss_peak = status.get("RssAnon", 0)
            self.file_at_rss_peak = status.get("RssFile", 0)


@dataclasses.dataclass
class ChildRun:
    returncode: int
    wall_s: float
    peaks: MemoryPeaks
    stdout: str
    stderr: str


def run_measured(
    argv: list[str], *, log_prefix: str, env: dict | None = None, poll_s: float = 0.005
) -> ChildRun:
    """Runs `argv` to completion, polling its memory; output goes to `log_prefix`.out/.err."""
    peaks = MemoryPeaks()
    with open(log_prefix + ".out", "w") as out, open(log_prefix + ".err", "w") as err:
        start = time.perf_counter()
        child = subprocess.Popen(argv, stdout=out, stderr=err, env=env)
        while True:
            done, status = os.waitpid(child.pid, os.WNOHANG)
            if done:
                break
            peaks.add(read_status(child.pid))
            time.sleep(poll_s)
        wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    with open(log_prefix + ".out") as out, open(log_prefix + ".err") as err:
        return ChildRun(child.returncode, wall, peaks, out.read(), err.read())


BASELINE = (
    "import jax, jax.numpy as jnp\n"
    "import t5x_rationale.interop.importer, t5x_rationale.interop.checkpoint_files\n"
    "jnp.zeros(8).block_until_ready()\n"
)


def baseline_rss(log_prefix: str, env: dict | None = None) -> ChildRun:
    """A process that imports jax and the import's modules and starts the backend, no more."""
    return run_measured([sys.executable, "-c", BASELINE], log_prefix=log_prefix, env=env)
