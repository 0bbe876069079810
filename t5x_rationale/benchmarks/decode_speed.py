"""Decoding speed: generated tokens/s, time to first token and the fraction of the step bound.

    python -m t5x_rationale.bench --decode
    python -m t5x_rationale.bench --decode --presets decoder-125m --methods sample --json out.json
    python -m t5x_rationale.bench --decode --profile   # and where each step's time goes

Each (preset, method) decodes one batch of random prompts with random weights through
`decoding.decode`, best of `repeats` after compilation (a row that happens to choose EOS
stops, the others go on; the table counts such rows). Time to first token (TTFT) is a
decode of one token: the encoder or the prompt prefill plus the first step. The step time
is (total - TTFT) / (new_tokens - 1).

The bound of one step is the larger of two times, both from rates measured in the same run:
reading the weights a step uses (every matmul weight; the embedding table only where it is
the logits matrix) plus the valid part of the KV cache (self-attention keys/values of the
positions written so far, averaged over the steps; an encoder-decoder's cross-attention
keys/values of the whole input) at the copy bandwidth; and the step's model FLOPs at the
matmul peak. `bound_fraction` = bound / measured step time (1.0 = at the bound).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from t5x_rationale.architectures import build_model, get_preset
from t5x_rationale.benchmarks.decode_profile import format_breakdown, step_breakdown
from t5x_rationale.inference.decoding import DecodeConfig, decode, lower_decode
from t5x_rationale.runtime.flops import decode_step_counts, measure_peak_matmul_flops

SAMPLING = dict(temperature=0.7, top_p=0.95)
COLUMNS = (
    "preset",
    "method",
    "tokens_per_s",
    "ttft_s",
    "step_ms",
    "decode_tokens_per_s",
    "bound_ms",
    "bound_fraction",
    "bound_by",
)


@dataclasses.dataclass(frozen=True)
class DecodeShape:
    batch: int = 32
    prompt_length: int = 256
    new_tokens: int = 128


def measure_copy_bandwidth(megabytes: int = 512, repeats: int = 5) -> float:
    """Best-of-`repeats` bytes/s of an in-place float32 update (bytes read + bytes written)."""
    x = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    update = jax.jit(lambda v: v * 1.0001 + 1e-6, donate_argnums=0)
    x = update(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        x = update(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * x.nbytes / best


def random_setup(preset: str, shape: DecodeShape, dtype: str, seed: int = 0):
    """(config, model, params, batch): random weights and random prompts without padding."""
    config = get_preset(preset, dtype=dtype, param_dtype=dtype)
    model = build_model(config)
    rng = np.random.default_rng(seed)
    # ids from 2: 0 pads and 1 is the EOS id the decode config never emits here
    prompt = rng.integers(2, config.vocab_size, (shape.batch, shape.prompt_length), np.int32)
    small = jnp.ones((1, 8), jnp.int32)
    if config.architecture == "encoder_decoder":
        batch, init_args = {"encoder_input_tokens": prompt}, (small, small)
    else:
        batch, init_args = {"decoder_prompt_tokens": prompt}, (small,)
    variables = jax.jit(model.init)(jax.random.PRNGKey(seed), *init_args)
    params = jax.tree.map(
        lambda x: getattr(x, "value", x), variables["params"], is_leaf=lambda x: hasattr(x, "value")
    )
    return config, model, params, batch


def _best_time(fn, repeats: int) -> float:
    fn()  # compile and warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def decode_row(preset, method, shape, *, dtype, peak, bandwidth, repeats, profile=False) -> dict:
    """One row of the table for (preset, method)."""
    model_config, model, params, batch = random_setup(preset, shape, dtype)
    settings = SAMPLING if method == "sample" else {}
    rng = jax.random.PRNGKey(1)

    def settings_for(length: int) -> DecodeConfig:
        return DecodeConfig(max_decode_length=length, method=method, **settings)

    def run(length: int):
        return lambda: decode(model, params, batch, settings_for(length), rng=rng)

    full = run(shape.new_tokens)
    total = _best_time(lambda: full().tokens.block_until_ready(), repeats)
    # the loop runs while any row is unfinished: the timing holds if one row reaches the end
    lengths = np.asarray(full().lengths)
    ttft = _best_time(lambda: run(1)().tokens.block_until_ready(), repeats)
    step = (total - ttft) / (shape.new_tokens - 1)
    flops, nbytes = decode_step_counts(
        model_config, shape.batch, shape.prompt_length, shape.new_tokens
    )
    if profile:
        text = lower_decode(model, params, batch, settings_for(shape.new_tokens), rng=rng).compile()
        breakdown = step_breakdown(
            lambda: full().tokens.block_until_ready(), text.as_text(), shape.new_tokens
        )
        print(format_breakdown(f"{preset} {method}", breakdown, 1e3 * step), flush=True)
    by_memory, by_flops = nbytes / bandwidth, flops / peak
    bound = max(by_memory, by_flops)
    return dict(
        preset=preset,
        method=method,
        dtype=dtype,
        **dataclasses.asdict(shape),
        tokens_per_s=shape.batch * shape.new_tokens / total,
        total_s=total,
        ttft_s=ttft,
        step_ms=1e3 * step,
        decode_tokens_per_s=shape.batch / step,
        step_gflop=flops / 1e9,
        step_gbytes=nbytes / 1e9,
        bound_ms=1e3 * bound,
        bound_fraction=bound / step,
        bound_by="memory" if by_memory >= by_flops else "flops",
        rows_ended_early=int(np.sum(lengths < shape.new_tokens)),
        longest_row=int(lengths.max()),
    )


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench --decode", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--presets", default="t5-small,decoder-125m")
    p.add_argument("--methods", default="greedy,sample", help=f"sample uses {SAMPLING}")
    p.add_argument("--batch", type=int, default=DecodeShape.batch)
    p.add_argument("--prompt_length", type=int, default=DecodeShape.prompt_length)
    p.add_argument("--new_tokens", type=int, default=DecodeShape.new_tokens)
    p.add_argument("--dtype", default="float32", help="params, compute and cache dtype")
    p.add_argument("--repeats", type=int, default=2, help="timed decodes (best is kept)")
    p.add_argument("--json", help="write the rows to this file")
    p.add_argument(
        "--profile", action="store_true", help="also print where a step's time goes (per op group)"
    )
    return p.parse_args(argv)


def format_table(rows: list[dict]) -> str:
    def cell(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = [" | ".join(COLUMNS)] + [" | ".join(cell(r[c]) for c in COLUMNS) for r in rows]
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> list[dict]:
    args = parse_args(argv)
    shape = DecodeShape(args.batch, args.prompt_length, args.new_tokens)
    if shape.new_tokens < 2:
        raise ValueError("--new_tokens must be at least 2 (the step time excludes the first)")
    peak, bandwidth = measure_peak_matmul_flops(), measure_copy_bandwidth()
    rows = []
    for preset in args.presets.split(","):
        for method in args.methods.split(","):
            row = decode_row(
                preset,
                method,
                shape,
                dtype=args.dtype,
                peak=peak,
                bandwidth=bandwidth,
                repeats=args.repeats,
                profile=args.profile,
            )
            rows.append(dict(row, peak_gflops=peak / 1e9, copy_gb_per_s=bandwidth / 1e9))
            print(format_table(rows[-1:]).splitlines()[-1], flush=True)
    # the rates again at the end: a machine that slowed down shows here
    late_peak, late_bandwidth = measure_peak_matmul_flops(), measure_copy_bandwidth()
    print(format_table(rows))
    print(
        f"peak matmul {peak / 1e9:.0f} GFLOP/s (after: {late_peak / 1e9:.0f}), copy bandwidth "
        f"{bandwidth / 1e9:.1f} GB/s (after: {late_bandwidth / 1e9:.1f}); backend "
        f"{jax.default_backend()}, {jax.device_count()} device(s)"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return rows
