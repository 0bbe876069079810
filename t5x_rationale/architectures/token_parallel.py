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

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp

from t5x_rationale.architectures import attention as attn
from t5x_rationale.architectures.append_scan import (
    Replay,
    append_scan,
    read_slot,
    replayed,
    write_slot,
)
from t5x_rationale.architectures.axes import constrain
from t5x_rationale.architectures.configs import resolve_dtype
from t5x_rationale.architectures.layers import DenseGeneral, RMSNorm
from t5x_rationale.architectures.position import apply_rope
from t5x_rationale.architectures.quiet_star_lm import MixingHead, QuietStarConfig
from t5x_rationale.architectures.stack import checkpointed
from t5x_rationale.architectures.stream_attention import replayed_stream_attention, stream_attention

IMPLEMENTATIONS = ("streams", "dense_mask")
# What a streams step can record for its backward instead of recomputing it. Per layer and
# step, a projection output costs rows x length x emb_dim values (query, out, down) or
# x mlp_dim (gate, up); "attention" is the attention output (x emb_dim) and its per-row
# log-normaliser, so the backward skips the attention forward.
RECORDABLE = ("query", "attention", "out", "gate", "up", "down")
_ACT = ("batch", "length", "embed")


@dataclasses.dataclass(frozen=True)
class ThinkingSpec:
    """Static settings of one thinking forward (reference defaults)."""

    num_ahead: int = 12  # n_a: base step + start + sampled thought tokens + end
    num_talk: int = 4  # n_t: true future tokens scored
    sample_temperature: float = 1.0
    score_temperature: float = 3.0  # the policy term's log-probabilities use this
    implementation: str = "streams"
    collect_logits: bool = False  # also return every step's logits (tests, inspection)
    # streams: what each step keeps for the backward instead of recomputing it (projection
    # outputs, the attention output; keys and values always come from the buffer); RECORDABLE.
    record: tuple[str, ...] = ("query", "attention", "out", "down")

    def __post_init__(self):
        if self.num_ahead < 4:
            raise ValueError(
                f"num_ahead must be >= 4 (base, start, >= 1 thought token, end), got {self.num_ahead}"
            )
        if self.num_talk < 1:
            raise ValueError(f"num_talk must be >= 1, got {self.num_talk}")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation {self.implementation!r} not in {IMPLEMENTATIONS}")
        unknown = set(self.record) - set(RECORDABLE)
        if unknown:
            raise ValueError(
                f"record: unknown name(s) {sorted(unknown)}; expected some of {RECORDABLE}"
            )
        if self.sample_temperature < 0 or self.score_temperature <= 0:
            raise ValueError(
                "sample_temperature must be >= 0 (0: argmax) and score_temperature positive"
            )

    @property
    def num_steps(self) -> int:
        """Steps after the base step (F - 1): the number of stream slots."""
        return self.num_ahead + self.num_talk - 2

    @property
    def num_thought_tokens(self) -> int:
        return self.num_ahead - 3


@dataclasses.dataclass(frozen=True)
class Context:
    """Per-batch inputs of the thinking steps (integer data, not differentiated)."""

    targets: jax.Array  # [N, T] y: the true next token of each position
    valid: jax.Array  # [N, T] bool: y[i] is a real target (weight > 0)
    segment_ids: Optional[jax.Array]  # [N, T] packed documents, or None
    rng: jax.Array  # sampling key; step k uses fold_in(rng, k)
    forced_thoughts: Optional[jax.Array] = None  # [N, T, n_a - 3] ids to use instead of sampling


jax.tree_util.register_dataclass(
    Context,
    data_fields=["targets", "valid", "segment_ids", "rng", "forced_thoughts"],
    meta_fields=[],
)


