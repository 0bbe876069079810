"""The fault suite: real runs killed, preempted and starved of disk (see fault_runs.py).

Trials marked `full_faults` are left out of the test command (pyproject's addopts) to keep
CI short; `pytest tests/faults -m "slow or full_faults"` runs the full count.
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory):
    """A directory every pytest-xdist worker of this session sees (for shared references)."""
    path = tmp_path_factory.getbasetemp().parent / "faults-shared"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def compile_cache(shared_dir):
    return str(shared_dir / "jax-cache")
