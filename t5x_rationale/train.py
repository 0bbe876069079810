"""Training entry point (gin-bound, T5X style).

    python -m t5x_rationale.train --gin_file=runs/quickstart.gin [--gin.train.num_steps=100]

The run directory gets `config.gin`, `model-info.txt`, `checkpoints/`, `metrics.jsonl` and
`tensorboard/`. Running the same command again resumes from the latest checkpoint, with the
data stream continuing where it stopped. Everything is validated (tokenizer, task, first
batch, model, mesh) before the run directory is created, so bad input leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from typing import Callable, Mapping, Optional

import gin
import jax

from t5x_rationale.architectures import build_model
from t5x_rationale.data.converters import FeatureConverter
from t5x_rationale.data.pipeline import StreamSpec, TaskStream
from t5x_rationale.data.run_inputs import check_task, default_converter, load_vocabulary
from t5x_rationale.gin_launch import main as gin_main
from t5x_rationale.interop.checkpoint_files import gin_model_file
from t5x_rationale.interop.hf_start import hf_params, is_hf_dir
from t5x_rationale.objectives import token_loss
from t5x_rationale.qcrd.launch import QcrdRun
from t5x_rationale.qcrd.settings import QcrdSettings
from t5x_rationale.quiet_star.spec import ThinkingSpec
from t5x_rationale.runtime.checkpoints import Checkpointer
from t5x_rationale.runtime.flops import (
    measure_peak_matmul_flops,
    objective_step_counts,
    train_step_flops,
)
from t5x_rationale.runtime.host_memory import reexec_with_huge_pages
from t5x_rationale.runtime.metrics_writer import MetricsWriter
from t5x_rationale.runtime.optimizers import OptimizerConfig, make_optimizer
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.run_files import model_info, write_run_info, write_text_atomic
from t5x_rationale.runtime.run_lock import RunLock, check_config_unchanged
from t5x_rationale.runtime.teacher import attach_teacher
from t5x_rationale.runtime.trainer import Throughput, Trainer, TrainState
from t5x_rationale.runtime.training_loop import train_loop
from t5x_rationale.runtime.warm_start import warm_start, with_params

log = logging.getLogger(__name__)


def train(
    *,
    model_config=gin.REQUIRED,
    mixture_or_task_name: str = gin.REQUIRED,
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED,
    batch_size: int = gin.REQUIRED,
    num_steps: int = gin.REQUIRED,
    run_dir: str = gin.REQUIRED,
    converter: Optional[FeatureConverter] = None,
    objective: Callable = token_loss,
    optimizer: OptimizerConfig = OptimizerConfig(),
    mesh: MeshConfig = MeshConfig(),
    split: str = "train",
    seed: int = 0,
    data_seed: int = 0,
    host_sharding: str = "source",
    num_microbatches: int = 1,
    save_every: int = 500,
    keep_checkpoints: Optional[int] = 3,
    restore_path: Optional[str] = None,
    init_from: Optional[str] = None,
    init_from_hf: Optional[str] = None,
    allow_config_change: bool = False,
    strict_restore: bool = False,
    max_bad_steps: int = 10,
    log_every: int = 10,
    vocabulary_path: Optional[str] = None,
    measure_mfu: bool = True,
    console: bool = True,
    teacher_config=None,
    teacher_checkpoint: Optional[str] = None,
    thinking: Optional[ThinkingSpec] = None,
    qcrd: Optional[QcrdSettings] = None,
) -> TrainState:
    """Trains `model_config` on a seqio task or mixture until step `num_steps`.

    Args:
      model_config: an architecture config (`model_config()` in gin).
      mixture_or_task_name: a registered seqio task or mixture.
      task_feature_lengths: e.g. `{"inputs": 128, "targets": 128}`; longer examples are
        truncated and counted (`data/truncated_examples`).
      batch_size: global batch size (rows of packed examples).
      num_steps: train until the state's step reaches this.
      run_dir: checkpoints, metrics and config land here; an existing run resumes.
      converter: feature converter (default: packed enc-dec or decoder-only, by architecture).
      objective: `loss(model, params, batch, rng) -> (loss, metrics)`.
      optimizer, mesh: optimizer/schedule and mesh settings.
      split, data_seed, host_sharding: what the stream reads (see `data/pipeline.py`).
      seed: parameter init and dropout seed.
      num_microbatches: gradient accumulation.
      save_every, keep_checkpoints, restore_path: checkpointing (restore order: latest in
        run_dir, then `restore_path`, then fresh init).
      init_from: start a new run from this checkpoint's params (a run's checkpoints or a
        step directory) with a fresh optimizer at step 0; a Quiet-STaR model may start from
        a plain decoder LM's (runtime/warm_start.py). A run that has checkpoints resumes them.
      init_from_hf: the same from a Hugging Face directory, imported on the fly (its
        `config.json` must describe the model: bind `model_config.hf_dir` to it).
      allow_config_change: resume checkpoints whose run was configured otherwise (by
        default that stops with the difference; the step count may always change).
      strict_restore: stop when the run's newest checkpoint cannot be read, instead of
        moving it aside (`damaged-<step>`) and resuming from the previous one.
      max_bad_steps: stop after this many consecutive steps with a non-finite loss or
        gradient (each is skipped: no update).
      log_every: metrics rows every this many steps.
      vocabulary_path: SentencePiece model (default: the shipped one).
      measure_mfu: measure the matmul peak first and report MFU.
      console: print a progress line.
      teacher_config, teacher_checkpoint: a frozen teacher for distillation objectives
        (`kd_loss`): its params are restored from the checkpoint, sharded on this mesh and
        passed to the objective as `constants["teacher"]`, with `teacher_model=` bound.
      thinking: a Quiet-STaR model's thinking settings (`@ThinkingSpec()`), handed to the
        objective as `spec=` and to the FLOP count; required for one, refused otherwise.
      qcrd: QCRD's settings (`@QcrdSettings()`): the run reads `mixture_or_task_name`'s label
        rows and the settings' candidate task side by side, keeps a ring of lagged params and
        an online discriminator in the train state and samples self-adversarial negatives
        (`qcrd/`); the objective is `@qcrd_loss`.
    """
    objective = _with_thinking(objective, model_config, thinking)
    vocabulary = load_vocabulary(vocabulary_path, model_config)
    check_task(mixture_or_task_name, vocabulary)
    partitioner = Partitioner(create_mesh(mesh))
    converter = converter or default_converter(model_config.architecture)
    spec = StreamSpec(
        mixture_or_task_name,
        split,
        dict(task_feature_lengths),
        batch_size,
        shuffle=True,
        seed=data_seed,
        host_sharding=host_sharding,
    )
    stream, qcrd_run = _stream(spec, converter, partitioner, qcrd, vocabulary)
    example = next(stream)  # proves the data reads and gives the batch shapes
    setup = dict(num_microbatches=num_microbatches, max_bad_steps=max_bad_steps, qcrd_run=qcrd_run)
    setup.update(teacher=(teacher_config, teacher_checkpoint))
    trainer = _trainer(model_config, objective, optimizer, partitioner, example, **setup)
    prepare = qcrd_run.prepare(trainer) if qcrd_run else None
    example = prepare(None, example) if prepare else example
    fresh = _init(trainer, seed, example, model_config, init_from, init_from_hf)
    fresh = qcrd_run.with_finish_init(trainer, fresh, spec) if qcrd_run else fresh
    with contextlib.ExitStack() as stack:
        checkpointer = stack.enter_context(_locked(run_dir, keep_checkpoints, save_every))
        state, data_state, source = _start(
            checkpointer,
            trainer,
            example,
            model_config,
            run_dir=run_dir,
            fresh=fresh,
            restore_path=restore_path,
            allow_config_change=allow_config_change,
            strict=strict_restore,
        )
        stream.set_state(data_state if data_state else {"position": 0})
        _announce(mixture_or_task_name, source, int(state.step), num_steps, console)
        throughput = _throughput(model_config, spec, converter, measure_mfu, thinking, example)
        writer = stack.enter_context(
            MetricsWriter(
                run_dir,
                total_steps=num_steps,
                log_every=log_every,
                console=console,
                resume_step=int(state.step),
            )
        )
        return train_loop(
            trainer,
            state,
            stream,
            num_steps=num_steps,
            checkpointer=checkpointer,
            throughput=throughput,
            on_metrics=lambda step, values: writer(step, {**values, **_stats(stream, prepare)}),
            prepare=prepare,
        )


def _stats(stream, prepare) -> dict:
    return {**stream.stats(), **(prepare.stats() if prepare else {})}


def _trainer(
    model_config, objective, optimizer, partitioner, example, *, teacher, qcrd_run, **loop
):
    """The run's trainer (a QCRD one for QCRD), with a teacher's params as constants; `loop`:
    num_microbatches and max_bad_steps."""
    teacher_config, teacher_checkpoint = teacher
    teacher_load = _hf_loader(teacher_checkpoint, teacher_config)  # None: our checkpoint
    objective, constants = attach_teacher(
        objective, teacher_config, teacher_checkpoint, partitioner, example, load=teacher_load
    )
    tx, schedule = make_optimizer(optimizer)
    return (qcrd_run.trainer if qcrd_run else Trainer)(
        build_model(model_config),
        objective,
        tx,
        partitioner,
        learning_rate_fn=schedule,
        constants=constants,
        **loop,
    )


@contextlib.contextmanager
def _locked(run_dir: str, keep: Optional[int], save_every: int):
    """The run's checkpointer, with the run directory locked to this run while it is open."""
    directory = os.path.join(run_dir, "checkpoints")
    with (
        RunLock(run_dir),
        Checkpointer(directory, keep=keep, save_every=save_every) as checkpointer,
    ):
        yield checkpointer


