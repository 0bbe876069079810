"""Cached decoding (greedy, sampling, beam) against slow full-forward references.

Models are the tiny presets cut to one layer with random params (tests/random_params.py):
random logits are spread enough that continuations differ per row. References rerun the
full, non-cached forward; a fixed-width buffer padded after the prefix stands in for the
growing sequence (causal masking makes the padding invisible), so one compiled forward
serves every step.
"""

from __future__ import annotations

import functools
import itertools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta
from random_params import random_params

from t5x_rationale.architectures import build_model, get_preset
from t5x_rationale.inference import decoding
from t5x_rationale.inference.decoding import DecodeConfig, decode, length_normalizer
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh

EOS = 1
T = 8  # max_decode_length of most tests
# Row 0's prompt is the longest (no prefill beyond it), row 1's has length 1.
PROMPT_LENGTHS = (6, 1, 3, 4)
# Prompts of at least 3 tokens: the shared 2-token prefix is prefilled in one cached call.
LONG_PROMPT_LENGTHS = (3, 6, 5, 3)


# ----------------------------------------------------------------------------- set-ups


def make_prompts(lengths, vocab_size, seed=0, low=2):
    """Right-padded prompts [B, max(lengths)] of non-pad, non-EOS tokens."""
    rng = np.random.default_rng(seed)
    prompts = np.zeros((len(lengths), max(lengths)), np.int32)
    for row, length in enumerate(lengths):
        prompts[row, :length] = rng.integers(low, vocab_size, length)
    return prompts


@functools.lru_cache(maxsize=None)
def decoder_case(vocab_size=256, scan_layers=False, seed=1):
    """One layer, or two scanned ones (cache leaves then carry a leading layer axis)."""
    config = get_preset(
        "decoder-tiny",
        vocab_size=vocab_size,
        scan_layers=scan_layers,
        num_layers=2 if scan_layers else 1,
    )
    model = build_model(config)
    params = random_params(model, seed=seed, decoder_input_tokens=np.ones((1, 4), np.int32))
    return model, params


@functools.lru_cache(maxsize=None)
def encoder_decoder_case():
    """One encoder and one decoder layer; four encoder rows, one of them padded."""
    config = get_preset("t5-tiny", num_encoder_layers=1, num_decoder_layers=1)
    model = build_model(config)
    params = random_params(
        model,
        seed=2,
        encoder_input_tokens=np.ones((1, 4), np.int32),
        decoder_input_tokens=np.ones((1, 4), np.int32),
    )
    enc = np.random.default_rng(3).integers(2, config.vocab_size, (4, 7)).astype(np.int32)
    enc[1, 3:] = 0  # encoder padding in one row
    return model, params, {"encoder_input_tokens": enc}


def case(architecture, prompt_lengths=PROMPT_LENGTHS, scan_layers=False):
    """(model, params, batch) of one architecture."""
    if architecture == "encoder_decoder":
        return encoder_decoder_case()
    model, params = decoder_case(scan_layers=scan_layers)
    return model, params, {"decoder_prompt_tokens": make_prompts(prompt_lengths, 256)}


ARCHITECTURES = ["decoder", "encoder_decoder"]


# ------------------------------------------------------------------ full-forward references


@functools.lru_cache(maxsize=None)
def _forward(model):
    """Jitted teacher-forced forward returning log-probs [N, W, V]."""
    if model.config.architecture == "encoder_decoder":
        return jax.jit(lambda p, e, d: jax.nn.log_softmax(model.apply({"params": p}, e, d)))
    return jax.jit(lambda p, d: jax.nn.log_softmax(model.apply({"params": p}, d)))


def _prefix(model, batch, row):
    """Decoder tokens before the continuation: [0] or the row's prompt (an empty one is [0])."""
    if model.config.architecture == "encoder_decoder":
        return [0]
    prompt = list(np.asarray(batch["decoder_prompt_tokens"])[row])
    if "decoder_prompt_lengths" in batch:
        return prompt[: int(batch["decoder_prompt_lengths"][row])]
    nonpad = [i for i, t in enumerate(prompt) if t != 0]
    return prompt[: nonpad[-1] + 1] if nonpad else [0]


def continuation_log_probs(model, params, batch, row, continuations, max_decode_length):
    """[N, len] log-probs of each continuation's tokens after the row's prefix (full forward)."""
    prefix = _prefix(model, batch, row)
    width = (
        1
        if model.config.architecture == "encoder_decoder"
        else np.shape(batch["decoder_prompt_tokens"])[1]
    ) + max_decode_length
    inputs = np.zeros((len(continuations), width), np.int32)
    for i, cont in enumerate(continuations):
        seq = prefix + list(cont)
        inputs[i, : len(seq)] = seq
    if model.config.architecture == "encoder_decoder":
        enc = np.repeat(batch["encoder_input_tokens"][row : row + 1], len(continuations), axis=0)
        log_probs = np.asarray(_forward(model)(params, enc, inputs))
    else:
        log_probs = np.asarray(_forward(model)(params, inputs))
    return log_probs, len(prefix)


