"""A damaged newest checkpoint: named with its reason, moved aside (never deleted), and the
run resumes from the previous one; `strict` stops instead."""

import glob
import os
import shutil

import pytest
from checkpoint_setup import EXAMPLE, assert_bitwise_equal, no_init, saved_checkpoints

from t5x_rationale.runtime.checkpoints import Checkpointer, DamagedCheckpointError


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return saved_checkpoints(tmp_path_factory)


def _garbage(path):
    with open(path, "w") as f:
        f.write("{not json")


def _truncate_arrays(step_dir):
    files = [p for p in glob.glob(f"{step_dir}/state/**/d/*", recursive=True) if os.path.isfile(p)]
    assert files
    for path in files:
        os.truncate(path, os.path.getsize(path) // 2)


DAMAGE = {
    "garbage state metadata": lambda d: _garbage(f"{d}/state/_METADATA"),
    "garbage signature": lambda d: _garbage(f"{d}/signature/metadata"),
    "missing data item": lambda d: shutil.rmtree(f"{d}/data"),
    "missing manifest": lambda d: os.remove(f"{d}/state/manifest.ocdbt"),
    "truncated arrays": _truncate_arrays,
}


def _run_with_damaged_newest(saved, root, damage):
    """A run directory holding step 2 (intact) and step 3 (damaged)."""
    run = root / "run"
    shutil.copytree(saved.run_a, run)
    shutil.copytree(saved.run_b / "3", run / "3")
    DAMAGE[damage](run / "3")
    return run


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_falls_back_to_the_previous_checkpoint(saved, tmp_path, capsys, damage):
    run = _run_with_damaged_newest(saved, tmp_path, damage)
    checkpointer = Checkpointer(str(run))
    state, data_state, source = checkpointer.restore_or_init(
        saved.trainer.abstract_state(EXAMPLE), no_init
    )
    assert source == f"{run}/2" and data_state == saved.data2
    assert_bitwise_equal(state, saved.host2)
    printed = capsys.readouterr().out
    assert f"checkpoint {run}/3 cannot be read (" in printed and f"{run}/damaged-3" in printed
    assert (run / "damaged-3").is_dir() and not (run / "3").exists()
    assert checkpointer.all_steps() == [2]
    checkpointer.close()


def test_strict_restore_stops_and_keeps_everything(saved, tmp_path):
    run = _run_with_damaged_newest(saved, tmp_path, "missing data item")
    checkpointer = Checkpointer(str(run))
    with pytest.raises(DamagedCheckpointError, match=f"checkpoint {run}/3 cannot be read"):
        checkpointer.restore_or_init(saved.trainer.abstract_state(EXAMPLE), no_init, strict=True)
    assert sorted(checkpointer.all_steps()) == [2, 3] and (run / "3").is_dir()
    checkpointer.close()
