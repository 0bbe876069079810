"""Quiet-STaR thinking: streams == dense_mask == a naive per-position loop; thought sampling."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from quiet_star_checks import N_A, N_T, _close, _tokens
from quiet_star_models import (
    BIASES_AND_LLAMA3_ROPE,
    thought_ids_likeliest,
    tiny_config,
    tiny_params,
)

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


def _naive_step_logits(config, params, tokens, targets, thoughts, segment_ids=None):
    """For each position separately: its document's tokens up to it, then start, thoughts,
    end and true tokens, through DecoderOnly (its own causal mask, positions and sliding
    window). Positions of a packed row's padding (segment 0) are left at zero.

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
    apply = jax.jit(lambda seq: DecoderOnly(wide).apply({"params": p}, seq))
    n, t = tokens.shape
    segments = np.ones((n, t), np.int32) if segment_ids is None else np.asarray(segment_ids)
    padded_targets = np.concatenate([np.asarray(targets), np.zeros((n, N_T), np.int32)], axis=1)
    out = np.zeros((N_A + N_T - 2, n, t, vocab), np.float32)
    for r in range(n):
        for i in range(t):
            if segments[r, i] == 0:
                continue
            start = i
            while start > 0 and segments[r, start - 1] == segments[r, i]:
                start -= 1
            stream = [vocab, *np.asarray(thoughts[r, i]), vocab + 1]
            stream += list(padded_targets[r, i : i + N_T - 1])
            seq = np.concatenate([np.asarray(tokens[r, start : i + 1]), stream])[None]
            logits = np.asarray(apply(jnp.asarray(seq, jnp.int32)))[0, i - start + 1 :, :vocab]
            out[:, r, i] = logits  # the predictions after each stream token
    return out


def _thought_only(params):
    """`params` with a mixing head that outputs w = 1 everywhere, so the scored steps carry
    the thought's own logits (with w = 0 they would carry the base logits)."""
    mixing = jax.tree.map(jnp.zeros_like, params["mixing_head"])
    mixing["hidden_1_bias"] = jnp.ones_like(mixing["hidden_1_bias"])  # every unit ReLU(1) = 1
    mixing["out_kernel"] = mixing["out_kernel"].at[0, 0].set(1.0)  # so w = 1
    return dict(params, mixing_head=mixing)


@pytest.mark.parametrize(
    "overrides",
    [dict(num_kv_heads=4), dict(num_kv_heads=8, **BIASES_AND_LLAMA3_ROPE)],
    ids=["kv4", "kv8-qkv-bias-llama3-rope"],
)
def test_streams_equals_dense_mask_equals_naive_loop(overrides):
    """The thinking forward, which runs the decoder's pieces on its params (functional_decoder),
    equals the decoder module (the naive loop), q/k/v biases and RoPE scaling included."""
    config = tiny_config(**overrides)
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
    # Unmixed step logits: compare the naive loop with a head that mixes in only the thought.
    thought_only = _think(config, _thought_only(params), tokens, ctx, "streams")
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


@pytest.mark.parametrize("implementation", ["streams", "dense_mask"])
def test_packed_rows_and_sliding_window_match_the_naive_loop(implementation):
    """Two documents and padding in a row, grouped-query attention, and a sliding window
    (8) that cuts the context but covers a whole thought (7 steps): every stream equals its
    document's prefix and thought run through the ordinary decoder."""
    config = tiny_config(sliding_window=8)
    params = tiny_params(config, mixing_random=True)
    n, t = 2, 16
    tokens = _tokens(n, t, seed=3)
    segments = jnp.asarray([[1] * 9 + [2] * 5 + [0] * 2, [1] * 16], jnp.int32)
    thoughts = _tokens(n * t, N_A - 3, seed=2).reshape(n, t, N_A - 3)
    ctx = _context(tokens, thoughts, segment_ids=segments)
    got = _think(config, _thought_only(params), tokens, ctx, implementation)
    naive = _naive_step_logits(config, params, tokens, ctx.targets, thoughts, segments)
    real = np.asarray(segments) > 0
    _close(np.asarray(got["logits"])[:, real], naive[:, real])


def test_a_window_shorter_than_a_thought_is_refused():
    config = tiny_config(sliding_window=N_A + N_T - 3)  # one position short of a thought
    tokens = _tokens(1, 8)
    with pytest.raises(ValueError, match="sliding_window"):
        _think(config, tiny_params(config), tokens, _context(tokens), "streams")


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


def test_thought_ids_appended_after_the_vocabulary_mask_nothing_and_are_checked():
    """An imported vocabulary's thought ids are the two after it (as the paper adds them):
    the LM head has no such columns, so the sampler's mask leaves every column as it was,
    while in-vocabulary ids in the same tuple are still masked; ids past those two are
    refused."""
    from t5x_rationale.architectures import QuietStarConfig, get_preset
    from t5x_rationale.quiet_star.sampling import without_ids

    vocab = 256
    logits = jax.random.normal(jax.random.PRNGKey(0), (3, vocab))
    np.testing.assert_array_equal(without_ids(logits, (vocab, vocab + 1)), logits)
    masked = np.asarray(without_ids(logits, (7, vocab)))
    np.testing.assert_array_equal(masked[:, 7], -1e10)
    np.testing.assert_array_equal(np.delete(masked, 7, 1), np.delete(np.asarray(logits), 7, 1))
    decoder = get_preset("decoder-tiny", vocab_size=vocab)
    QuietStarConfig(decoder, thought_token_ids=(vocab, vocab + 1))
    with pytest.raises(ValueError, match=r"or the two appended after it \(256, 257\)"):
        QuietStarConfig(decoder, thought_token_ids=(vocab, vocab + 2))


def test_thinking_with_appended_thought_ids_equals_thinking_that_bans_nothing():
    """With the thought ids appended (outside the head), a thinking step computes exactly what
    it computes with no thought ids to ban: nothing indexes past the head."""
    base = tiny_config()
    params = tiny_params(base)
    tokens = _tokens(2, 12, seed=4)
    outs = [
        _think(
            dataclasses.replace(base, thought_token_ids=ids),
            params,
            tokens,
            _context(tokens),
            "streams",
        )
        for ids in ((256, 257), ())
    ]
    for name in ("next_token", "logits"):
        np.testing.assert_array_equal(np.asarray(outs[0][name]), np.asarray(outs[1][name]))