def uncached_greedy(model, params, batch, max_decode_length, eos_id=1):
    """Slow reference: per row, rerun the full forward on prefix + tokens so far; take the
    argmax."""
    rows = len(next(iter(batch.values())))
    tokens = np.zeros((rows, max_decode_length), np.int32)
    lengths = np.zeros((rows,), np.int32)
    for row in range(rows):
        seq = []
        while len(seq) < max_decode_length and (not seq or seq[-1] != eos_id):
            log_probs, start = continuation_log_probs(
                model, params, batch, row, [seq], max_decode_length
            )
            seq.append(int(np.argmax(log_probs[0, start + len(seq) - 1])))
        tokens[row, : len(seq)], lengths[row] = seq, len(seq)
    return tokens, lengths


def teacher_forced_scores(model, params, batch, tokens, lengths, max_decode_length):
    """[B] summed log-probs of each row's first `lengths` tokens under the full forward."""
    scores = []
    for row, (toks, length) in enumerate(zip(np.asarray(tokens), np.asarray(lengths))):
        cont = list(toks[:length])
        log_probs, start = continuation_log_probs(
            model, params, batch, row, [cont], max_decode_length
        )
        scores.append(sum(log_probs[0, start - 1 + i, t] for i, t in enumerate(cont)))
    return np.asarray(scores, np.float32)


def with_eos_like(model, params, token):
    """Params whose EOS output column copies `token`'s: EOS (lower id) wins wherever it would."""
    kernel = params["decoder"]["logits_dense"]["kernel"]
    kernel = kernel.at[:, EOS].set(kernel[:, token])
    return {**params, "decoder": {**params["decoder"], "logits_dense": {"kernel": kernel}}}


def check_eos_layout(result, max_decode_length):
    """Zeros after the first EOS, EOS kept, lengths counting up to it (else the full width)."""
    for toks, length in zip(np.asarray(result.tokens), np.asarray(result.lengths)):
        eos = np.flatnonzero(toks == EOS)
        expected = eos[0] + 1 if eos.size else max_decode_length
        assert length == expected
        assert not toks[length:].any()


# ----------------------------------------------------------------------------------- tests


def test_config_validation():
    with pytest.raises(ValueError, match="method"):
        DecodeConfig(4, method="nucleus")
    with pytest.raises(ValueError, match="max_decode_length"):
        DecodeConfig(0)
    with pytest.raises(ValueError, match="top_p"):
        DecodeConfig(4, top_p=0.0)
    with pytest.raises(ValueError, match="temperature"):
        DecodeConfig(4, temperature=0.0)
    with pytest.raises(ValueError, match="cannot be forbidden"):
        DecodeConfig(4, forbidden_ids=(3, EOS))
    assert DecodeConfig(4, forbidden_ids=[5, 3, 5]).forbidden_ids == (3, 5)
    model, params, batch = case("decoder")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        decode(model, params, batch, DecodeConfig(4, forbidden_ids=(256,)))
    with pytest.raises(ValueError, match="rng"):
        decode(model, params, batch, DecodeConfig(4, method="sample"))
    with pytest.raises(KeyError, match="encoder_input_tokens"):
        decode(*encoder_decoder_case()[:2], batch, DecodeConfig(4))