class FunctionalDecoder:
    """The decoder's layers as functions of its param tree (same math as `DecoderOnly`)."""

    def __init__(self, config: QuietStarConfig):
        self.config = config
        c = config.decoder
        self.dtype, self.param_dtype = resolve_dtype(c.dtype), resolve_dtype(c.param_dtype)

    def _dense(self, features, axes, p, x, axis=-1, out_float32=False):
        module = DenseGeneral(
            features,
            axes,
            axis=axis,
            dtype=self.dtype,
            param_dtype=self.param_dtype,
            out_float32=out_float32,
        )
        return module.apply({"params": p}, x)

    def _norm(self, p, x):
        return RMSNorm(self.config.layer_norm_epsilon, self.dtype, self.param_dtype).apply(
            {"params": p}, x
        )

    def layer_params(self, params) -> list:
        dec = params["decoder"]
        if "layers" in dec:  # scanned layers: stacked along a leading axis
            return [
                jax.tree.map(lambda a, i=i: a[i], dec["layers"])
                for i in range(self.config.num_layers)
            ]
        return [dec[f"layers_{i}"] for i in range(self.config.num_layers)]

    def embed(self, params, tokens):
        table = constrain(params["token_embedder"]["embedding"], ("vocab", None))
        return jnp.take(table, tokens, axis=0).astype(self.dtype)

    def thought(self, params, name):
        return (params[name].astype(jnp.float32) * self.config.thought_scale).astype(self.dtype)

    def _linear(self, features, axes, axis=-1):
        """The projection `(inputs, kernel) -> output` of `_dense`, as `_project` takes it."""
        return lambda inputs, kernel: self._dense(
            features, axes, {"kernel": kernel}, inputs, axis=axis
        )

    @staticmethod
    def _project(name, fn, args, known, record):
        """`fn(*args)`, or the value `known[name]` differentiated as `fn`; kept in `record`."""
        value = replayed(fn, args, known[name]) if known and name in known else fn(*args)
        if record is not None:
            record[name] = value
        return value

    def qkv(self, p, x, positions, known=None, record=None):
        """Rotated queries, keys and values of one layer. `known` and `record` map the names
        query / key / value to projection outputs (see `_project`)."""
        c = self.config
        h = self._norm(p["pre_self_attention_layer_norm"], x)
        a = p["self_attention"]

        def projection(name, heads, axes, rope):
            linear = self._linear((heads, c.head_dim), ("embed", axes, "kv"))
            fn = (
                (lambda h, kernel: apply_rope(linear(h, kernel), positions, c.rope_theta))
                if rope
                else linear
            )
            y = self._project(name, fn, (h, a[name]["kernel"]), known, record)
            return constrain(y, ("batch", "length", axes, "kv"))

        return (
            projection("query", c.num_heads, "heads", True),
            projection("key", c.kv_heads, "kv_heads", True),
            projection("value", c.kv_heads, "kv_heads", False),
        )

    def finish(self, p, x, attention_out, known=None, record=None):
        """Output projection, residual, gated MLP, residual (the layer after attention)."""
        c, linear = self.config, self._linear
        out = self._project(
            "out",
            linear(c.emb_dim, ("heads", "kv", "embed"), axis=(-2, -1)),
            (attention_out, p["self_attention"]["out"]["kernel"]),
            known,
            record,
        )
        x = constrain(x + out, _ACT)
        h = self._norm(p["pre_mlp_layer_norm"], x)
        mlp = p["mlp"]
        gate = self._project(
            "gate", linear(c.mlp_dim, ("embed", "mlp")), (h, mlp["wi_0"]["kernel"]), known, record
        )
        up = self._project(
            "up", linear(c.mlp_dim, ("embed", "mlp")), (h, mlp["wi_1"]["kernel"]), known, record
        )
        hidden = constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp"))
        down = self._project(
            "down",
            linear(c.emb_dim, ("mlp", "embed")),
            (hidden, mlp["wo"]["kernel"]),
            known,
            record,
        )
        return constrain(x + down, _ACT)

    def final_norm(self, params, x):
        return self._norm(params["decoder"]["decoder_norm"], x)

    def lm_head(self, params, h):
        if self.config.tie_embeddings:
            table = params["token_embedder"]["embedding"].astype(self.dtype)
            logits = jnp.einsum(
                "...d,vd->...v", h.astype(self.dtype), table, preferred_element_type=jnp.float32
            )
        else:
            logits = self._dense(
                self.config.vocab_size,
                ("embed", "vocab"),
                params["decoder"]["logits_dense"],
                h,
                out_float32=True,
            )
        return constrain(logits, ("batch", "length", "vocab"))

    def mixing_weight(self, params, h_base, h_thought):
        w = MixingHead(self.config.emb_dim, self.param_dtype).apply(
            {"params": params["mixing_head"]}, h_base, h_thought
        )
        return jax.nn.sigmoid(w) if self.config.mixing_sigmoid else w


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


