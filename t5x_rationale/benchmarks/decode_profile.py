"""Where a decode's time goes: one decode under the JAX profiler, its ops grouped by what
they compute (from the compiled program's op names), in milliseconds per step.

    python -m t5x_rationale.bench --decode --profile

Ops that run at every step (the decode loop's) are divided by the number of steps; the rest
(encoder, prompt prefill, cache creation) is reported once. On CPU the ops of one program
mostly run one after the other (each may use every core), so the per-step sum comes close
to the measured step time on an otherwise idle machine.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import re
import tempfile

import jax

# (group, substrings of an op name); the first group that matches wins
GROUPS = (
    ("logits", ("logits_dense", "token_embedder.attend", "/logits")),
    ("attention over the cache", (".attend", "/attend")),
    ("q/k/v/out projections", ("attention/", "_attention.", "self_attention")),
    ("mlp", ("mlp",)),
    ("norms, residuals, embedding", ("norm", "residual", "embedder", "relpos", "rope")),
)
ONCE = "before the loop (encoder / prefill / cache)"


def op_groups(hlo_text: str) -> dict[str, str]:
    """Instruction name -> group, from the op_name metadata of compiled HLO text ("" for
    instructions without one)."""
    groups = {}
    for line in hlo_text.splitlines():
        found = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = ", line)
        if not found:
            continue
        op_name = re.search(r'op_name="([^"]*)"', line)
        if op_name is None and " dot(" in line:  # XLA leaves attention's dots unnamed
            groups[found.group(1)] = GROUPS[1][0]
            continue
        op_name = op_name.group(1) if op_name else ""
        groups[found.group(1)] = next(
            (g for g, keys in GROUPS if any(k in op_name for k in keys)), ""
        )
    return groups


def traced_ops(run) -> dict[str, tuple[float, int]]:
    """(total microseconds, count) per op name of the profiled `run()` (warm, compiled)."""
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory, create_perfetto_trace=True):
            run()
        (path,) = glob.glob(f"{directory}/**/*.trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    totals: dict[str, list] = collections.defaultdict(lambda: [0.0, 0])
    for event in events:
        if event.get("ph") == "X":
            totals[event["name"]][0] += event.get("dur", 0)
            totals[event["name"]][1] += 1
    return {name: (micros, count) for name, (micros, count) in totals.items()}


def step_breakdown(run, compiled_text: str, steps: int) -> dict[str, float]:
    """Milliseconds per group: per step for ops that run at every step (the loop's), once
    for the rest."""
    groups = op_groups(compiled_text)
    out: dict[str, float] = collections.Counter()
    for name, (micros, count) in traced_ops(run).items():
        if name not in groups:  # executor and thread-pool events, not ops
            continue
        if count < steps // 2:
            out[ONCE] += micros / 1e3
        else:
            out[groups[name] or "choosing the token, loop bookkeeping"] += micros / 1e3 / steps
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def format_breakdown(title: str, breakdown: dict[str, float], step_ms: float) -> str:
    loop = sum(v for k, v in breakdown.items() if k != ONCE)
    lines = [f"{title}: measured step {step_ms:.1f} ms, ops in the loop {loop:.1f} ms/step"]
    for group, ms in breakdown.items():
        unit = "ms once" if group == ONCE else "ms/step"
        lines.append(f"  {ms:9.1f} {unit}  {group}")
    return "\n".join(lines)
