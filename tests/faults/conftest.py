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
    """A directory of this session that all its pytest-xdist workers see (shared references)."""
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")  # the same in every worker of a session
    base = tmp_path_factory.getbasetemp()
    path = base.parent / f"faults-shared-{run_id}" if run_id else base / "faults-shared"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture(scope="session")
def compile_cache(shared_dir):
    return str(shared_dir / "jax-cache")