def _start(
    checkpointer,
    trainer,
    example,
    model_config,
    *,
    run_dir: str,
    fresh: tuple[Callable, str],
    restore_path: Optional[str],
    allow_config_change: bool,
    strict: bool,
):
    """(state, data_state, source) of the run: its latest checkpoint (when its config is the
    one they were trained with), else `restore_path`, else `fresh` (its init and what it
    starts from); writes the run's `config.gin` and `model-info.txt`."""
    config = gin.config_str()
    latest = checkpointer.latest_step
    if latest is not None:
        check_config_unchanged(run_dir, config, step=latest, allow_change=allow_config_change)
    write_run_info(
        run_dir, config_gin=config, model_info=model_info(trainer, example, model_config)
    )
    if jax.process_index() == 0:  # the resolved model, for `export --model_gin`
        write_text_atomic(
            os.path.join(run_dir, "model.gin"), gin_model_file(model_config, "this run")
        )
    state, data_state, source = checkpointer.restore_or_init(
        trainer.abstract_state(example),
        fresh[0],
        explicit_path=restore_path,
        strict=strict,
    )
    return state, data_state, fresh[1] if source == "fresh init" else source


def _init(trainer: Trainer, seed: int, example: dict, model_config, init_from, init_from_hf):
    """(the fresh state of a new run, what it starts from): random, `init_from`'s params or
    `init_from_hf`'s weights."""
    if init_from and init_from_hf:
        raise ValueError("set train.init_from or train.init_from_hf, not both")
    if init_from_hf and not is_hf_dir(init_from_hf):
        raise FileNotFoundError(f"train.init_from_hf: {init_from_hf} has no config.json")

    def init():
        state = trainer.init_state(seed, example)
        if init_from:
            return warm_start(state, init_from, model_config)
        if init_from_hf:
            params = hf_params(init_from_hf, model_config, trainer.abstract_state(example).params)
            return with_params(state, params, model_config)
        return state

    source = init_from and f"the params of {init_from}"
    return init, source or (init_from_hf and f"the weights of {init_from_hf}") or "fresh init"


