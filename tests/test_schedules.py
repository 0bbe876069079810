"""Learning-rate schedules (runtime/optimizers.py) against closed forms and hand-checked values."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from t5x_rationale.runtime.optimizers import OptimizerConfig, make_schedule


def closed_form_lr(step, *, schedule, peak, warmup, total=None, end=0.0):
    """The documented schedule, written out per step."""
    if step < warmup:
        return peak * step / warmup
    if schedule == "constant":
        return peak
    if schedule == "rsqrt":
        return peak * math.sqrt(max(warmup, 1) / max(step, 1))
    frac = min(step - warmup, total - warmup) / (total - warmup)
    if schedule == "cosine":
        return peak * (end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * frac)))
    if schedule == "linear":
        return peak * (1.0 - (1.0 - end) * frac)
    raise AssertionError(schedule)


SCHEDULE_CASES = [
    dict(schedule="constant", warmup=0),
    dict(schedule="constant", warmup=10),
    dict(schedule="cosine", warmup=0, total=50),
    dict(schedule="cosine", warmup=10, total=50),
    dict(schedule="cosine", warmup=7, total=40, end=0.1),
    dict(schedule="linear", warmup=0, total=30),
    dict(schedule="linear", warmup=5, total=30, end=0.25),
    dict(schedule="rsqrt", warmup=0),
    dict(schedule="rsqrt", warmup=16),
]


@pytest.mark.parametrize(
    "case", SCHEDULE_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items())
)
def test_schedule_matches_closed_form(case):
    peak = 3e-3
    config = OptimizerConfig(
        learning_rate=peak,
        schedule=case["schedule"],
        warmup_steps=case["warmup"],
        total_steps=case.get("total"),
        end_lr_fraction=case.get("end", 0.0),
    )
    schedule = make_schedule(config)
    steps = list(range(0, 80)) + [100, 1000, 12345]
    got = np.asarray(schedule(jnp.asarray(steps, jnp.int32)))
    want = np.array(
        [
            closed_form_lr(
                s,
                peak=peak,
                warmup=case["warmup"],
                schedule=case["schedule"],
                total=case.get("total"),
                end=case.get("end", 0.0),
            )
            for s in steps
        ]
    )
    # atol: float32 cos(pi * t) has ~1e-7 absolute error, which near the end of a cosine decay
    # (1 + cos ~ 0) is a large relative error of a tiny value; it is tiny relative to the peak.
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7 * peak)
    # Scalar calls (as the trainer makes them) agree with the vectorised ones.
    for s in (0, case["warmup"], case["warmup"] + 1, 60):
        np.testing.assert_allclose(
            float(schedule(jnp.asarray(s, jnp.int32))),
            want[steps.index(s)],
            rtol=2e-6,
            atol=1e-7 * peak,
        )


def test_schedule_landmarks():
    """Hand-checked values: warmup starts at 0 and reaches the peak exactly at warmup_steps."""
    cosine = make_schedule(
        OptimizerConfig(
            learning_rate=1.0,
            schedule="cosine",
            warmup_steps=10,
            total_steps=110,
            end_lr_fraction=0.1,
        )
    )
    assert float(cosine(0)) == 0.0
    np.testing.assert_allclose(float(cosine(5)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(float(cosine(10)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(float(cosine(60)), 0.55, rtol=1e-6)  # half way: 0.1 + 0.9 * 0.5
    np.testing.assert_allclose(float(cosine(110)), 0.1, rtol=1e-6)
    np.testing.assert_allclose(float(cosine(500)), 0.1, rtol=1e-6)
    rsqrt = make_schedule(OptimizerConfig(learning_rate=0.01, schedule="rsqrt", warmup_steps=100))
    np.testing.assert_allclose(float(rsqrt(100)), 0.01, rtol=1e-6)
    np.testing.assert_allclose(float(rsqrt(400)), 0.005, rtol=1e-6)
    linear = make_schedule(OptimizerConfig(learning_rate=2.0, schedule="linear", total_steps=4))
    np.testing.assert_allclose(
        [float(linear(s)) for s in range(6)], [2.0, 1.5, 1.0, 0.5, 0.0, 0.0], atol=1e-7
    )
