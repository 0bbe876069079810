"""Input-pipeline benchmark: examples/s and tokens/s one host's training stream delivers.

    python -m t5x_rationale.bench_pipeline --task synthetic_arith_text --lengths targets=512 \
        --converter lm --batch 64 --hosts 1,4,8
    python -m t5x_rationale.bench_pipeline --gsm8k_dir /data/gsm8k --task gsm8k_cot_decoder \
        --lengths inputs=256,targets=384 --converter decoder --batch 64 --hosts 1,4,8

For each `--host_sharding` and host count N it builds the `TaskStream` that `train` builds on
each of N hosts (`data/pipeline_speed.py`), times each host's stream alone and reports the
per-host rates (mean over the simulated hosts, and the slowest). It also prints what one GPU
consumes: the model FLOPs per token of a train step of `--preset` at the stream's row length
(`runtime/flops.py`) at an assumed MFU of an assumed peak (40% of an H100's 989 TFLOP/s dense
bf16 by default), and the CPU cores per GPU that the stream needs at that rate.

This is a separate entry point, not a mode of `bench`: `bench` and `benchmarks/` must import
without TensorFlow (the GPU machines have none), and the pipeline is TensorFlow.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys

from t5x_rationale.architectures import get_preset
from t5x_rationale.data.converters import DecoderConverter, EncDecConverter
from t5x_rationale.data.pipeline import HOST_SHARDING, StreamSpec
from t5x_rationale.data.pipeline_speed import measure_hosts
from t5x_rationale.data.registry import register_gsm8k
from t5x_rationale.runtime.flops import train_step_flops

CONVERTERS = {
    # packed, as `train` builds them: encoder-decoder; decoder prompt + target (loss on the
    # target); decoder plain LM (`runs/pretrain_lm.gin`, `runs/quiet_star*.gin`)
    "encdec": lambda: EncDecConverter(pack=True),
    "decoder": lambda: DecoderConverter(pack=True),
    "lm": lambda: DecoderConverter(pack=True, inputs=False, loss_on_targets_only=False),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--task", default="synthetic_arith_text", help="a registered task or mixture")
    p.add_argument("--split", default="train")
    p.add_argument("--lengths", default="targets=512", help="task feature lengths, k=v,k=v")
    p.add_argument("--converter", default="lm", choices=sorted(CONVERTERS))
    p.add_argument("--batch", type=int, default=64, help="global batch (rows)")
    p.add_argument("--hosts", default="1,4,8", help="simulated host counts")
    p.add_argument("--host_sharding", default=",".join(HOST_SHARDING))
    p.add_argument(
        "--measure_hosts",
        type=int,
        default=0,
        help="time only the first this many hosts of each count (0: all of them)",
    )
    p.add_argument("--batches", type=int, default=20, help="timed batches per host")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches per host")
    p.add_argument("--gsm8k_dir", help="register this GSM8K copy first (gsm8k_* tasks)")
    p.add_argument("--preset", default="decoder-1b", help="the model a GPU trains")
    p.add_argument("--gpu_peak_tflops", type=float, default=989.0, help="H100 SXM dense bf16")
    p.add_argument("--gpu_mfu", type=float, default=0.4, help="assumed, not measured")
    p.add_argument("--json", help="write every host's row and the summary to this file")
    return p.parse_args(argv)


def _lengths(text: str) -> dict[str, int]:
    pairs = [item.split("=") for item in text.split(",") if item]
    return {key.strip(): int(value) for key, value in pairs}


def gpu_consumption(args: argparse.Namespace, row_length: int) -> dict:
    """Slots (tokens, padding included) per second one GPU trains `--preset` on at the
    assumed MFU, from the model FLOPs of a train step of rows of `row_length`."""
    config = get_preset(args.preset)
    flops_per_slot = train_step_flops(config, 1, target_length=row_length) / row_length
    return {
        "preset": args.preset,
        "row_length": row_length,
        "train_flops_per_token": flops_per_slot,
        "gpu_peak_tflops": args.gpu_peak_tflops,
        "gpu_mfu": args.gpu_mfu,
        "gpu_tokens_per_s": args.gpu_mfu * args.gpu_peak_tflops * 1e12 / flops_per_slot,
    }


def summarize(rates: list, gpu_tokens_per_s: float) -> dict:
    """Per-host rates of one (sharding, host count): mean and slowest host, cores per GPU."""
    rows = [r.row() for r in rates]
    mean = lambda key: statistics.fmean(r[key] for r in rows)  # noqa: E731
    summary = {
        "host_sharding": rates[0].host_sharding,
        "hosts": rates[0].process_count,
        "measured_hosts": len(rows),
        "startup_s": max(r["startup_s"] for r in rows),
    }
    for key in ("examples_per_s", "tokens_per_s", "slots_per_s", "slots_per_cpu_s"):
        summary[key] = mean(key)
    summary["slots_per_s_slowest"] = min(r["slots_per_s"] for r in rows)
    summary["padding"] = 1 - sum(r["tokens"] for r in rows) / sum(r["slots"] for r in rows)
    # One core delivers slots_per_cpu_s; a GPU eats gpu_tokens_per_s slots.
    summary["cores_per_gpu"] = gpu_tokens_per_s / min(r["slots_per_cpu_s"] for r in rows)
    return summary


def run(args: argparse.Namespace) -> dict:
    if args.gsm8k_dir:
        register_gsm8k(args.gsm8k_dir)
    lengths = _lengths(args.lengths)
    converter = CONVERTERS[args.converter]()
    model_lengths = converter.get_model_feature_lengths(lengths)
    row_length = (
        model_lengths.get("encoder_input_tokens", 0) + model_lengths["decoder_target_tokens"]
    )
    gpu = gpu_consumption(args, row_length)
    hosts_rows, summaries = [], []
    for sharding in args.host_sharding.split(","):
        for count in (int(n) for n in args.hosts.split(",")):
            spec = StreamSpec(
                args.task, args.split, lengths, args.batch, seed=0, host_sharding=sharding
            )
            measured = range(min(args.measure_hosts, count)) if args.measure_hosts else None
            rates = measure_hosts(
                spec,
                converter,
                process_count=count,
                batches=args.batches,
                warmup=args.warmup,
                hosts=None if measured is None else list(measured),
            )
            hosts_rows += [r.row() for r in rates]
            summaries.append(summarize(rates, gpu["gpu_tokens_per_s"]))
            print(_format_summary(summaries[-1]), file=sys.stderr, flush=True)
    return {
        "task": args.task,
        "lengths": lengths,
        "converter": args.converter,
        "batch": args.batch,
        "cpus": len(os.sched_getaffinity(0)),
        "gpu": gpu,
        "summaries": summaries,
        "hosts": hosts_rows,
    }


def _format_summary(s: dict) -> str:
    return (
        f"{s['host_sharding']:>6} {s['hosts']:>3} hosts: {s['examples_per_s']:9.1f} examples/s "
        f"{s['tokens_per_s']:11.0f} tokens/s {s['slots_per_s']:11.0f} slots/s per host "
        f"(slowest {s['slots_per_s_slowest']:.0f}); {s['slots_per_cpu_s']:.0f} slots per CPU s; "
        f"padding {s['padding']:.1%}; {s['cores_per_gpu']:.3f} cores per GPU; "
        f"startup {s['startup_s']:.1f} s"
    )


def report(result: dict) -> str:
    gpu = result["gpu"]
    lines = [
        f"{result['task']} {result['lengths']} ({result['converter']}, packed), global batch "
        f"{result['batch']}, {result['cpus']} CPUs visible; per host, each host's stream "
        "timed alone",
        f"GPU side (assumed, not measured): {gpu['preset']} at {gpu['row_length']} tokens per "
        f"row trains on {gpu['train_flops_per_token'] / 1e9:.2f} GFLOP per token (3x forward, "
        f"runtime/flops.py); at {gpu['gpu_mfu']:.0%} MFU of {gpu['gpu_peak_tflops']:.0f} "
        f"TFLOP/s (H100 dense bf16) one GPU consumes {gpu['gpu_tokens_per_s']:,.0f} tokens/s "
        "(slots, padding included)",
        "cores per GPU = GPU tokens/s / slots one CPU core delivers per second (slowest host)",
    ]
    return "\n".join(lines + [_format_summary(s) for s in result["summaries"]])


def main(argv=None) -> int:
    args = parse_args(argv)
    result = run(args)
    print(report(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