# ------------------------------------------------------------------- base step


def context_forward(fd: FunctionalDecoder, params, tokens, segment_ids):
    """Step 0: (h_base [N,T,H], base logits [N,T,V], per-layer keys and values [N, T, kv_heads, d])."""
    n, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (n, t))
    mask = context_mask(fd.config, segment_ids, t)
    x = constrain(fd.embed(params, tokens), _ACT)

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


# --------------------------------------------------------- shared step pieces


def _shift(x, offset, fill=0):
    """x[:, i + offset] along axis 1 (traced offset >= 0), `fill` past the end."""
    pad = [(0, 0)] * x.ndim
    pad[1] = (0, x.shape[1])
    padded = jnp.pad(x, pad, constant_values=fill)
    return jax.lax.dynamic_slice_in_dim(padded, offset, x.shape[1], axis=1)


def step_input(fd: FunctionalDecoder, spec: ThinkingSpec, params, ctx: Context, k, sampled):
    """The input embedding of every stream at step k ([N, T, H])."""
    n_a = spec.num_ahead
    talk = _shift(ctx.targets, jnp.maximum(k - n_a, 0))  # y[i + k - n_a]
    tokens = jnp.where(k >= n_a, talk, sampled)
    x = fd.embed(params, tokens)
    x = jnp.where(k == 1, fd.thought(params, "start_thought"), x)
    x = jnp.where(k == n_a - 1, fd.thought(params, "end_thought"), x)
    return constrain(x, _ACT)


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

    def result(
        true_logp=zeros, policy_logp=zeros, next_token=None, mixing_weight=zeros, logits=None
    ):
        out = {
            "true_logp": true_logp,
            "policy_logp": policy_logp,
            "mixing_weight": mixing_weight,
            "next_token": jnp.zeros(ctx.targets.shape, jnp.int32)
            if next_token is None
            else next_token,
        }
        if spec.collect_logits:  # a step without the LM head computes it only to be inspected
            out["logits"] = fd.lm_head(params, hidden) if logits is None else logits
        return out

    def thinking():
        logits = repeat_copies(fd.lm_head(params, hidden), copies)
        token = _sample(fd, spec, ctx, k, logits)
        return result(
            policy_logp=token_logp(logits, token, spec.score_temperature),
            next_token=token,
            logits=logits,
        )

    def idle():
        return result()

    def scored():  # only these steps mix, so only they run the mixing head
        base_shift = _shift(h_base, offset)  # h_base[i + s]
        w = fd.mixing_weight(params, base_shift, hidden)
        w_s = w[..., None].astype(hidden.dtype)
        logits = fd.lm_head(params, (1 - w_s) * base_shift + w_s * hidden)
        return result(
            true_logp=token_logp(logits, _shift(ctx.targets, offset)),
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


def token_logp(logits, ids, temperature: float = 1.0):
    """log softmax(logits / temperature)[ids] along the last axis."""
    log_probs = jax.nn.log_softmax(logits / temperature, axis=-1)
    return jnp.take_along_axis(log_probs, ids[..., None], axis=-1)[..., 0]


def sample_token(logits, banned_ids, temperature: float, rng):
    """A token drawn from softmax(logits / temperature) (0: argmax); `banned_ids` are never drawn.

    This is the distribution hard Gumbel-max sampling draws from, sampled by inverse CDF in
    two levels (a block of `_BLOCK` ids by its mass, then an id inside it by its mass), so
    each row needs two uniforms instead of vocabulary-many Gumbel draws, the cost that
    dominated a thinking step on CPU. A zero-mass (banned) id is never chosen: it adds
    nothing to a cumulative sum, so no threshold can fall on it.
    """
    banned = jnp.zeros(logits.shape[-1], bool).at[jnp.asarray(banned_ids, jnp.int32)].set(True)
    logits = jnp.where(banned, -jnp.inf, jax.lax.stop_gradient(logits).astype(jnp.float32))
    if temperature == 0:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    vocab = logits.shape[-1]
    blocks = -(-vocab // _BLOCK)
    scaled = jnp.pad(
        logits / temperature,
        [(0, 0)] * (logits.ndim - 1) + [(0, blocks * _BLOCK - vocab)],
        constant_values=-jnp.inf,
    )
    probs = jnp.exp(scaled - jnp.max(scaled, axis=-1, keepdims=True)).reshape(
        logits.shape[:-1] + (blocks, _BLOCK)
    )
    u = jax.random.uniform(rng, (2,) + logits.shape[:-1], minval=jnp.finfo(jnp.float32).tiny)
    block = _inverse_cdf(jnp.sum(probs, axis=-1), u[0])
    inside = jnp.take_along_axis(probs, block[..., None, None], axis=-2)[..., 0, :]
    return (block * _BLOCK + _inverse_cdf(inside, u[1])).astype(jnp.int32)


_BLOCK = 128


def _inverse_cdf(mass, u):
    """The index j with cdf[j - 1] < u * total <= cdf[j] along the last axis (mass >= 0)."""
    cdf = jnp.cumsum(mass, axis=-1)
    return jnp.sum(cdf < u[..., None] * cdf[..., -1:], axis=-1).astype(jnp.int32)


def _sample(fd: FunctionalDecoder, spec: ThinkingSpec, ctx: Context, k, logits):
    """The token fed at step k + 1: sampled with the thought ids banned, or forced."""
    if ctx.forced_thoughts is not None:  # the token for step k + 1 is thought number k - 1
        index = jnp.clip(k - 1, 0, ctx.forced_thoughts.shape[-1] - 1)
        return jax.lax.dynamic_index_in_dim(ctx.forced_thoughts, index, axis=2, keepdims=False)
    return sample_token(
        logits, fd.config.thought_token_ids, spec.sample_temperature, jax.random.fold_in(ctx.rng, k)
    )


# ------------------------------------------------------------- streams steps


def _stream_layers(
    fd: FunctionalDecoder,
    spec: ThinkingSpec,
    params,
    keys,
    values,
    x,
    slot_buffer,
    k,
    mask,
    replay: Optional[Replay] = None,
):
    """Every layer at stream step k: (last hidden, this step's keys, values, what each layer
    records for the backward: `spec.record`, nothing when replaying)."""
    n, t = x.shape[:2]
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32) + k, (n, t))
    slot_keys, slot_values = slot_buffer
    new_keys, new_values, records = [], [], []
    for layer, p in enumerate(fd.layer_params(params)):
        known = None if replay is None else _known(replay, layer)
        record = {}
        q, kk, vv = fd.qkv(p, x, positions, known, record)
        inputs = (
            q,
            keys[layer],
            values[layer],
            slot_keys[layer],
            slot_values[layer],
            kk,
            vv,
            k - 1,
            mask,
        )
        if known and "attention" in known:
            out = replayed_stream_attention(*inputs, *known["attention"])
        else:
            out, lse = stream_attention(*inputs)
            record["attention"] = (out, lse)
        x = fd.finish(p, x, out, known, record)
        new_keys.append(kk)
        new_values.append(vv)
        if replay is None:
            records.append({name: record[name] for name in spec.record})
    return x, tuple(new_keys), tuple(new_values), records


