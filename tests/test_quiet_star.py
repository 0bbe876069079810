"""Quiet-STaR thinking: streams == dense_mask == a naive per-position loop; thought sampling."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from quiet_star_checks import N_A, N_T, _close, _tokens
from quiet_star_models import thought_ids_likeliest, tiny_config, tiny_params

from t5x_rationale.architectures import DecoderOnly
from t5x_rationale.quiet_star.sampling import sample_token
from t5x_rationale.quiet_star.spec import Context, ThinkingSpec
from t5x_rationale.quiet_star.think import think


def _context(tokens, thoughts=None, segment_ids=None):
    targets = jnp.concatenate([tokens[:, 1:], jnp.zeros((tokens.shape[0], 1), jnp.int32)], axis=1)
    return Context(targets, targets > 0, segment_ids, jax.random.PRNGKey(5), thoughts)


def _think(config, params, tokens, ctx, implementation):
    spec = ThinkingSpec(N_A, N_T, implementation=implementation, collect_logits=True)
    return jax.jit(lambda p: think(config, spec, p, tokens, ctx))(params)


def _naive_step_logits(config, params, tokens, targets, thoughts):
    """For each position separately: context, start, thoughts, end, true tokens through DecoderOnly.

    The start/end thoughts become two extra vocabulary rows so the ordinary decoder embeds
    them; the extra logit columns are zero and dropped.
    """
    c = config.decoder
    vocab = c.vocab_size
    wide = dataclasses.replace(c, vocab_size=vocab + 2)
    p = {k: dict(params[k]) for k in ("token_embedder", "decoder")}
    scale = config.thought_scale
    p["token_embedder"]["embedding"] = jnp.concatenate(
        [
            params["token_embedder"]["embedding"],
            scale * params["start_thought"][None],
            scale * params["end_thought"][None],
        ]
    )
    kernel = params["decoder"]["logits_dense"]["kernel"]
    p["decoder"] = dict(p["decoder"], logits_dense={"kernel": jnp.pad(kernel, ((0, 0), (0, 2)))})
    model = DecoderOnly(wide)
    apply = jax.jit(lambda seq: model.apply({"params": p}, seq))
    n, t = tokens.shape
    padded_targets = np.concatenate([np.asarray(targets), np.zeros((n, N_T), np.int32)], axis=1)
    out = np.zeros((N_A + N_T - 2, n, t, vocab), np.float32)
    for i in range(t):
        stream = np.concatenate(
            [
                np.full((n, 1), vocab),
                np.asarray(thoughts[:, i]),
                np.full((n, 1), vocab + 1),
                padded_targets[:, i : i + N_T - 1],
            ],
            axis=1,
        )
        seq = jnp.asarray(
            np.concatenate([np.asarray(tokens[:, : i + 1]), stream], axis=1), jnp.int32
        )
        logits = np.asarray(apply(seq))[:, i + 1 :, :vocab]  # predictions after each stream token
        out[:, :, i] = np.moveaxis(logits, 1, 0)
    return out


@pytest.mark.parametrize("kv_heads", [4, 8])
def test_streams_equals_dense_mask_equals_naive_loop(kv_heads):
    config = tiny_config(num_kv_heads=kv_heads)
    params = tiny_params(config)
    n, t = 2, 12
    tokens = _tokens(n, t)
    thoughts = _tokens(n * t, N_A - 3, seed=1).reshape(n, t, N_A - 3)
    ctx = _context(tokens, thoughts)
    streams = _think(config, params, tokens, ctx, "streams")
    dense = _think(config, params, tokens, ctx, "dense_mask")
    for key in ("logits", "true_logp", "policy_logp", "mixing_weight"):
        _close(streams[key], dense[key], err_msg=key)
    np.testing.assert_array_equal(
        streams["next_token"][: N_A - 3], np.moveaxis(np.asarray(thoughts), 2, 0)
    )
    # Unmixed step logits: with the mixing weight zero the scored steps carry the base
    # logits, so compare the naive loop with a head that mixes in only the thought (w = 1).
    mixed_out = dict(params, mixing_head=jax.tree.map(jnp.zeros_like, params["mixing_head"]))
    mixed_out["mixing_head"]["out_bias"] = jnp.ones((1,))
    thought_only = _think(config, mixed_out, tokens, ctx, "streams")
    naive = _naive_step_logits(config, params, tokens, ctx.targets, thoughts)
    _close(thought_only["logits"], naive)


@pytest.mark.parametrize("implementation", ["streams", "dense_mask"])
def test_copied_rows_share_the_context_and_start_step_exactly(implementation):
    """think(copies=P) on rows that repeat P times (the P thoughts of a position) runs the
    context forward, and with streams step 1, once per group; outputs and the gradients of
    a loss over them equal running every row (copies=1), sampled tokens included."""
    config = tiny_config(sliding_window=7)
    params = tiny_params(config, mixing_random=True)
    copies, t = 3, 12
    tokens = jnp.repeat(_tokens(2, t, seed=11), copies, axis=0)
    segments = jnp.repeat(jnp.asarray([[1] * 8 + [2] * 4, [1] * t], jnp.int32), copies, axis=0)
    ctx = _context(tokens, segment_ids=segments)
    spec = ThinkingSpec(N_A, N_T, implementation=implementation, collect_logits=True)
    weights = jax.random.normal(jax.random.PRNGKey(8), (3,) + tokens.shape)

    def run(p, c):
        out = think(config, spec, p, tokens, ctx, copies=c)
        base = jnp.repeat(out["base_logits"], c, axis=0)
        scalar = sum(jnp.sum(w * out[k]) for w, k in zip(weights[:2], ("true_logp", "policy_logp")))
        return scalar + jnp.sum(weights[2] * jax.nn.log_softmax(base)[..., 0]), dict(
            out, base_logits=base
        )

    (v_1, one), g_1 = jax.jit(jax.value_and_grad(lambda p: run(p, 1), has_aux=True))(params)
    (v_p, shared), g_p = jax.jit(jax.value_and_grad(lambda p: run(p, copies), has_aux=True))(params)
    np.testing.assert_array_equal(shared["next_token"], one["next_token"])
    for key in ("logits", "true_logp", "policy_logp", "mixing_weight", "h_base", "base_logits"):
        _close(shared[key], one[key], err_msg=key)
    np.testing.assert_allclose(v_p, v_1, rtol=1e-5)
    for (path, a), b in zip(jax.tree.leaves_with_path(g_p), jax.tree.leaves(g_1)):
        _close(a, b, err_msg=jax.tree_util.keystr(path))
    assert float(np.abs(g_p["start_thought"]).max()) > 0
    with pytest.raises(ValueError, match="copies"):
        think(config, spec, params, tokens, ctx, copies=4)


def test_packed_rows_and_sliding_window_match_dense_mask():
    config = tiny_config(sliding_window=5)
    params = tiny_params(config, mixing_random=True)
    tokens = _tokens(2, 16, seed=3)
    segments = jnp.asarray([[1] * 9 + [2] * 5 + [0] * 2, [1] * 16], jnp.int32)
    ctx = _context(tokens, segment_ids=segments)
    streams = _think(config, params, tokens, ctx, "streams")
    dense = _think(config, params, tokens, ctx, "dense_mask")
    np.testing.assert_array_equal(streams["next_token"], dense["next_token"])
    _close(streams["logits"], dense["logits"])


def test_mixed_logits_equal_base_logits_at_initialisation():
    config = tiny_config()
    params = tiny_params(config)
    tokens = _tokens(2, 10, seed=4)
    out = _think(config, params, tokens, _context(tokens), "streams")
    base = np.asarray(
        DecoderOnly(config.decoder).apply(
            {"params": {k: params[k] for k in ("token_embedder", "decoder")}}, tokens
        )
    )
    np.testing.assert_allclose(out["base_logits"], base, atol=1e-5)
    assert np.all(np.asarray(out["mixing_weight"]) == 0.0)
    for s in range(N_T):  # scored step s at position i carries the base logits of position i + s
        step = N_A - 2 + s
        np.testing.assert_allclose(out["logits"][step][:, : 10 - s], base[:, s:], atol=1e-5)


def test_sampled_thoughts_never_contain_thought_ids():
    config = tiny_config()
    params = thought_ids_likeliest(config, tiny_params(config))
    tokens = _tokens(4, 16, seed=6)
    out = _think(config, params, tokens, _context(tokens), "streams")
    sampled = np.asarray(out["next_token"][: N_A - 3])
    logits = np.asarray(out["logits"][: N_A - 3])
    assert np.isin(np.argmax(logits, -1), config.thought_token_ids).mean() > 0.9, (
        "the ids must be the likeliest"
    )
    assert not np.isin(sampled, config.thought_token_ids).any()
    assert len(np.unique(sampled)) > 10  # still a sample, not a constant


def test_sampler_draws_from_the_tempered_softmax_without_banned_ids():
    """Frequencies of 100k draws match softmax(logits / t) within 5 sigma (vocab 300: 3 blocks,
    the last one partial); the banned ids, made the likeliest, are never drawn."""
    vocab, draws, temperature = 300, 100_000, 0.7
    logits = 2.0 * jax.random.normal(jax.random.PRNGKey(2), (vocab,))
    logits = logits.at[3].set(9.0).at[4].set(8.0)
    keys = jax.random.split(jax.random.PRNGKey(3), draws)
    got = jax.jit(jax.vmap(lambda k: sample_token(logits, (3, 4), temperature, k)))(keys)
    freq = np.bincount(np.asarray(got), minlength=vocab) / draws
    z = np.asarray(logits, np.float64) / temperature
    z[[3, 4]] = -np.inf
    p = np.exp(z - z.max())
    p /= p.sum()
    assert freq[3] == 0 and freq[4] == 0
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / draws) + 1e-4)
