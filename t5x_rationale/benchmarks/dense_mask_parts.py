"""The dense_mask Quiet-STaR train step timed part by part, for lengths where it cannot run whole.

At 1024 tokens the reference construction's step needs far more memory than one host has
(XLA keeps every step's [T, T * (k + 1)] scores, or many of them, alive at once), so
`python -m t5x_rationale.bench --objective quiet_star --implementation dense_mask --by_parts`
times its pieces instead, each compiled and run forward + backward on its own with the real
shapes, and adds them up as a sequential executor would run them:

    microbatches x (context + sum over steps k of (layers x layer_k + head_k)) + optimizer

- context: step 0 (`context_forward` and the base log-probabilities), once per group of
  `copies` identical rows, as `think` runs it;
- layer_k: `dense_layer_step` at step k (attention over T * (k + 1) keys); every layer has
  the same shapes, so one layer is timed per step and counted `num_layers` times;
- head_k: `dense_step_head` (final norm, LM head, sampling or mixing) and the embedding of
  the next step's input;
- optimizer: the AdamW update on the whole param tree.

What the sum leaves out: the loss combination (per-position vectors) and the fusion XLA
would do across part boundaries. `bench --by_parts` at a length where the whole step also
runs measures how far the sum is from the real step.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from t5x_rationale.quiet_star.dense_mask import dense_layer_step, dense_step_head, dense_step_mask
from t5x_rationale.quiet_star.functional_decoder import FunctionalDecoder
from t5x_rationale.quiet_star.sampling import token_logp
from t5x_rationale.quiet_star.spec import Context, ThinkingSpec
from t5x_rationale.quiet_star.steps import context_forward, context_mask, step_input


def _median_seconds(fn: Callable, args: tuple, repeats: int) -> float:
    """Median seconds of jitted fn(*args), compiled ahead and run once untimed first."""
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def _time_vjp(fn: Callable, args: tuple, repeats: int) -> float:
    """Median seconds of fn's forward and its backward (all-ones output cotangents)."""

    def fwd_bwd(*args):
        out, vjp = jax.vjp(fn, *args)
        return vjp(jax.tree.map(jnp.ones_like, out))

    return _median_seconds(fwd_bwd, args, repeats)


def _normal(key, shape):
    return jax.random.normal(key, shape, jnp.float32)


def dense_mask_parts(
    fd: FunctionalDecoder,
    spec: ThinkingSpec,
    params: Any,
    tx,
    *,
    rows: int,
    length: int,
    microbatches: int,
    copies: int = 1,
    repeats: int = 2,
    log: Callable[[str], None] = print,
) -> dict:
    """Seconds per part and their sum for one dense_mask train step on `rows` rows
    (batch x P, P = `copies`) split into `microbatches`; random inputs of the real shapes."""
    n, t = rows // microbatches, length
    if n % copies:
        raise ValueError(f"a microbatch's {n} rows must hold whole groups of {copies} copies")
    c = fd.config.decoder
    keys = iter(jax.random.split(jax.random.PRNGKey(0), 8))
    tokens = jax.random.randint(next(keys), (n, t), 7, c.vocab_size, jnp.int32)
    ctx = Context(targets=tokens, valid=tokens > 0, segment_ids=None, rng=jax.random.PRNGKey(1))
    h_base = _normal(next(keys), (n, t, c.emb_dim))
    x = _normal(next(keys), (n, t, c.emb_dim))
    kv = _normal(next(keys), (n, t, c.kv_heads, c.head_dim))
    layer = fd.layer_params(params)[0]

    def context(params):  # one row per group of copies
        h, logits, ks, vs = context_forward(fd, params, tokens[: n // copies], None)
        return h, token_logp(logits, ctx.targets[: n // copies]), ks, vs

    parts = {"context": _time_vjp(context, (params,), repeats)}
    log(f"context {parts['context']:.3f} s")
    for k in range(1, spec.num_steps + 1):
        mask = dense_step_mask(context_mask(fd.config, None, t, k), k)
        earlier = [kv] * k

        def layer_step(p, x, ek, ev, k=k, mask=mask):
            return dense_layer_step(fd, p, x, ek, ev, mask, k)

        parts[f"layer_{k}"] = _time_vjp(layer_step, (layer, x, earlier, earlier), repeats)

        def head(params, h_base, x, k=k):
            sampled, outputs = dense_step_head(fd, spec, params, h_base, ctx, k, x)
            floats = {name: v for name, v in outputs.items() if name != "next_token"}
            if k < spec.num_steps:  # the next step's input embedding
                floats["next_input"] = step_input(fd, spec, params, ctx, k + 1, sampled)
            return floats

        parts[f"head_{k}"] = _time_vjp(head, (params, h_base, x), repeats)
        log(f"step {k}: layer {parts[f'layer_{k}']:.3f} s, head {parts[f'head_{k}']:.3f} s")
    parts["optimizer"] = _median_seconds(
        tx.update, (jax.tree.map(jnp.ones_like, params), tx.init(params), params), repeats
    )
    per_microbatch = parts["context"] + sum(
        c.num_layers * parts[f"layer_{k}"] + parts[f"head_{k}"]
        for k in range(1, spec.num_steps + 1)
    )
    return {"parts_s": parts, "step_s": microbatches * per_microbatch + parts["optimizer"]}