def _first_step(
    fd: FunctionalDecoder,
    spec: ThinkingSpec,
    params,
    keys,
    values,
    ctx: Context,
    segment_ids,
    copies: int,
):
    """Step 1, the start thought, once per group of `copies` identical rows: its streams see
    only the context, so the copies' layers and logits are equal; only the sampled token
    differs. Returns (next token [N, T], outputs [1, N, T], this step's keys and values per
    layer [N/copies, T, kv_heads, d]).

    It runs as a one-step `append_scan` over a one-slot buffer, so it records and replays
    what the later steps do, and its recomputation cannot be scheduled before the later
    steps' backward (it needs their cotangent of its keys and values).
    """
    n, t = keys[0].shape[:2]
    no_slots = jnp.zeros(
        keys[0].shape[:3] + (0,) + keys[0].shape[3:], keys[0].dtype
    )  # no stream token yet
    empty = (tuple(no_slots for _ in keys), tuple(no_slots for _ in values))

    def step(consts, statics, sampled, buffer, k, replay: Optional[Replay]):
        del sampled, buffer, k  # step 1 reads no slot and no sampled token
        params, keys, values = consts
        ctx, segment_ids = statics
        x = jnp.broadcast_to(fd.thought(params, "start_thought"), (n, t, fd.config.emb_dim))
        mask = context_mask(fd.config, segment_ids, t, 1)
        x, new_keys, new_values, records = _stream_layers(
            fd, spec, params, keys, values, x, empty, 1, mask, replay
        )
        token, outputs = step_head(fd, spec, params, None, ctx, 1, fd.final_norm(params, x), copies)
        return token, (new_keys, new_values), outputs, records

    one_slot = jnp.zeros(keys[0].shape[:3] + (1,) + keys[0].shape[3:], keys[0].dtype)
    buffer = (tuple(one_slot for _ in keys), tuple(one_slot for _ in values))
    token, slots, outputs = append_scan(
        step,
        (params, tuple(keys), tuple(values)),
        (ctx, segment_ids),
        jnp.zeros(ctx.targets.shape, jnp.int32),
        buffer,
        jnp.ones((1,), jnp.int32),
        index_fn=lambda k: k - 1,
        axis=3,
    )
    first_keys, first_values = read_slot(slots, 0, axis=3)
    return token, outputs, first_keys, first_values


