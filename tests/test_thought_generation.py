"""Generation with thoughts: the KV-cached generator equals re-running the training forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from quiet_star_models import (
    BIASES_AND_LLAMA3_ROPE,
    thought_ids_likeliest,
    tiny_config,
    tiny_params,
)

from t5x_rationale.architectures import DecoderOnly
from t5x_rationale.inference.thought_generation import ThoughtDecodeConfig, generate_with_thoughts
from t5x_rationale.quiet_star.spec import Context, ThinkingSpec
from t5x_rationale.quiet_star.think import think

N_A = 6


def _uncached(config, params, prompt_row, steps, width):
    """Per emitted token, the whole prefix through the token-parallel forward (n_t = 1, P = 1).

    The prefix's last position's end-thought step is the scored step: its mixed logits choose
    the token; thought ids are banned by hand; thoughts are argmaxes (temperature 0). The
    prefix is right-padded to `width` so the forward compiles once: the forward is causal
    (a position and its thought see only earlier tokens), so padding after the prefix's last
    position changes nothing there.
    """
    spec = ThinkingSpec(N_A, 1, sample_temperature=0.0, collect_logits=True)
    run = jax.jit(
        lambda p, seq: think(
            config,
            spec,
            p,
            seq,
            Context(jnp.zeros_like(seq), jnp.ones(seq.shape, bool), None, jax.random.PRNGKey(0)),
        )
    )
    seq = list(prompt_row)
    tokens, thoughts, weights = [], [], []
    for _ in range(steps):
        last = len(seq) - 1
        out = run(params, jnp.asarray([seq + [0] * (width - len(seq))], jnp.int32))
        logits = np.array(out["logits"][N_A - 2, 0, last])
        logits[list(config.thought_token_ids)] = -np.inf
        token = int(np.argmax(logits))
        tokens.append(token)
        thoughts.append(np.asarray(out["next_token"][: N_A - 3, 0, last]))
        weights.append(float(out["mixing_weight"][N_A - 2, 0, last]))
        seq.append(token)
    return np.array(tokens), np.stack(thoughts), np.array(weights)


PROMPTS = [[9, 17, 33, 70, 5], [12, 200, 41]]  # ragged: right-padded below
# id 0 as a text token (byte-level BPE: "!"), inside and ending both prompts: lengths given
ZERO_PROMPTS = [[9, 0, 33, 70, 0], [0, 200, 0]]


@pytest.mark.parametrize(
    "overrides,prompts",
    [
        (dict(num_kv_heads=4), PROMPTS),
        # with q/k/v biases (held in the cached keys and values) and Llama 3's RoPE scaling
        (dict(num_kv_heads=8, sliding_window=6, **BIASES_AND_LLAMA3_ROPE), PROMPTS),
        (dict(num_kv_heads=4), ZERO_PROMPTS),
    ],
    ids=["gqa", "biases-llama3-rope", "id0-with-lengths"],
)
def test_cached_generation_equals_uncached_token_for_token(overrides, prompts):
    config = tiny_config(**overrides)
    params = tiny_params(config, mixing_random=True)
    steps = 7
    padded = np.zeros((2, 5), np.int32)
    for r, p in enumerate(prompts):
        padded[r, : len(p)] = p
    got = generate_with_thoughts(
        config,
        params,
        padded,
        ThoughtDecodeConfig(max_decode_length=steps, thinking=ThinkingSpec(N_A), eos_id=None),
        lengths=np.array([len(p) for p in prompts], np.int32) if prompts is ZERO_PROMPTS else None,
    )
    for r, p in enumerate(prompts):
        tokens, thoughts, weights = _uncached(config, params, p, steps, padded.shape[1] + steps)
        np.testing.assert_array_equal(got.tokens[r], tokens)
        np.testing.assert_array_equal(got.thoughts[r], thoughts)
        # float32 agreement: 1e-5 of the largest weight (the two run different summation orders)
        np.testing.assert_allclose(
            got.mixing_weight[r], weights, rtol=1e-5, atol=1e-5 * max(np.abs(weights).max(), 1.0)
        )
    assert np.all(np.asarray(got.lengths) == steps)
    assert np.any(np.asarray(got.mixing_weight) != 0)  # the thought took part in every prediction


def test_thought_ids_are_never_emitted_and_eos_stops_a_row():
    config = tiny_config()
    params = thought_ids_likeliest(config, tiny_params(config))
    prompt = np.asarray([[9, 17, 33], [12, 200, 41]], np.int32)
    out = generate_with_thoughts(
        config,
        params,
        prompt,
        ThoughtDecodeConfig(
            max_decode_length=6,
            thinking=ThinkingSpec(N_A),
            thought_temperature=1.0,
            temperature=1.0,
            eos_id=None,
        ),
        rng=jax.random.PRNGKey(3),
    )
    banned = np.asarray(config.thought_token_ids)
    base = DecoderOnly(config.decoder).apply(
        {"params": {k: params[k] for k in ("token_embedder", "decoder")}}, jnp.asarray(prompt)
    )
    assert np.isin(np.argmax(np.asarray(base), -1), banned).all(), "the ids must be the likeliest"
    assert not np.isin(np.asarray(out.tokens), banned).any()
    assert not np.isin(np.asarray(out.thoughts), banned).any()

    greedy = generate_with_thoughts(
        config,
        params,
        prompt,
        ThoughtDecodeConfig(max_decode_length=6, thinking=ThinkingSpec(N_A), eos_id=None),
    )
    eos = int(greedy.tokens[0, 2])  # row 0 emits this third: stop there
    stopped = generate_with_thoughts(
        config,
        params,
        prompt,
        ThoughtDecodeConfig(max_decode_length=6, thinking=ThinkingSpec(N_A), eos_id=eos),
    )
    first = int(np.argmax(np.asarray(greedy.tokens[0]) == eos))
    assert int(stopped.lengths[0]) == first + 1
    np.testing.assert_array_equal(stopped.tokens[0, : first + 1], greedy.tokens[0, : first + 1])
    assert np.all(np.asarray(stopped.tokens[0, first + 1 :]) == 0)
