"""Command-line gin for the entry points, T5X style.

    python -m t5x_rationale.train --gin_file=runs/quickstart.gin --gin.train.num_steps=100

`--gin_file` repeats (later files win), `--gin.KEY=VALUE` repeats (applied after every
file), `--gin_search_paths=a,b` adds directories searched for files and their `include`s;
the repo's `configs/` is always searched last. A gin `import my_tasks` line imports a user
module (e.g. one that registers seqio tasks) from the working directory.

Multi-host: `--coordinator_address=HOST:PORT --num_processes=N --process_id=I` initialise
`jax.distributed` before anything touches a device (CPU processes talk over gloo). On TPU
pods and SLURM/GPU clusters `--distributed` alone lets JAX detect the cluster.
`--init_timeout_s` (300) bounds the wait for every process to join, `--heartbeat_timeout_s`
(60) the time a dead or hung process goes unnoticed before every other one stops.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Callable, Sequence

import gin

import t5x_rationale.gin_configurables  # noqa: F401  (library objects gin files name)
from t5x_rationale.runtime.checkpoints import CheckpointWriteError, DamagedCheckpointError
from t5x_rationale.runtime.run_lock import RunDirectoryInUseError
from t5x_rationale.runtime.training_loop import PREEMPTED_EXIT_CODE, Preempted

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
# Every entry point's gin name. A gin file may bind several (a run file binds `train` and
# `evaluate`); bindings of the ones not running are skipped, any other unknown name is an error.
ENTRY_POINTS = (
    "train",
    "evaluate",
    "infer",
    "inspect_thoughts",
    "evaluate_thoughts",
    "star",
    "annotate",
)
_REGISTERED: dict[str, Callable] = {}


class GinConfigError(ValueError):
    """A gin file or binding could not be parsed or bound; the message says which."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """Splits `--gin_file`, `--gin_search_paths` and `--gin.KEY=VALUE` flags."""
    parser = argparse.ArgumentParser(allow_abbrev=False)
    parser.add_argument("--gin_file", action="append", default=[], help="gin file (repeatable)")
    parser.add_argument("--gin_search_paths", default="", help="comma-separated directories")
    parser.add_argument("--coordinator_address", help="jax.distributed coordinator HOST:PORT")
    parser.add_argument("--num_processes", type=int, help="jax.distributed process count")
    parser.add_argument("--process_id", type=int, help="this process's index")
    parser.add_argument(
        "--distributed", action="store_true", help="auto-detected jax.distributed cluster"
    )
    parser.add_argument(
        "--init_timeout_s", type=int, default=300, help="wait this long for every process"
    )
    parser.add_argument(
        "--heartbeat_timeout_s",
        type=int,
        default=60,
        help="a process silent this long (killed, hung, host gone) ends the job on every host",
    )
    args, rest = parser.parse_known_args(argv)
    args.gin_bindings = []
    for flag in rest:
        if not flag.startswith("--gin.") or "=" not in flag:
            raise GinConfigError(
                f"unknown flag {flag!r}; expected --gin_file=F, --gin_search_paths=D "
                "or --gin.KEY=VALUE"
            )
        key, value = flag[len("--gin.") :].split("=", 1)
        args.gin_bindings.append(f"{key} = {value}")
    return args


def _resolve(name: str, search_paths: list[str]) -> str:
    if os.path.isfile(name):
        return name
    for directory in search_paths:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate):
            return candidate
    raise GinConfigError(
        f"gin file {name!r} not found in the working directory or in {search_paths}"
    )


class _QuietSearchMisses(logging.Filter):
    """gin logs an ERROR for every search-path prefix an `include` is not under; drop those."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg != "Path not found: %s"


def _tolerate_module_like_directories() -> None:
    """gin's Python-path reader crashes (TypeError) on `include 'runs/x.gin'` when the working
    directory has a plain `runs/` folder (a namespace package); treat that as "not found"."""

    def safe(check):
        def exists(path):
            try:
                return check(path)
            except (TypeError, ValueError, ImportError):
                return False

        exists.wrapped = True
        return exists

    readers = gin.config._FILE_READERS  # gin offers no public way to wrap a registered reader
    readers[:] = [(r, c if getattr(c, "wrapped", False) else safe(c)) for r, c in readers]


def parse_config(
    gin_files: Sequence[str], bindings: Sequence[str], search_paths: Sequence[str] = ()
) -> None:
    """Parses files then bindings into gin's global config; errors name the file or binding."""
    paths = [p for p in search_paths if p] + [str(CONFIGS_DIR)]
    for path in paths:
        gin.add_config_file_search_path(path)
    files = [_resolve(f, paths) for f in gin_files]
    _tolerate_module_like_directories()
    quiet = _QuietSearchMisses()
    logging.getLogger().addFilter(quiet)
    try:
        gin.parse_config_files_and_bindings(
            files, [], finalize_config=False, skip_unknown=_unregistered_entry_points()
        )
    except Exception as e:  # gin raises ValueError/SyntaxError/ImportError with file + line
        raise GinConfigError(f"in gin files {files}: {e}") from e
    finally:
        logging.getLogger().removeFilter(quiet)
    for binding in bindings:
        try:
            gin.parse_config(binding, skip_unknown=_unregistered_entry_points())
        except Exception as e:
            raise GinConfigError(
                f"bad gin binding --gin.{binding.replace(' = ', '=', 1)}: {e}"
            ) from e
    gin.finalize()


