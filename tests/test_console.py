"""The entry points' console contract: a user error is one line and exit code 2 (`--verbose`
shows the traceback), a preempted run one line and exit code 75, and the trail of a failed
asynchronous checkpoint write (asyncio's unretrieved orbax errors) is hidden."""

import asyncio
import logging
import os

import pytest

from t5x_rationale import gin_launch
from t5x_rationale import train as train_mod
from t5x_rationale.runtime.training_loop import PREEMPTED_EXIT_CODE, Preempted

BAD_BATCH = ["--gin_file=runs/quickstart.gin", "--gin.train.batch_size='eight'"]


def test_a_user_error_is_one_message_and_exit_code_2(capsys):
    with pytest.raises(SystemExit) as exited:
        gin_launch.main(train_mod.train, BAD_BATCH)
    assert exited.value.code == gin_launch.USER_ERROR_EXIT_CODE == 2
    err = capsys.readouterr().err
    assert err.startswith("train: error: batch_size must be a positive integer, got 'eight'")
    assert "Traceback" not in err and "--verbose" in err


def test_verbose_shows_the_traceback():
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        gin_launch.main(train_mod.train, BAD_BATCH + ["--verbose"])


def test_a_preempted_run_prints_one_line_and_exits_75(capsys, monkeypatch):
    def preempted(entry_point, argv):
        raise Preempted("stopped at step 7 after saving a checkpoint in /x/checkpoints")

    monkeypatch.setattr(gin_launch, "run", preempted)
    with pytest.raises(SystemExit) as exited:
        gin_launch.main(train_mod.train, ["--gin_file=runs/quickstart.gin"])
    assert exited.value.code == PREEMPTED_EXIT_CODE == 75
    assert capsys.readouterr().err == (
        "train: stopped at step 7 after saving a checkpoint in /x/checkpoints\n"
    )


def test_infer_input_that_is_not_utf8_names_file_and_line(tmp_path):
    from t5x_rationale.data.vocab import get_vocabulary
    from t5x_rationale.infer import read_input_file

    path = tmp_path / "questions.jsonl"
    path.write_bytes(b'{"input": "fine"}\n{"input": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=f"{path}:2: not valid UTF-8"):
        read_input_file(str(path), get_vocabulary(), "")


def test_stderr_filter_drops_only_the_notices_at_the_file_descriptor(capfd):
    from t5x_rationale.data.quiet_stderr import is_tf_startup_notice, stderr_without

    notice = "I0000 00:00:1796544910.341383   24730 port.cc:153] oneDNN custom operations are on.\n"
    with stderr_without(is_tf_startup_notice):
        os.write(2, notice.encode())  # as C++ writes it: below Python's sys.stderr
        os.write(2, b"E0000 00:00:1796544910.3 24730 other.cc:1] a real error\n")
    assert capfd.readouterr().err == "E0000 00:00:1796544910.3 24730 other.cc:1] a real error\n"

    with pytest.raises(ImportError), stderr_without(is_tf_startup_notice):
        os.write(2, notice.encode())
        raise ImportError("a failed import shows everything it printed")
    assert capfd.readouterr().err == notice


def _error_raised_in(filename: str) -> ValueError:
    """A ValueError whose traceback's frame lies in `filename` (compiled under that name)."""
    namespace: dict = {}
    source = "def fail():\n    raise ValueError('write failed')\n"
    exec(compile(source, filename, "exec"), namespace)
    try:
        namespace["fail"]()
    except ValueError as e:
        return e
    raise AssertionError("fail() did not raise")


@pytest.mark.parametrize("kind", ["Future", "_GatheringFuture"])
def test_unretrieved_orbax_writer_errors_are_hidden_and_others_kept(kind, caplog):
    """asyncio's own handler reports an unretrieved future's error; the launch filter hides
    it when the error was raised in an orbax file (a future's message names no code, only
    its traceback does) and keeps every other report."""
    asyncio_logger = logging.getLogger("asyncio")
    asyncio_logger.addFilter(gin_launch._not_an_orbax_writer_error)
    loop = asyncio.new_event_loop()
    try:
        for where in (f"{os.sep}site{os.sep}orbax{os.sep}serialization.py", "/site/mine.py"):
            loop.call_exception_handler(
                {
                    "message": f"{kind} exception was never retrieved",
                    "exception": _error_raised_in(where),
                }
            )
    finally:
        loop.close()
        asyncio_logger.removeFilter(gin_launch._not_an_orbax_writer_error)
    reports = [r for r in caplog.records if r.name == "asyncio"]
    assert len(reports) == 1 and "mine.py" in reports[0].exc_text