@pytest.mark.parametrize(
    "architecture,prompt_lengths",
    [("decoder", PROMPT_LENGTHS), ("decoder", LONG_PROMPT_LENGTHS), ("encoder_decoder", None)],
)
def test_cached_greedy_matches_uncached_reference(architecture, prompt_lengths):
    model, params, batch = case(architecture, prompt_lengths)
    result = decode(model, params, batch, DecodeConfig(T))
    want_tokens, want_lengths = uncached_greedy(model, params, batch, T)
    np.testing.assert_array_equal(np.asarray(result.tokens), want_tokens)
    np.testing.assert_array_equal(np.asarray(result.lengths), want_lengths)
    assert result.tokens.shape == (4, T) and result.tokens.dtype == jnp.int32
    # Non-trivial: rows differ and a row is not one repeated token.
    assert len({tuple(r) for r in want_tokens}) == 4 and len(set(want_tokens[0])) > 1
    np.testing.assert_allclose(
        np.asarray(result.scores),
        teacher_forced_scores(model, params, batch, want_tokens, want_lengths, T),
        rtol=1e-4,
    )


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_eos_ends_rows(architecture):
    model, params, batch = case(architecture)
    plain = np.asarray(decode(model, params, batch, DecodeConfig(T)).tokens)
    # Make EOS win where row 0 first emits the token at column 2.
    token = int(plain[0, 2])
    assert token not in plain[0, :2]
    eos_params = with_eos_like(model, params, token)
    result = decode(model, eos_params, batch, DecodeConfig(T))
    tokens = np.asarray(result.tokens)
    np.testing.assert_array_equal(tokens[0], list(plain[0, :2]) + [EOS] + [0] * (T - 3))
    assert int(result.lengths[0]) == 3
    check_eos_layout(result, T)
    want_tokens, want_lengths = uncached_greedy(model, eos_params, batch, T)
    np.testing.assert_array_equal(tokens, want_tokens)
    np.testing.assert_array_equal(np.asarray(result.lengths), want_lengths)
    np.testing.assert_allclose(
        np.asarray(result.scores),
        teacher_forced_scores(model, eos_params, batch, tokens, want_lengths, T),
        rtol=1e-4,
    )

    # Beam search with one beam is greedy, EOS included; length_penalty 0 keeps raw scores.
    beam = decode(
        model, eos_params, batch, DecodeConfig(T, method="beam", num_beams=1, length_penalty=0.0)
    )
    np.testing.assert_array_equal(np.asarray(beam.tokens), tokens)
    np.testing.assert_array_equal(np.asarray(beam.lengths), np.asarray(result.lengths))
    np.testing.assert_allclose(np.asarray(beam.scores), np.asarray(result.scores), rtol=1e-5)


def test_forbidden_ids_never_appear_in_greedy():
    model, params, batch = case("decoder")
    plain = np.asarray(decode(model, params, batch, DecodeConfig(T)).tokens)
    banned = tuple(int(t) for t in np.unique(plain) if t != EOS)
    result = decode(model, params, batch, DecodeConfig(T, forbidden_ids=banned))
    assert not np.isin(np.asarray(result.tokens), banned).any()
    check_eos_layout(result, T)


def test_beam_search_finds_the_exhaustive_best():
    """Vocab {0..3} with 0 forbidden and 3 steps: 16 beams keep every hypothesis, so the
    beam result must be the brute-force best under the length-normalised score. The seeds
    make the optimum something greedy misses, of a length that depends on alpha."""
    model, params = decoder_case(vocab_size=4, seed=4)
    limit = 3
    batch = {"decoder_prompt_tokens": make_prompts((3, 1, 2), 4, seed=0)}
    candidates = (
        [(EOS,)]
        + [(a, EOS) for a in (2, 3)]
        + [(a, b, c) for a, b in itertools.product((2, 3), repeat=2) for c in (1, 2, 3)]
    )
    lengths = jnp.asarray([len(c) for c in candidates])
    bests = {}
    for alpha in (0.0, 0.6):
        config = DecodeConfig(
            limit, method="beam", num_beams=16, length_penalty=alpha, forbidden_ids=(0,)
        )
        result = decode(model, params, batch, config)
        for row in range(3):
            log_probs, start = continuation_log_probs(model, params, batch, row, candidates, limit)
            sums = np.array(
                [
                    sum(log_probs[i, start - 1 + j, t] for j, t in enumerate(cand))
                    for i, cand in enumerate(candidates)
                ]
            )
            normalised = sums / np.asarray(length_normalizer(lengths, alpha))
            index = int(np.argmax(normalised))
            best = bests[alpha, row] = candidates[index]
            want = list(best) + [0] * (limit - len(best))
            np.testing.assert_array_equal(
                np.asarray(result.tokens[row]), want, err_msg=f"alpha {alpha}, row {row}"
            )
            assert int(result.lengths[row]) == len(best)
            np.testing.assert_allclose(float(result.scores[row]), normalised.max(), rtol=1e-5)
            allowed = log_probs[index, start - 1 : start - 1 + len(best), 1:]  # id 0 is forbidden
            assert not all(allowed[j].argmax() + 1 == t for j, t in enumerate(best)), (
                "greedy finds it"
            )
    assert any(bests[0.0, row] != bests[0.6, row] for row in range(3))