def initialize_distributed(args: argparse.Namespace) -> None:
    """Starts jax.distributed when asked to (explicit coordinator or auto-detection)."""
    import jax

    if args.coordinator_address:
        if args.num_processes is None or args.process_id is None:
            raise GinConfigError("--coordinator_address needs --num_processes and --process_id")
        # CPU collectives (only the CPU backend reads this setting).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            args.coordinator_address, args.num_processes, args.process_id, **_timeouts(args)
        )
    elif args.distributed:
        jax.distributed.initialize(**_timeouts(args))


def _timeouts(args: argparse.Namespace) -> dict:
    return dict(
        initialization_timeout=args.init_timeout_s,
        heartbeat_timeout_seconds=args.heartbeat_timeout_s,
    )


def register(entry_point: Callable) -> Callable:
    """The gin-bound version of an entry point function, registered once per process under
    its own name (one of `ENTRY_POINTS`)."""
    name = entry_point.__name__
    if name not in ENTRY_POINTS:
        raise ValueError(f"{name!r} is not an entry point; expected one of {ENTRY_POINTS}")
    if name not in _REGISTERED:
        with gin.unlock_config():  # an earlier run in this process may have locked it
            _REGISTERED[name] = gin.external_configurable(entry_point, name)
    return _REGISTERED[name]


def _unregistered_entry_points() -> list[str]:
    return [name for name in ENTRY_POINTS if name not in _REGISTERED]


# Errors the user fixes (a file, a binding, a setting, the run directory): one line, exit 2.
# GinConfigError, DataFormatError, CheckpointMismatchError and ConfigChangedError are
# ValueErrors.
USER_ERRORS = (ValueError, FileNotFoundError, RunDirectoryInUseError, DamagedCheckpointError)
USER_ERROR_EXIT_CODE = 2
# EX_IOERR: a checkpoint could not be written (full disk, quota); the earlier ones are intact.
WRITE_ERROR_EXIT_CODE = 74


def main(entry_point: Callable, argv: Sequence[str] | None = None) -> object:
    """`run` for a command line: start-up noise of absl and SentencePiece hidden (TensorFlow's
    is, by `data.quiet_stderr`), a user error printed as one line with exit code 2
    (`--verbose`: the traceback and the noise), a preempted run's line printed with exit code
    `PREEMPTED_EXIT_CODE`, a failed checkpoint write as one line with exit code 74."""
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = "--verbose" in argv
    argv = [a for a in argv if a != "--verbose"]
    if not verbose:
        quiet_libraries()
    name = entry_point.__name__
    try:
        return run(entry_point, argv)
    except Preempted as e:
        print(f"{name}: {e}", file=sys.stderr, flush=True)
        sys.exit(PREEMPTED_EXIT_CODE)
    except CheckpointWriteError as e:
        if verbose:
            raise
        print(f"{name}: error: {e}", file=sys.stderr, flush=True)
        sys.exit(WRITE_ERROR_EXIT_CODE)
    except USER_ERRORS as e:
        if verbose:
            raise
        print(f"{name}: error: {e}\n(--verbose shows the traceback)", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT_CODE)


def quiet_libraries() -> None:
    """Hides the libraries' noise: absl's Python logging (seqio's) below ERROR, SentencePiece's
    C++ INFO lines, and the trail of a failed asynchronous checkpoint write (orbax's error
    records with their tracebacks, asyncio's reports of its writer tasks' unretrieved
    errors, and the "Event loop is closed" reports of its writer threads); `Checkpointer`
    reports that failure itself as one `CheckpointWriteError`."""
    import sentencepiece

    absl_logger = logging.getLogger("absl")
    absl_logger.setLevel(logging.ERROR)
    absl_logger.addFilter(_not_from_orbax)
    logging.getLogger("asyncio").addFilter(_not_an_orbax_writer_error)
    sentencepiece.set_min_log_level(1)
    sys.unraisablehook = _drop_closed_event_loop_reports(sys.unraisablehook)


def _not_from_orbax(record: logging.LogRecord) -> bool:
    return f"{os.sep}orbax{os.sep}" not in record.pathname


def _not_an_orbax_writer_error(record: logging.LogRecord) -> bool:
    """False for asyncio's "Task/Future exception was never retrieved" of an orbax writer.

    A task's message names its coroutine's orbax file; a plain or gathering future's names
    none, so its exception's traceback is searched for an orbax frame."""
    message = record.getMessage()
    if "never retrieved" not in message:
        return True
    if f"{os.sep}orbax{os.sep}" in message:
        return False
    error = record.exc_info[1] if record.exc_info else None
    return not (error is not None and _raised_in_orbax(error))


def _raised_in_orbax(error: BaseException) -> bool:
    frames = traceback.extract_tb(error.__traceback__)
    return any(f"{os.sep}orbax{os.sep}" in frame.filename for frame in frames)


def _drop_closed_event_loop_reports(hook: Callable) -> Callable:
    def filtered(unraisable) -> None:
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        hook(unraisable)

    return filtered


def run(entry_point: Callable, argv: Sequence[str] | None = None) -> object:
    """Parses the command line into gin, then calls the gin-bound `entry_point`."""
    bound = register(entry_point)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    initialize_distributed(args)
    if not args.gin_file:
        raise GinConfigError("no --gin_file given (e.g. --gin_file=runs/quickstart.gin)")
    gin.clear_config()
    parse_config(args.gin_file, args.gin_bindings, args.gin_search_paths.split(","))
    return bound()
