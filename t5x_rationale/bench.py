"""Train-step benchmark: step time, tokens/s, model FLOPs, MFU and peak memory.

    python -m t5x_rationale.bench --preset t5-small --batch 8 --input_length 512 --target_length 128
    python -m t5x_rationale.bench --preset decoder-125m --batch 8 --target_length 256 \
        --json out.json
    python -m t5x_rationale.bench --preset t5-small --batch 8 --input_length 512 \
        --target_length 128 --objective step_by_step
    python -m t5x_rationale.bench --preset decoder-125m --batch 4 --target_length 256 \
        --objective quiet_star --implementation streams --steps 2 --warmup 0

`--decode` runs the decoding benchmark instead (`benchmarks/decode_speed.py`, its own flags).

For `quiet_star` the preset is wrapped in a `QuietStarConfig`; rows are the batch repeated
`--num_thoughts` times and model FLOPs count only what the streams decomposition needs
(`flops.quiet_star_forward_flops`), for either implementation. `--compile_only` reports the
compiled memory analysis per device (argument, output, temp, total) without running a step
or allocating the state (for settings that do not fit in memory);
`--by_parts` times a dense_mask step that does not fit as the sum of its parts
(`dense_mask_parts`), each run forward and backward on its own.

The peak matmul rate is measured in the same run (float32 2048x2048 matmul on each device,
best of several, before and after the timed steps), so MFU compares against what this
machine actually reaches; `mfu` uses the median step time, `mfu_best_step` the fastest.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import sys
import time

import jax

from t5x_rationale.architectures import build_model, get_preset
from t5x_rationale.architectures.quiet_star_lm import QuietStarConfig
from t5x_rationale.benchmarks import decode_speed
from t5x_rationale.benchmarks.dense_mask_parts import dense_mask_parts
from t5x_rationale.benchmarks.qcrd_step import QCRD_COLUMNS, QcrdBenchShape, qcrd_row
from t5x_rationale.benchmarks.random_batches import RandomBatches
from t5x_rationale.objectives import step_by_step_loss, token_loss
from t5x_rationale.objectives.qcrd import qcrd_loss
from t5x_rationale.objectives.quiet_star import quiet_star_loss
from t5x_rationale.quiet_star.functional_decoder import FunctionalDecoder
from t5x_rationale.quiet_star.spec import IMPLEMENTATIONS, RECORDABLE, ThinkingSpec
from t5x_rationale.runtime.flops import measure_peak_matmul_flops, train_step_flops
from t5x_rationale.runtime.host_memory import huge_pages_enabled, reexec_with_huge_pages
from t5x_rationale.runtime.optimizers import OptimizerConfig, make_optimizer
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.trainer import Trainer

OBJECTIVES = {
    "token": token_loss,
    "step_by_step": step_by_step_loss,
    "quiet_star": quiet_star_loss,
    "qcrd": qcrd_loss,
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--preset", required=True)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument(
        "--input_length", type=int, default=0, help="encoder length (encoder-decoder only)"
    )
    p.add_argument("--target_length", type=int, default=128)
    p.add_argument("--mesh", default="-1x1x1", help="DATAxFSDPxTENSOR, -1 fills the devices")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed steps after (ahead-of-time) compilation"
    )
    p.add_argument("--dtype", default="float32", help="compute dtype")
    p.add_argument("--remat", default="none")
    p.add_argument("--scan_layers", action="store_true")
    p.add_argument("--microbatches", type=int, default=1)
    p.add_argument("--peak_matmul_size", type=int, default=2048)
    p.add_argument(
        "--objective",
        default="token",
        choices=sorted(OBJECTIVES),
        help="token: plain cross-entropy; step_by_step: per-task means over label + rationale "
        "spans; quiet_star: thoughts at every position (decoder presets); qcrd: label rows + "
        "candidate slots, with the sampler's and discriminator's amortised cost",
    )
    p.add_argument("--candidates", type=int, default=5, help="qcrd: slots per question")
    p.add_argument("--num_samples", type=int, default=2, help="qcrd: sampled slots of those")
    p.add_argument("--sample_every", type=int, default=10, help="qcrd: N")
    p.add_argument("--discriminator_every", type=int, default=10, help="qcrd: M")
    p.add_argument("--implementation", default=ThinkingSpec.implementation, choices=IMPLEMENTATIONS)
    p.add_argument("--num_ahead", type=int, default=ThinkingSpec.num_ahead)
    p.add_argument("--num_talk", type=int, default=ThinkingSpec.num_talk)
    p.add_argument("--num_thoughts", type=int, default=ThinkingSpec.num_thoughts)
    p.add_argument(
        "--record",
        default=",".join(ThinkingSpec.record),
        help="quiet_star streams: comma-separated values each step records for its backward "
        f"(some of {', '.join(RECORDABLE)}; empty: none)",
    )
    p.add_argument(
        "--compile_only", action="store_true", help="compile and report memory, run no step"
    )
    p.add_argument(
        "--by_parts",
        action="store_true",
        help="quiet_star dense_mask: time the step's parts on their own, unsharded, and add "
        "them up (dense_mask_parts), for lengths where the whole step does not fit",
    )
    p.add_argument("--json", help="write the result row to this file")
    return p.parse_args(argv)


def _memory_stats(compiled) -> dict:
    out = {"peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
    if compiled is None:
        return out
    try:
        m = compiled.memory_analysis()
        # Per device: a partitioned executable describes one device's program.
        for part in ("argument", "output", "alias", "temp"):
            out[f"compiled_{part}_gib"] = getattr(m, f"{part}_size_in_bytes") / 2**30
        out["compiled_total_gib"] = (
            m.temp_size_in_bytes
            + m.argument_size_in_bytes
            + m.output_size_in_bytes
            - m.alias_size_in_bytes
        ) / 2**30
    except Exception:  # memory_analysis is optional per backend
        pass
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_gib"] = stats["peak_bytes_in_use"] / 2**30
    return out


def _model_and_objective(args: argparse.Namespace):
    config = get_preset(
        args.preset, dtype=args.dtype, remat_policy=args.remat, scan_layers=args.scan_layers
    )
    if args.objective != "quiet_star":
        return config, OBJECTIVES[args.objective], None
    if config.architecture != "decoder":
        raise ValueError(
            f"--objective quiet_star needs a decoder preset, {args.preset} is {config.architecture}"
        )
    thinking = ThinkingSpec(
        num_ahead=args.num_ahead,
        num_talk=args.num_talk,
        num_thoughts=args.num_thoughts,
        implementation=args.implementation,
        record=tuple(name for name in args.record.split(",") if name),
    )
    objective = functools.partial(quiet_star_loss, spec=thinking)
    return QuietStarConfig(decoder=config), objective, thinking


def run(args: argparse.Namespace) -> dict:
    if args.objective == "qcrd":
        return _run_qcrd(args)
    config, objective, thinking = _model_and_objective(args)
    if config.architecture == "encoder_decoder" and args.input_length <= 0:
        raise ValueError(f"preset {args.preset} is an encoder-decoder: pass --input_length")
    input_length = args.input_length if config.architecture == "encoder_decoder" else 0
    peak_per_device = measure_peak_matmul_flops(args.peak_matmul_size)
    partitioner = Partitioner(create_mesh(MeshConfig.parse(args.mesh)))
    trainer, batches = _trainer_and_batches(args, config, objective, partitioner, input_length)
    # --compile_only lowers against shapes and shardings: no parameter is allocated, so a 7B
    # step compiles on a machine that could not hold its state.
    if args.compile_only:
        state = trainer.abstract_state(batches[0])
    else:
        state = trainer.init_state(0, batches[0])

    row = dict(
        preset=args.preset,
        objective=_objective_name(args),
        batch=args.batch,
        target_length=args.target_length,
        mesh="x".join(map(str, partitioner.mesh.devices.shape)),
        devices=jax.device_count(),
        backend=jax.default_backend(),
        dtype=args.dtype,
        remat=args.remat,
        scan_layers=args.scan_layers,
        input_length=input_length,
        huge_pages=huge_pages_enabled(),
        params_m=sum(x.size for x in jax.tree.leaves(state.params)) / 1e6,
    )
    if args.by_parts:
        times, metrics, compiled = (
            _step_by_parts(args, config, thinking, state.params, trainer.optimizer, row),
            {},
            None,
        )
    else:
        times, metrics, compiled = _timed_steps(args, trainer, state, batches, row)
        if args.compile_only:
            return dict(row, **_memory_stats(compiled))

    # The machine's speed drifts (shared hosts, clocks): take the best matmul rate seen before
    # and after the timed steps, which can only lower the reported MFU.
    peak_per_device = max(peak_per_device, measure_peak_matmul_flops(args.peak_matmul_size))
    flops = train_step_flops(
        config,
        args.batch,
        target_length=args.target_length,
        input_length=input_length,
        thinking=thinking,
    )
    tokens = args.batch * (input_length + args.target_length)
    row.update(_speed(times, tokens, flops, peak_per_device * jax.device_count()))
    if "loss" in metrics:
        row["loss"] = float(metrics["loss"])
    row.update(_memory_stats(compiled))
    return row


def _run_qcrd(args: argparse.Namespace) -> dict:
    shape = QcrdBenchShape(
        args.preset,
        args.batch,
        args.input_length,
        args.target_length,
        candidates=args.candidates,
        num_samples=args.num_samples,
        sample_every=args.sample_every,
        discriminator_every=args.discriminator_every,
    )
    return qcrd_row(shape, MeshConfig.parse(args.mesh), args.steps, args.peak_matmul_size)


def _trainer_and_batches(args, config, objective, partitioner: Partitioner, input_length: int):
    """The trainer of the timed step and two random batches to alternate."""
    tx, schedule = make_optimizer(OptimizerConfig(learning_rate=1e-4))
    trainer = Trainer(
        build_model(config),
        objective,
        tx,
        partitioner,
        learning_rate_fn=schedule,
        num_microbatches=args.microbatches,
    )
    data = RandomBatches(
        vocab_size=config.vocab_size,
        batch_size=args.batch,
        target_length=args.target_length,
        input_length=input_length,
        task_ids=args.objective == "step_by_step",
    )
    return trainer, [partitioner.host_batch_to_global(next(data)) for _ in range(2)]


def _speed(times: list[float], tokens: int, flops: float, peak: float) -> dict:
    """Step time, tokens/s and MFU of the median step (and MFU of the fastest)."""
    step_s = statistics.median(times)
    return {
        "step_s": step_s,
        "step_s_min": min(times),
        "step_s_max": max(times),
        "tokens_per_s": tokens / step_s,
        "model_gflop_per_step": flops / 1e9,
        "achieved_gflop_per_s": flops / step_s / 1e9,
        "peak_matmul_gflop_per_s": peak / 1e9,
        "mfu": flops / step_s / peak,
        "mfu_best_step": flops / min(times) / peak,
    }


def _timed_steps(args: argparse.Namespace, trainer: Trainer, state, batches: list, row: dict):
    """(step times, last metrics, the compiled step); fills row["compile_s"]."""
    start = time.perf_counter()
    # ahead of time: the steps below run this executable
    compiled = trainer.compile_step(state, batches[0])
    row["compile_s"] = time.perf_counter() - start
    if args.compile_only:
        return [], {}, compiled

    def step(state, batch):
        with trainer.context():
            state, metrics = compiled(state, batch, trainer.constants)
        jax.block_until_ready(metrics)
        return state, metrics

    metrics = {}
    for i in range(args.warmup):
        state, metrics = step(state, batches[i % 2])
    times = []
    for i in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = step(state, batches[i % 2])
        times.append(time.perf_counter() - t0)
    return times, metrics, compiled


def _step_by_parts(
    args: argparse.Namespace, config, thinking: ThinkingSpec, params, tx, row: dict
) -> list[float]:
    """[the dense_mask step time added up from its parts]; the parts go into row["parts_s"]."""
    if args.objective != "quiet_star" or args.implementation != "dense_mask":
        raise ValueError(
            "--by_parts times the quiet_star dense_mask step: pass --objective quiet_star "
            "--implementation dense_mask"
        )
    if args.batch % args.microbatches:
        raise ValueError(f"--microbatches {args.microbatches} must divide --batch {args.batch}")
    rows = args.batch * thinking.num_thoughts
    start = time.perf_counter()
    result = dense_mask_parts(
        FunctionalDecoder(config),
        thinking,
        params,
        tx,
        rows=rows,
        length=args.target_length,
        microbatches=args.microbatches,
        copies=thinking.num_thoughts,
        repeats=max(args.steps, 1),
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    row.update(parts_s=result["parts_s"], parts_wall_s=time.perf_counter() - start)
    return [result["step_s"]]


def _objective_name(args: argparse.Namespace) -> str:
    return f"quiet_star/{args.implementation}" if args.objective == "quiet_star" else args.objective


def format_table(rows: list[dict]) -> str:
    cols = [
        "preset",
        "objective",
        "mesh",
        "dtype",
        "batch",
        "input_length",
        "target_length",
        "params_m",
        "step_s",
        "tokens_per_s",
        "model_gflop_per_step",
        "achieved_gflop_per_s",
        "peak_matmul_gflop_per_s",
        "mfu",
        "mfu_best_step",
        "compiled_total_gib",
        "peak_rss_gib",
        "huge_pages",
        "compile_s",
    ]
    cols += [c for c in QCRD_COLUMNS if any(c in r for r in rows)]
    fmt = lambda v: f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(cols)]
    line = lambda vals: "| " + " | ".join(v.rjust(w) for v, w in zip(vals, widths)) + " |"  # noqa: E731
    return "\n".join(
        [line(cols), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in cells]
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--decode" in argv:
        decode_speed.main([a for a in argv if a != "--decode"])
        return 0
    args = parse_args(argv)
    row = run(args)
    print(format_table([row]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(row, f, indent=2)
    return 0


if __name__ == "__main__":
    reexec_with_huge_pages()
    sys.exit(main())