def test_beam_search_keeps_hypotheses_that_can_still_win():
    """A bigram 'model' (logits depend on the last token only, so no cache) through the beam
    loop: EOS is the best first token, but with alpha=2 the longer 2 2 2 wins; the search
    may only stop once no alive beam can beat the best finished one at any reachable length."""
    probs = np.full((4, 4), 1e-3)
    probs[0, 1:] = [0.5, 0.35, 0.15]  # after the start token 0
    probs[2, 2] = 1.0  # 2 is followed by 2
    table = jnp.log(probs / probs.sum(axis=1, keepdims=True))

    def step(cache, tokens):
        return table[tokens], cache

    def beam(num_beams):
        config = DecodeConfig(3, method="beam", num_beams=num_beams, length_penalty=2.0)
        return decoding._beam_loop(
            step,
            {},
            jnp.zeros((1, 1), jnp.int32),
            jnp.ones(1, jnp.int32),
            0,
            config,
            jnp.zeros(4, bool),
        )

    wide = beam(2)
    np.testing.assert_array_equal(np.asarray(wide.tokens), [[2, 2, 2]])
    assert int(wide.lengths[0]) == 3
    want = (table[0, 2] + 2 * table[2, 2]) / length_normalizer(jnp.asarray(3), 2.0)
    np.testing.assert_allclose(float(wide.scores[0]), float(want), rtol=1e-6)
    greedy = beam(1)  # one beam is greedy: EOS at once
    np.testing.assert_array_equal(np.asarray(greedy.tokens), [[EOS, 0, 0]])
    assert int(greedy.lengths[0]) == 1


def test_sampling():
    model, params, batch = case("decoder", LONG_PROMPT_LENGTHS)
    greedy = np.asarray(decode(model, params, batch, DecodeConfig(T)).tokens)
    # Hot sampling with greedy's tokens forbidden: reproducible per seed, never a forbidden id.
    banned = tuple(int(t) for t in np.unique(greedy) if t != EOS)
    config = DecodeConfig(T, method="sample", temperature=2.0, forbidden_ids=banned)
    first = decode(model, params, batch, config, rng=jax.random.PRNGKey(0))
    again = decode(model, params, batch, config, rng=jax.random.PRNGKey(0))
    other = decode(model, params, batch, config, rng=jax.random.PRNGKey(1))
    np.testing.assert_array_equal(np.asarray(first.tokens), np.asarray(again.tokens))
    assert not np.array_equal(np.asarray(first.tokens), np.asarray(other.tokens))
    for result in (first, other):
        assert not np.isin(np.asarray(result.tokens), banned).any()
        check_eos_layout(result, T)
    # Scores are the sampled tokens' log-probs at temperature 1.
    np.testing.assert_allclose(
        np.asarray(first.scores),
        teacher_forced_scores(model, params, batch, first.tokens, first.lengths, T),
        rtol=1e-4,
    )

    for narrow in (
        DecodeConfig(T, method="sample", top_k=1, temperature=2.0),
        DecodeConfig(T, method="sample", top_p=1e-6, temperature=2.0),
    ):
        result = decode(model, params, batch, narrow, rng=jax.random.PRNGKey(0))
        np.testing.assert_array_equal(np.asarray(result.tokens), greedy, err_msg=str(narrow))


def _sharded_params(model, params, partitioner):
    """Params placed by the Partitioner from the model's logical axis specs."""
    inputs = {"decoder_input_tokens": jnp.ones((1, 4), jnp.int32)}
    if model.config.architecture == "encoder_decoder":
        inputs["encoder_input_tokens"] = jnp.ones((1, 4), jnp.int32)
    boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), **inputs)["params"]
    shardings, _ = partitioner.shardings_for(meta.unbox(boxed), nn.get_partition_spec(boxed))
    return jax.device_put(params, shardings)


@pytest.mark.parametrize(
    "architecture,config",
    [
        # Prefill, then beams copy and reorder the (layer-scanned) cache.
        ("decoder", DecodeConfig(T, method="beam", num_beams=4)),
        ("encoder_decoder", DecodeConfig(T)),
    ],
    ids=["decoder-scan-beam", "encoder_decoder-greedy"],
)
def test_sharded_decoding_matches_one_device(architecture, config):
    model, params, batch = case(architecture, LONG_PROMPT_LENGTHS, scan_layers=True)
    want = decode(model, params, batch, config)
    partitioner = Partitioner(create_mesh(MeshConfig(2, 2, 2)))
    sharded = _sharded_params(model, params, partitioner)
    assert any(not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(sharded))
    with jax.set_mesh(partitioner.mesh), nn.logical_axis_rules(partitioner.rules):
        got = decode(model, sharded, partitioner.host_batch_to_global(batch), config)
    np.testing.assert_array_equal(np.asarray(got.tokens), np.asarray(want.tokens))
    np.testing.assert_array_equal(np.asarray(got.lengths), np.asarray(want.lengths))
    np.testing.assert_allclose(np.asarray(got.scores), np.asarray(want.scores), rtol=1e-4)
    assert got.tokens.sharding.spec[0] == ("data", "fsdp")  # rows stay split like training batches