def _hf_loader(path: Optional[str], model_config) -> Optional[Callable]:
    """abstract params -> params read from the HF directory `path` (None: `path` is not one)."""
    if path is None or not is_hf_dir(path):
        return None
    return functools.partial(hf_params, path, model_config)


def _with_thinking(objective: Callable, model_config, thinking: Optional[ThinkingSpec]):
    """The objective with `spec=thinking` bound, for a model that thinks."""
    if model_config.architecture != "quiet_star":
        if thinking is not None:
            raise ValueError("train.thinking is set but the model does not think (not Quiet-STaR)")
        return objective
    if thinking is None:
        raise ValueError("a Quiet-STaR model needs train.thinking = @ThinkingSpec()")
    return functools.partial(objective, spec=thinking)


def _stream(spec: StreamSpec, converter, partitioner: Partitioner, qcrd, vocabulary):
    """(this host's rows of the resumable batch stream, the QCRD run or None); a QCRD run
    pairs it with its candidate stream."""
    stream = TaskStream(
        spec,
        converter,
        host_rows=partitioner.host_rows(spec.batch_size),
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    if qcrd is None:
        return stream, None
    qcrd_run = QcrdRun(qcrd, partitioner, vocabulary)
    return qcrd_run.stream(stream), qcrd_run


def _announce(task: str, source: str, step: int, num_steps: int, console: bool) -> None:
    log.info("train: %s from %s at step %d", task, source, step)
    if console and jax.process_index() == 0:
        print(f"train: starting from {source} at step {step} of {num_steps}", flush=True)


def _throughput(
    model_config, spec: StreamSpec, converter, measure_mfu: bool, thinking, example=None
) -> Throughput:
    """Tokens and model FLOPs per step (QCRD's and PINTO's from the batch's shapes:
    `objective_step_counts`)."""
    lengths = converter.get_model_feature_lengths(spec.task_feature_lengths)
    input_length = lengths.get("encoder_input_tokens", 0)
    target_length = lengths["decoder_target_tokens"]
    tokens = spec.batch_size * (input_length + target_length)
    flops = train_step_flops(
        model_config,
        spec.batch_size,
        target_length=target_length,
        input_length=input_length,
        thinking=thinking,
    )
    counts = objective_step_counts(model_config, example) if example else None
    if counts is not None:
        tokens, flops = counts
    peak = measure_peak_matmul_flops() * jax.device_count() if measure_mfu else None
    return Throughput(tokens_per_step=tokens, flops_per_step=flops, peak_flops=peak)


def main() -> None:
    gin_main(train)


if __name__ == "__main__":
    reexec_with_huge_pages()
    main()
