"""The pieces every thinking step shares: masks, the context forward (step 0), a step's input
embedding and its head (sampling, mixing, scored log-probabilities), copied rows."""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from t5x_rationale.architectures import attention as attn
from t5x_rationale.architectures.axes import constrain
from t5x_rationale.architectures.quiet_star_lm import QuietStarConfig
from t5x_rationale.architectures.stack import checkpointed
from t5x_rationale.quiet_star.functional_decoder import ACT, FunctionalDecoder
from t5x_rationale.quiet_star.sampling import sample_token, token_logp, without_ids
from t5x_rationale.quiet_star.spec import Context, ThinkingSpec

# ------------------------------------------------------------------------ masks


def context_mask(config: QuietStarConfig, segment_ids, length: int, step: int | jax.Array = 0):
    """[N or 1, 1, T, T]: stream i (at position i + step) may see context token j."""
    i = jnp.arange(length)[:, None]
    j = jnp.arange(length)[None, :]
    mask = (j <= i)[None, None]
    if config.sliding_window is not None:
        mask = mask & ((i + step - j) < config.sliding_window)[None, None]
    if segment_ids is not None:
        mask = mask & attn.segment_mask(segment_ids, segment_ids)
    return mask


def context_forward(fd: FunctionalDecoder, params, tokens, segment_ids):
    """Step 0: (h_base [N,T,H], base logits [N,T,V], per-layer keys and values
    [N, T, kv_heads, d])."""
    n, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (n, t))
    mask = context_mask(fd.config, segment_ids, t)
    x = constrain(fd.embed(params, tokens), ACT)

    def layer(p, x):
        q, k, v = fd.qkv(p, x, positions)
        out = attn.dot_product_attention(
            q, k, v, mask=mask, implementation=fd.config.attention_impl
        )
        return fd.finish(p, x, out), k, v

    layer = checkpointed(layer, fd.config.decoder.remat_policy)
    keys, values = [], []
    for p in fd.layer_params(params):
        x, k, v = layer(p, x)
        keys.append(k)
        values.append(v)
    h = fd.final_norm(params, x)
    return h, fd.lm_head(params, h), keys, values


def shift(x, offset, fill=0):
    """x[:, i + offset] along axis 1 (traced offset >= 0), `fill` past the end."""
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, x.shape[1])
    padded = jnp.pad(x, pad, constant_values=fill)
    return jax.lax.dynamic_slice_in_dim(padded, offset, x.shape[1], axis=1)


def step_input(fd: FunctionalDecoder, spec: ThinkingSpec, params, ctx: Context, k, sampled):
    """The input embedding of every stream at step k ([N, T, H])."""
    n_a = spec.num_ahead
    talk = shift(ctx.targets, jnp.maximum(k - n_a, 0))  # y[i + k - n_a]
    tokens = jnp.where(k >= n_a, talk, sampled)
    x = fd.embed(params, tokens)
    x = jnp.where(k == 1, fd.thought(params, "start_thought"), x)
    x = jnp.where(k == n_a - 1, fd.thought(params, "end_thought"), x)
    return constrain(x, ACT)


def step_head(
    fd: FunctionalDecoder,
    spec: ThinkingSpec,
    params,
    h_base,
    ctx: Context,
    k,
    hidden,
    copies: int = 1,
):
    """This step's outputs and the token it samples, computing only what the step kind needs.

    Thinking steps (k <= n_a - 3) sample the next thought token and score it for the policy
    term; scored steps (k >= n_a - 1) mix with h_base[i + s] and give log p(y[i + s]); step
    n_a - 2 (followed by the end thought) needs neither, so it skips the LM head; only the
    scored steps run the mixing head. Outputs a step does not compute are zeros. `k` is a
    Python int (unrolled steps) or traced (scan). At step 1 `hidden` may hold one row per
    group of `copies` identical rows (see `think`): the LM head runs once per group.
    """
    n_a = spec.num_ahead
    offset = jnp.maximum(k - n_a + 1, 0)
    zeros = jnp.zeros(ctx.targets.shape, jnp.float32)
    if copies > 1 and k != 1:
        raise ValueError(f"only step 1 takes one hidden row per {copies} copies, not step {k}")

    def result(logits=None, **computed):
        out = {
            "true_logp": zeros,
            "policy_logp": zeros,
            "sample_logp": zeros,
            "mixing_weight": zeros,
            "next_token": jnp.zeros(ctx.targets.shape, jnp.int32),
            **computed,
        }
        if spec.collect_logits:  # a step without the LM head computes it only to be inspected
            out["logits"] = fd.lm_head(params, hidden) if logits is None else logits
        return out

    def thinking():
        logits = repeat_copies(fd.lm_head(params, hidden), copies)
        token = _sample(fd, spec, ctx, k, logits)
        allowed = without_ids(logits, fd.config.thought_token_ids)
        return result(
            policy_logp=token_logp(allowed, token, spec.score_temperature),
            sample_logp=_sample_logp(spec, allowed, token),
            next_token=token,
            logits=logits,
        )

    def idle():
        return result()

    def scored():  # only these steps mix, so only they run the mixing head
        base_shift = shift(h_base, offset)  # h_base[i + s]
        w = fd.mixing_weight(params, base_shift, hidden)
        w_s = w[..., None].astype(hidden.dtype)
        logits = fd.lm_head(params, (1 - w_s) * base_shift + w_s * hidden)
        return result(
            true_logp=token_logp(logits, shift(ctx.targets, offset)),
            mixing_weight=w.astype(jnp.float32),
            logits=logits,
        )

    branches = (thinking, idle, scored)
    if isinstance(k, int):
        outputs = branches[0 if k <= n_a - 3 else 1 if k == n_a - 2 else 2]()
    else:
        outputs = jax.lax.switch(
            jnp.where(k <= n_a - 3, 0, jnp.where(k == n_a - 2, 1, 2)), branches
        )
    next_token = outputs["next_token"]
    return next_token, outputs


def _sample_logp(spec: ThinkingSpec, allowed_logits, token):
    """log p(token) at the sampling temperature (0 under argmax), for the entropy estimate."""
    if spec.sample_temperature == 0:
        return jnp.zeros(token.shape, jnp.float32)
    return jax.lax.stop_gradient(token_logp(allowed_logits, token, spec.sample_temperature))


def _sample(fd: FunctionalDecoder, spec: ThinkingSpec, ctx: Context, k, logits):
    """The token fed at step k + 1: sampled with the thought ids banned, or forced."""
    if ctx.forced_thoughts is not None:  # the token for step k + 1 is thought number k - 1
        index = jnp.clip(k - 1, 0, ctx.forced_thoughts.shape[-1] - 1)
        return jax.lax.dynamic_index_in_dim(ctx.forced_thoughts, index, axis=2, keepdims=False)
    return sample_token(
        logits, fd.config.thought_token_ids, spec.sample_temperature, jax.random.fold_in(ctx.rng, k)
    )


def first_copies(x: Optional[jax.Array], copies: int) -> Optional[jax.Array]:
    """The first row of every group of `copies` adjacent rows: [N, ...] -> [N / copies, ...]."""
    if x is None or copies == 1:
        return x
    return x.reshape((x.shape[0] // copies, copies) + x.shape[1:])[:, 0]


def repeat_copies(x: jax.Array, copies: int) -> jax.Array:
    """Each row `copies` times, copies adjacent: [B, ...] -> [B * copies, ...] (inverse of
    `first_copies`)."""
    return x if copies == 1 else jnp.repeat(x, copies, axis=0)