def _streams(
    fd: FunctionalDecoder,
    spec: ThinkingSpec,
    params,
    h_base,
    keys,
    values,
    ctx: Context,
    segment_ids,
    copies: int,
):
    """Steps 1 .. F - 1; h_base, keys and values have one row per group of `copies` rows."""
    n, t = ctx.targets.shape
    _, _, kv_heads, d = keys[0].shape
    sampled, first, first_keys, first_values = _first_step(
        fd, spec, params, keys, values, ctx, segment_ids, copies
    )
    h_base, keys, values = (
        jax.tree.map(lambda x: repeat_copies(x, copies), tree) for tree in (h_base, keys, values)
    )

    def step(consts, statics, sampled, buffer, k, replay: Optional[Replay]):
        params, h_base, keys, values = consts
        mask = context_mask(fd.config, statics.segment_ids, t, k)
        x = step_input(fd, spec, params, statics, k, sampled)
        x, new_keys, new_values, records = _stream_layers(
            fd, spec, params, keys, values, x, buffer, k, mask, replay
        )
        next_token, outputs = step_head(
            fd, spec, params, h_base, statics, k, fd.final_norm(params, x)
        )
        return next_token, (new_keys, new_values), outputs, records

    # one [N, T, kv_heads, slots, d] array per layer: a layer's slots are read without a copy;
    # slot 0 holds step 1's keys and values, an input of the scan over steps 2 .. F - 1
    slots = jnp.zeros((n, t, kv_heads, spec.num_steps, d), keys[0].dtype)
    buffer = tuple(
        tuple(write_slot(slots, repeat_copies(x, copies), 0, axis=3) for x in first_kv)
        for first_kv in (first_keys, first_values)
    )
    steps = jnp.arange(2, spec.num_steps + 1, dtype=jnp.int32)
    _, _, outputs = append_scan(
        step,
        (params, h_base, keys, values),
        ctx,
        sampled,
        buffer,
        steps,
        index_fn=lambda k: k - 1,
        axis=3,
    )
    return jax.tree.map(lambda a, b: jnp.concatenate([a, b]), first, outputs)


def _known(replay: Replay, layer: int) -> dict:
    """One layer's values a recomputed step takes instead of recomputing: its key and value
    (the slot it wrote) and what it recorded (projection outputs; the attention's output
    and log-normaliser)."""
    slot_keys, slot_values = replay.slot
    return {"key": slot_keys[layer], "value": slot_values[layer], **replay.record[layer]}


# ---------------------------------------------------------- dense-mask steps


def dense_step_mask(context: jax.Array, steps: int) -> jax.Array:
    """[N or 1, 1, T, T * (steps + 1)]: the context block, then one identity block per step."""
    t = context.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(t, dtype=bool), context.shape[:2] + (t, t))
    return jnp.concatenate([context] + [eye] * steps, axis=-1)


