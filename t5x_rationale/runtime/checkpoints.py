"""Orbax checkpoints of the train state, the data-iterator position and a model signature.

Each step directory holds three items: `state` (the sharded TrainState, restorable onto any
mesh), `data` (JSON position of the input pipeline) and `signature` (JSON path -> shape and
dtype of every state leaf, checked before restoring so a checkpoint of another model fails
with a readable diff). Orbax writes into a temporary directory and renames it when the
save is complete, so a partially written checkpoint is never listed or restored.

Restore order (`restore_or_init`): latest readable step in the run directory (a damaged one
is moved aside as `damaged-<step>` and the next older one tried), then an explicit
checkpoint path, then a fresh init.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable, Optional, Sequence

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointMismatchError(ValueError):
    """The checkpoint holds a different model/optimizer than the one being restored."""


class DamagedCheckpointError(RuntimeError):
    """A checkpoint of the run cannot be read (and `strict_restore` forbids falling back)."""


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (full disk, quota, permissions): the run stops."""


def state_signature(abstract_state: Any) -> dict[str, list]:
    """path -> [shape, dtype] of every leaf of a (possibly abstract) state."""
    return {
        jax.tree_util.keystr(path): [list(leaf.shape), str(leaf.dtype)]
        for path, leaf in jax.tree_util.tree_flatten_with_path(abstract_state)[0]
    }


def _describe_mismatch(saved: dict, expected: dict, limit: int = 12) -> str:
    params_first = lambda k: (not k.startswith(".params"), k)  # noqa: E731
    missing = sorted(set(expected) - set(saved), key=params_first)
    unexpected = sorted(set(saved) - set(expected), key=params_first)
    changed = sorted(
        (k for k in set(saved) & set(expected) if saved[k] != expected[k]), key=params_first
    )
    lines = [f"  expected but not in checkpoint: {k} {expected[k]}" for k in missing[:limit]]
    lines += [f"  in checkpoint but not expected: {k} {saved[k]}" for k in unexpected[:limit]]
    lines += [
        f"  {k}: checkpoint has {saved[k]}, model expects {expected[k]}" for k in changed[:limit]
    ]
    counts = (
        f"{len(missing)} missing, {len(unexpected)} unexpected, "
        f"{len(changed)} with other shape/dtype"
    )
    return counts + "\n" + "\n".join(lines)


