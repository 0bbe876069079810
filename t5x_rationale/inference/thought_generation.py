"""Generation with thoughts: every emitted token is preceded by a thought (Quiet-STaR inference).

Per emitted token, with the context (prompt plus everything emitted so far) in a KV cache:

1. the last context token's base hidden state h_base is already known (it was computed when
   that token entered the cache);
2. a thought stream runs the `num_ahead - 1` steps of training with n_t = 1: the start
   thought, `num_ahead - 3` sampled thought tokens (at `thought_temperature`, 0 = argmax,
   thought ids banned), the end thought. Each stream token attends to the cached context and
   to the stream's own earlier tokens, at positions advancing by one per step, exactly as
   in the token-parallel training forward; the stream's keys/values live in a small
   per-token buffer and are dropped afterwards;
3. the end thought's hidden state is mixed with h_base by the mixing head and the mixed
   logits choose the emitted token (greedy, or sampled at `temperature`), thought ids banned;
4. the emitted token runs one cached decoder step: its keys/values join the cache and its
   hidden state is the next h_base.

Prompts are right-padded [B, P] (0 = pad) of different lengths; row b's first emitted token
follows its last prompt token. The cost per emitted token is one cached step plus
`num_ahead - 1` cached stream steps, instead of re-running the whole prefix.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from t5x_rationale.architectures import attention as attn
from t5x_rationale.architectures.quiet_star_lm import QuietStarConfig
from t5x_rationale.inference.decoding import DecodeConfig, prompt_lengths
from t5x_rationale.quiet_star.functional_decoder import FunctionalDecoder
from t5x_rationale.quiet_star.sampling import sample_token, token_logp
from t5x_rationale.quiet_star.spec import ThinkingSpec
from t5x_rationale.quiet_star.steps import context_forward
from t5x_rationale.quiet_star.stream_attention import stream_attention
from t5x_rationale.quiet_star.think import check_window


@dataclasses.dataclass(frozen=True)
class ThoughtDecodeConfig:
    """Settings of thought generation (inference: n_t = 1, P = 1, near-zero thought temperature)."""

    max_decode_length: int = 32
    # the training run's thinking settings; only num_ahead is used (base + start +
    # num_ahead - 3 thought tokens + end), with n_t = 1 and P = 1 at inference
    thinking: ThinkingSpec = ThinkingSpec()
    # 0: argmax thoughts, so greedy decoding with thoughts is deterministic; the reference
    # samples them at 1 (its hard Gumbel draw ignores its tiny tau): set 1.0 to match it
    thought_temperature: float = 0.0
    temperature: float = 0.0  # emitted tokens; 0: greedy
    eos_id: Optional[int] = 1  # a row stops after emitting it (then emits 0); None: never
    forbidden_ids: tuple[int, ...] = ()  # never emitted (the thought ids never are either)

    def __post_init__(self):
        if self.max_decode_length < 1:
            raise ValueError(f"max_decode_length must be >= 1, got {self.max_decode_length}")
        if self.thought_temperature < 0 or self.temperature < 0:
            raise ValueError("thought_temperature and temperature must be >= 0")

    @property
    def num_ahead(self) -> int:
        return self.thinking.num_ahead


def from_decode_config(
    decode_config: DecodeConfig, thoughts: ThoughtDecodeConfig
) -> ThoughtDecodeConfig:
    """`thoughts` with the length, eos, forbidden ids and token temperature of `decode_config`."""
    if decode_config.method == "beam":
        raise ValueError(
            "DecodeConfig.method 'beam' is not supported with thoughts; use 'greedy' or 'sample'"
        )
    if decode_config.top_k or decode_config.top_p < 1:
        raise ValueError("DecodeConfig.top_k / top_p filtering is not supported with thoughts")
    temperature = 0.0 if decode_config.method == "greedy" else decode_config.temperature
    return dataclasses.replace(
        thoughts,
        max_decode_length=decode_config.max_decode_length,
        temperature=temperature,
        eos_id=decode_config.eos_id,
        forbidden_ids=tuple(decode_config.forbidden_ids),
    )


class ThoughtDecodeResult(NamedTuple):
    tokens: jax.Array  # [B, L] emitted tokens (0 after eos)
    thoughts: jax.Array  # [B, L, num_ahead - 3] the thought before each emitted token
    mixing_weight: jax.Array  # [B, L] w of the mixing head
    base_logp: jax.Array  # [B, L] log p_base(emitted token)
    mixed_logp: jax.Array  # [B, L] log p_mixed(emitted token)
    lengths: jax.Array  # [B] emitted tokens up to and including eos


def generate_with_thoughts(
    config: QuietStarConfig,
    params: Any,
    prompt: jax.Array,
    decode: ThoughtDecodeConfig,
    rng: Optional[jax.Array] = None,
    lengths: Optional[jax.Array] = None,
) -> ThoughtDecodeResult:
    """Emits `decode.max_decode_length` tokens after each right-padded prompt row.

    `lengths` [B] are the prompts' lengths; by default a prompt ends at its last non-zero
    token (wrong where id 0 is a text token that ends the prompt)."""
    if config.architecture != "quiet_star":
        raise TypeError(
            f"generate_with_thoughts needs a Quiet-STaR model, got {config.architecture}"
        )
    check_window(config, decode.num_ahead - 1)  # start, thought tokens, end, one talk step
    rng = jax.random.PRNGKey(0) if rng is None else rng
    prompt = jnp.asarray(prompt, jnp.int32)
    lengths = prompt_lengths(prompt) if lengths is None else jnp.asarray(lengths, jnp.int32)
    return _compiled(config, decode)(params, prompt, lengths, rng)


@functools.lru_cache(maxsize=16)
def _compiled(config: QuietStarConfig, decode: ThoughtDecodeConfig):
    return jax.jit(functools.partial(_generate, config, decode))


class _Cache(NamedTuple):
    keys: jax.Array  # [layers, B, P + L, kv_heads, d]
    values: jax.Array
    h_last: jax.Array  # [B, H] base hidden state of the last context token
    pos: jax.Array  # [B] context length (the next token's position)


def _generate(
    config: QuietStarConfig, decode: ThoughtDecodeConfig, params, prompt, lengths, rng
) -> ThoughtDecodeResult:
    fd = FunctionalDecoder(config)
    rows, prompt_len = prompt.shape
    h, _, keys, values = context_forward(fd, params, prompt, None)
    keys, values = jnp.stack(keys), jnp.stack(values)
    pad = ((0, 0), (0, 0), (0, decode.max_decode_length), (0, 0), (0, 0))
    cache = _Cache(
        jnp.pad(keys, pad), jnp.pad(values, pad), h[jnp.arange(rows), lengths - 1], lengths
    )

    def emit(carry, step_rng):
        cache, done = carry
        thought_rng, token_rng = jax.random.split(step_rng)
        thoughts, w, mixed_logits, base_logits = _think_once(fd, decode, params, cache, thought_rng)
        token = sample_token(
            mixed_logits,
            tuple(config.thought_token_ids) + tuple(decode.forbidden_ids),
            decode.temperature,
            token_rng,
        )
        token = jnp.where(done, 0, token)
        out = (
            token,
            thoughts,
            w,
            token_logp(base_logits, token),
            token_logp(mixed_logits, token),
            done,
        )
        if decode.eos_id is not None:
            done = done | (token == decode.eos_id)
        return (_append(fd, params, cache, token), done), out

    step_rngs = jax.random.split(rng, decode.max_decode_length)
    _, (tokens, thoughts, w, base_lp, mixed_lp, was_done) = jax.lax.scan(
        emit, (cache, jnp.zeros((rows,), bool)), step_rngs
    )
    rows_first = lambda x: jnp.moveaxis(x, 0, 1)  # noqa: E731
    return ThoughtDecodeResult(
        tokens=rows_first(tokens),
        thoughts=rows_first(thoughts),
        mixing_weight=rows_first(w),
        base_logp=rows_first(base_lp),
        mixed_logp=rows_first(mixed_lp),
        lengths=jnp.sum(~was_done, axis=0).astype(jnp.int32),
    )


def _cache_mask(config: QuietStarConfig, cache: _Cache, position, last):
    """[B, 1, 1, C]: a token at `position` sees cached tokens 0..last (sliding window applied)."""
    j = jnp.arange(cache.keys.shape[2])[None]
    mask = j <= last[:, None]
    if config.sliding_window is not None:
        mask = mask & ((position[:, None] - j) < config.sliding_window)
    return mask[:, None, None]


def _think_once(fd: FunctionalDecoder, decode: ThoughtDecodeConfig, params, cache: _Cache, rng):
    """One thought after each row's context: (thought ids, w, mixed logits, base logits)."""
    config, n_a = fd.config, decode.num_ahead
    layers = fd.layer_params(params)
    rows = cache.pos.shape[0]
    kv_heads, head_dim = cache.keys.shape[3:]
    slot_shape = (rows, 1, kv_heads, n_a - 1, head_dim)
    slot_keys = [jnp.zeros(slot_shape, cache.keys.dtype) for _ in layers]
    slot_values = [jnp.zeros(slot_shape, cache.values.dtype) for _ in layers]
    token, thoughts = jnp.zeros((rows,), jnp.int32), []
    for k in range(1, n_a):
        if k == 1:
            x = jnp.broadcast_to(fd.thought(params, "start_thought"), (rows, 1, config.emb_dim))
        elif k == n_a - 1:
            x = jnp.broadcast_to(fd.thought(params, "end_thought"), (rows, 1, config.emb_dim))
        else:
            x = fd.embed(params, token[:, None])
        position = cache.pos - 1 + k
        mask = _cache_mask(config, cache, position, cache.pos - 1)
        for layer, p in enumerate(layers):
            q, kk, vv = fd.qkv(p, x, position[:, None])
            out, _ = stream_attention(
                q,
                cache.keys[layer],
                cache.values[layer],
                slot_keys[layer],
                slot_values[layer],
                kk,
                vv,
                k - 1,
                mask,
            )
            slot_keys[layer] = slot_keys[layer].at[:, :, :, k - 1].set(kk)
            slot_values[layer] = slot_values[layer].at[:, :, :, k - 1].set(vv)
            x = fd.finish(p, x, out)
        hidden = fd.final_norm(params, x)
        if k <= n_a - 3:  # this step's logits choose the thought token fed at step k + 1
            token = sample_token(
                _logits(fd, params, hidden),
                config.thought_token_ids,
                decode.thought_temperature,
                jax.random.fold_in(rng, k),
            )
            thoughts.append(token)
    h_base = cache.h_last[:, None]
    w = fd.mixing_weight(params, h_base, hidden)
    w_h = w[..., None].astype(hidden.dtype)
    mixed = (1 - w_h) * h_base + w_h * hidden
    return (
        jnp.stack(thoughts, axis=1),
        w[:, 0].astype(jnp.float32),
        _logits(fd, params, mixed),
        _logits(fd, params, h_base),
    )


def _logits(fd: FunctionalDecoder, params, hidden):
    """[B, V] logits of one-token hidden states [B, 1, H]."""
    return fd.lm_head(params, hidden)[:, 0]


def _append(fd: FunctionalDecoder, params, cache: _Cache, token) -> _Cache:
    """One cached decoder step: `token` at each row's `pos` joins the cache; its h is the new
    h_last."""
    rows = token.shape[0]
    x = fd.embed(params, token[:, None])
    mask = _cache_mask(fd.config, cache, cache.pos, cache.pos)
    keys, values = cache.keys, cache.values
    for layer, p in enumerate(fd.layer_params(params)):
        q, kk, vv = fd.qkv(p, x, cache.pos[:, None])
        keys = keys.at[layer, jnp.arange(rows), cache.pos].set(kk[:, 0])
        values = values.at[layer, jnp.arange(rows), cache.pos].set(vv[:, 0])
        out = attn.dot_product_attention(
            q, keys[layer], values[layer], mask=mask, implementation=fd.config.attention_impl
        )
        x = fd.finish(p, x, out)
    return _Cache(keys, values, fd.final_norm(params, x)[:, 0], cache.pos + 1)