def dense_layer_step(
    fd: FunctionalDecoder, p, x, earlier_keys: list, earlier_values: list, mask, k: int
):
    """One layer at dense step k: (x, this step's keys, values); attention over the context
    and every earlier step's keys (`earlier_keys`: k arrays [N, T, kv_heads, d]) and its own."""
    n, t = x.shape[:2]
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32) + k, (n, t))
    q, kk, vv = fd.qkv(p, x, positions)
    all_k = jnp.concatenate(list(earlier_keys) + [kk], axis=1)
    all_v = jnp.concatenate(list(earlier_values) + [vv], axis=1)
    out = attn.dot_product_attention(q, all_k, all_v, mask=mask)
    return fd.finish(p, x, out), kk, vv


def dense_step_head(
    fd: FunctionalDecoder, spec: ThinkingSpec, params, h_base, ctx: Context, k: int, x
):
    """The head of dense step k on the last layer's output: (sampled token, step outputs)."""
    return step_head(fd, spec, params, h_base, ctx, k, fd.final_norm(params, x))


def _dense_mask(
    fd: FunctionalDecoder,
    spec: ThinkingSpec,
    params,
    h_base,
    keys,
    values,
    ctx: Context,
    segment_ids,
    copies: int,
):
    """Steps 1 .. F - 1 for every row, as the reference runs them (one context row per group
    of `copies` rows comes in and is repeated)."""
    del segment_ids  # the steps' masks come from ctx, per row
    n, t = ctx.targets.shape
    h_base, keys, values = (
        jax.tree.map(lambda x: repeat_copies(x, copies), tree) for tree in (h_base, keys, values)
    )
    # the decoder's remat_policy per (step, layer) and per step head: what makes the
    # reference's T * (k + 1)-key scores fit at real lengths (none: store them all)
    remat_policy = fd.config.decoder.remat_policy
    layer_step = checkpointed(
        functools.partial(dense_layer_step, fd), remat_policy, static_argnums=(5,)
    )
    head = checkpointed(
        functools.partial(dense_step_head, fd, spec), remat_policy, static_argnums=(3,)
    )
    layers = fd.layer_params(params)
    step_keys = [
        [keys[layer]] for layer in range(len(layers))
    ]  # per layer: context, then each step
    step_values = [[values[layer]] for layer in range(len(layers))]
    sampled = jnp.zeros((n, t), jnp.int32)
    per_step = []
    for k in range(1, spec.num_steps + 1):
        mask = dense_step_mask(context_mask(fd.config, ctx.segment_ids, t, k), k)
        x = step_input(fd, spec, params, ctx, k, sampled)
        for layer, p in enumerate(layers):
            x, kk, vv = layer_step(p, x, step_keys[layer], step_values[layer], mask, k)
            step_keys[layer].append(kk)
            step_values[layer].append(vv)
        sampled, outputs = head(params, h_base, ctx, k, x)
        per_step.append(outputs)
    return jax.tree.map(lambda *xs: jnp.stack(xs), *per_step)


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
    axis (index k - 1 for step k): `true_logp`, `policy_logp`, `mixing_weight`,
    `next_token` ([steps, N, T]) and, with `collect_logits`, `logits`.
    """
    if copies < 1 or tokens.shape[0] % copies:
        raise ValueError(
            f"copies must be a positive divisor of the {tokens.shape[0]} rows, got {copies}"
        )
    fd = FunctionalDecoder(config)
    tokens, segment_ids = first_copies(tokens, copies), first_copies(ctx.segment_ids, copies)
    h_base, base_logits, keys, values = context_forward(fd, params, tokens, segment_ids)
    run = _streams if spec.implementation == "streams" else _dense_mask
    outputs = run(fd, spec, params, h_base, keys, values, ctx, segment_ids, copies)
    return dict(outputs, h_base=repeat_copies(h_base, copies), base_logits=base_logits)


def first_copies(x: Optional[jax.Array], copies: int) -> Optional[jax.Array]:
    """The first row of every group of `copies` adjacent rows: [N, ...] -> [N / copies, ...]."""
    if x is None or copies == 1:
        return x
    return x.reshape((x.shape[0] // copies, copies) + x.shape[1:])[:, 0]


def repeat_copies(x: jax.Array, copies: int) -> jax.Array:
    """Each row `copies` times, copies adjacent: [B, ...] -> [B * copies, ...] (inverse of `first_copies`)."""
    return x if copies == 1 else jnp.repeat(x, copies, axis=0)