class Checkpointer:
    """Saves and restores train state + data position in one run directory.

    Args:
      directory: the run's checkpoint directory (created if absent).
      keep: how many most recent checkpoints to keep (None keeps all).
      save_every: save when `step % save_every == 0` (forced saves ignore it).
      async_save: write in a background thread; `wait()` before reading or exiting.
      save_concurrent_bytes: the most bytes of the state being written at once (orbax's
        `save_concurrent_gb`, 96 GB by default); must exceed the largest array. Orbax hands
        every array to TensorStore at once otherwise, each with its write buffers.
    """

    def __init__(
        self,
        directory: str,
        *,
        keep: Optional[int] = 3,
        save_every: int = 1000,
        async_save: bool = True,
        save_concurrent_bytes: Optional[int] = None,
    ):
        if save_every < 1:
            raise ValueError(f"save_every must be >= 1, got {save_every}")
        self.directory = os.path.abspath(directory)
        self.save_every = save_every
        self._manager = self._make_manager(
            self.directory,
            keep=keep,
            async_save=async_save,
            save_concurrent_bytes=save_concurrent_bytes,
        )
        self._pending: Optional[int] = None  # the step whose save may still be running

    @staticmethod
    def _make_manager(directory, *, keep, async_save, read_only=False, save_concurrent_bytes=None):
        # The save interval is decided in `save`; orbax's own policy would also save the
        # first step of a fresh directory.
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            save_interval_steps=1,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=not read_only,
            read_only=read_only,
            create=not read_only,
        )
        if save_concurrent_bytes is None:
            return ocp.CheckpointManager(
                directory, options=options, item_names=("state", "data", "signature")
            )
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        state = ocp.StandardCheckpointHandler(save_concurrent_gb=save_concurrent_bytes / 1e9)
        for name, save, restore, handler in (
            ("state", ocp.args.StandardSave, ocp.args.StandardRestore, state),
            ("data", ocp.args.JsonSave, ocp.args.JsonRestore, ocp.JsonCheckpointHandler()),
            ("signature", ocp.args.JsonSave, ocp.args.JsonRestore, ocp.JsonCheckpointHandler()),
        ):
            registry.add(name, save, handler)
            registry.add(name, restore, handler)
        return ocp.CheckpointManager(directory, options=options, handler_registry=registry)

    # ---------------------------------------------------------------------- save

    def save(
        self, step: int, state: Any, data_state: Optional[dict] = None, *, force: bool = False
    ) -> bool:
        """Saves if `step` is due (or `force`); returns whether a save was started.

        Raises `CheckpointWriteError` if this save, or the previous one, failed to write.
        """
        if not force and step % self.save_every:
            return False
        self.check_written()
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            signature=ocp.args.JsonSave(state_signature(state)),
        )
        self._pending = step
        try:
            started = self._manager.save(step, args=args, force=True)
        except Exception as e:  # the synchronous part of the write failed
            raise self._write_error(e) from e
        return started

    def check_written(self) -> None:
        """Raises `CheckpointWriteError` if the last save has finished without its checkpoint.

        Cheap while the save is still running (the training loop calls it every step), so a
        failed asynchronous write stops the run within a step or two of failing.
        """
        if self._pending is None or self._manager.is_saving_in_progress():
            return
        self.wait()

    def _write_error(self, error: Exception) -> CheckpointWriteError:
        step, self._pending = self._pending, None
        # A TensorStore message ends with the OS error after the path that failed.
        reason = str(error).strip().splitlines()[0].rsplit('": ', 1)[-1][:300]
        intact = [s for s in self._manager.all_steps() if s != step]
        return CheckpointWriteError(
            f"the checkpoint of step {step} could not be written in {self.directory} "
            f"({reason}); the run stops. Intact checkpoints: {intact or 'none'}. Free space "
            "(or fix the directory), then run the same command to resume."
        )

    def reached_preemption(self, step: int) -> bool:
        """True on every host once a preemption notice has reached the job (multi-host safe)."""
        return self._manager.reached_preemption(step)

    def wait(self) -> None:
        """Waits for the running save; raises `CheckpointWriteError` if it did not complete."""
        try:
            self._manager.wait_until_finished()
        except Exception as e:
            raise self._write_error(e) from e
        self._pending = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._manager.close()

    @property
    def latest_step(self) -> Optional[int]:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self._manager.all_steps())

    # ------------------------------------------------------------------- restore

    def restore(self, step: int, abstract_state: Any, *, manager=None) -> tuple[Any, dict]:
        """Restores `step` onto the shardings carried by `abstract_state`."""
        manager = manager or self._manager
        saved = manager.restore(step, args=ocp.args.Composite(signature=ocp.args.JsonRestore()))[
            "signature"
        ]
        expected = state_signature(abstract_state)
        if saved != expected:
            raise CheckpointMismatchError(
                f"checkpoint {manager.directory}/{step} does not match the model being restored: "
                + _describe_mismatch(saved, expected)
            )
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["data"] or {})

    def restore_or_init(
        self,
        abstract_state: Any,
        init_fn: Callable[[], Any],
        *,
        explicit_path: Optional[str] = None,
        strict: bool = False,
    ) -> tuple[Any, dict, str]:
        """(state, data_state, source): latest in this run, else `explicit_path`, else `init_fn()`.

        `explicit_path` is a step directory of any run (`.../checkpoints/1200`). A run's
        checkpoint that cannot be read is reported by step and reason and moved aside
        (`damaged-<step>`, never deleted), and the next older one is tried; with `strict`
        the first such checkpoint stops the run instead.
        """
        for step in sorted(self.all_steps(), reverse=True):
            try:
                state, data = self.restore(step, abstract_state)
            except CheckpointMismatchError:
                raise  # another model or optimizer: not damage, and no older one would fit
            except Exception as e:  # any other failure to read it is damage
                self._set_aside(step, e, strict)
                continue
            return state, data, f"{self.directory}/{step}"
        if explicit_path:
            return self._restore_explicit(explicit_path, abstract_state)
        return init_fn(), {}, "fresh init"

    def _set_aside(self, step: int, error: Exception, strict: bool) -> None:
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:300]}"
        path = os.path.join(self.directory, str(step))
        if strict:
            raise DamagedCheckpointError(
                f"checkpoint {path} cannot be read ({reason}); train.strict_restore is set, so "
                "the run stops (unset it to fall back to the previous checkpoint)"
            ) from error
        aside = os.path.join(self.directory, f"damaged-{step}")
        if jax.process_index() == 0 and os.path.isdir(path):
            os.replace(path, aside)
        self._manager.reload()
        message = (
            f"checkpoint {path} cannot be read ({reason}); moved to {aside}, trying the previous"
        )
        log.warning(message)
        print(f"WARNING: {message}", flush=True)

    def _restore_explicit(self, explicit_path: str, abstract_state: Any) -> tuple[Any, dict, str]:
        parent, step = _split_step_path(explicit_path)
        other = self._make_manager(parent, keep=None, async_save=False, read_only=True)
        try:
            if step not in other.all_steps():
                raise FileNotFoundError(
                    f"no complete checkpoint at {explicit_path} "
                    f"(complete steps in {parent}: {list(other.all_steps())})"
                )
            state, data = self.restore(step, abstract_state, manager=other)
        finally:
            other.close()
        return state, data, explicit_path


