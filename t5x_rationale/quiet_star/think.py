"""Quiet-STaR's token-parallel thinking forward, written over a `QuietStarLM` param tree.

Every position i of every row thinks at once. Step 0 is the ordinary causal forward (the
context). At step k >= 1, stream i's new token (position i + k) attends to the context
tokens 0..i and to its own tokens of steps 1..k, under one softmax. Two implementations:

- `streams` (default): scores over the context [T] and over the stream's own slots [k]
  under one softmax (`stream_attention`); stream keys/values kept per layer as
  [rows, T, kv_heads, slots, head_dim]; steps run as an `append_scan` (a `lax.scan`
  rematerialised per step, buffer stored once). The recomputation takes each step's keys
  and values back from the buffer and what `ThinkingSpec.record` names (projection outputs,
  the attention output) from the forward pass, so only the rest of the step (norms, the
  unrecorded projections and attention, the LM head) runs twice.
- `dense_mask`: the reference construction. Step k concatenates the context keys with the
  keys of every earlier step ([T * (k + 1)] keys) under a mask that is causal on the
  context block and the identity on each step block. Unrolled in Python; the executable
  reference and the fallback. The decoder's `remat_policy` applies per (step, layer) and
  per step head; without it the backward stores every step's [T, T * (k + 1)] scores.

Both implementations' context forward (step 0) applies the decoder's `remat_policy` per layer.
Rows that come as P identical copies (the P thoughts of each position, `think(copies=P)`)
share the context forward, and with `streams` step 1 (the start thought sees only the
context): both run once per group, and only the sampling is per row.

Step kinds (n_a = `num_ahead`, n_t = `num_talk`, F = n_a + n_t - 1 steps in all):
  k = 1: start thought; 2 <= k <= n_a - 2: a token sampled from step k-1's logits;
  k = n_a - 1: end thought; k >= n_a: the true token y[i + k - n_a] (teacher forcing).
Steps k >= n_a - 1 are scored: their hidden state is mixed with h_base[i + s] by the
mixing head and the mixed logits predict y[i + s], s = k - n_a + 1 (y = target tokens).
"""

from __future__ import annotations

from typing import Any

from t5x_rationale.architectures.quiet_star_lm import QuietStarConfig
from t5x_rationale.quiet_star.dense_mask import dense_mask_steps
from t5x_rationale.quiet_star.functional_decoder import FunctionalDecoder
from t5x_rationale.quiet_star.spec import Context, ThinkingSpec
from t5x_rationale.quiet_star.steps import context_forward, first_copies, repeat_copies
from t5x_rationale.quiet_star.streams import streams_steps

# ---------------------------------------------------------------- entry point


def think(
    config: QuietStarConfig, spec: ThinkingSpec, params, tokens, ctx: Context, copies: int = 1
) -> dict[str, Any]:
    """The whole token-parallel forward on rows `tokens` [N, T] (decoder inputs).

    `copies` > 1 says the rows come in groups of that many adjacent identical rows (tokens and
    segment ids; the P thoughts of each position): the context forward runs once per group,
    and with `streams` so does step 1, the start thought, which sees only the context.
    Sampling stays per row. Returns a dict with `h_base` [N,T,H], `base_logits`
    [N/copies, T, V] (one row per group) and per-step outputs stacked along a leading step
    axis (index k - 1 for step k): `true_logp`, `policy_logp`, `sample_logp` (the sampled
    token's log-probability at the sampling temperature), `mixing_weight`,
    `next_token` ([steps, N, T]) and, with `collect_logits`, `logits`.
    """
    check_window(config, spec.num_steps)
    if copies < 1 or tokens.shape[0] % copies:
        raise ValueError(
            f"copies must be a positive divisor of the {tokens.shape[0]} rows, got {copies}"
        )
    fd = FunctionalDecoder(config)
    tokens, segment_ids = first_copies(tokens, copies), first_copies(ctx.segment_ids, copies)
    h_base, base_logits, keys, values = context_forward(fd, params, tokens, segment_ids)
    run = streams_steps if spec.implementation == "streams" else dense_mask_steps
    outputs = run(fd, spec, params, h_base, keys, values, ctx, segment_ids, copies)
    return dict(outputs, h_base=repeat_copies(h_base, copies), base_logits=base_logits)


def check_window(config: QuietStarConfig, num_steps: int) -> None:
    """A sliding window must cover a whole thought: a stream's token then always sees every
    earlier token of its own stream (at most `num_steps - 1` positions back), as the same
    tokens fed through the ordinary decoder would, and the window only limits the context."""
    window = config.sliding_window
    if window is not None and window < num_steps:
        raise ValueError(
            f"sliding_window {window} is shorter than a thought's {num_steps} steps "
            "(num_ahead + num_talk - 2); use a window of at least that many positions"
        )