def restore_params(
    path: str, abstract_params: Any, *, optional: Sequence[str] = ()
) -> tuple[Any, int]:
    """(params, step) of a checkpoint, without its optimizer state (for evaluation and export).

    `path` is a run's checkpoint directory (its latest complete step is used) or one step
    directory (`.../checkpoints/1200`). Params land on the shardings in `abstract_params`.
    Top-level params named in `optional` may be missing from the checkpoint; the returned
    tree then lacks them (a plain LM's checkpoint restored into a Quiet-STaR model).
    """
    path = os.path.abspath(path.rstrip("/"))
    if re.fullmatch(r"\d+", os.path.basename(path)):
        directory, step = _split_step_path(path)
    else:
        directory, step = path, None
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    manager = Checkpointer._make_manager(directory, keep=None, async_save=False, read_only=True)
    try:
        steps = list(manager.all_steps())
        step = max(steps) if step is None and steps else step
        if step is None or step not in steps:
            raise FileNotFoundError(
                f"no complete checkpoint {'' if step is None else step} in {directory} "
                f"(complete steps: {steps})"
            )
        saved = manager.restore(step, args=ocp.args.Composite(signature=ocp.args.JsonRestore()))[
            "signature"
        ]
        mine = {k: v for k, v in saved.items() if k.startswith(".params")}
        absent = [n for n in optional if not any(k.startswith(f".params['{n}']") for k in mine)]
        abstract_params = {k: v for k, v in abstract_params.items() if k not in absent}
        expected = {".params" + k: v for k, v in state_signature(abstract_params).items()}
        if mine != expected:
            raise CheckpointMismatchError(
                f"checkpoint {directory}/{step} does not match the model: "
                + _describe_mismatch(mine, expected)
            )
        item = {"params": abstract_params}
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(
                    item=item,
                    restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                    partial_restore=True,
                )
            ),
        )
    finally:
        manager.close()
    return restored["state"]["params"], step


def _split_step_path(path: str) -> tuple[str, int]:
    path = os.path.abspath(path.rstrip("/"))
    base = os.path.basename(path)
    if not re.fullmatch(r"\d+", base):
        raise ValueError(f"checkpoint path {path!r} must end in a step directory such as .../1200")
    return os.path.dirname(path), int(base)
