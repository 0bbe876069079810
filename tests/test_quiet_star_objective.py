"""The Quiet-STaR objective: terms, losses and gradients, append_scan, sharded train steps."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from quiet_star_checks import N_A, N_T, _close, _tokens
from quiet_star_models import BIASES_AND_LLAMA3_ROPE, tiny_config, tiny_params

from t5x_rationale.architectures import build_model
from t5x_rationale.objectives.quiet_star import quiet_star_loss
from t5x_rationale.quiet_star.append_scan import append_scan, replayed
from t5x_rationale.quiet_star.spec import RECORDABLE, ThinkingSpec
from t5x_rationale.quiet_star.terms import advantages, quiet_star_terms
from t5x_rationale.runtime.optimizers import OptimizerConfig, make_optimizer
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.trainer import Trainer


def test_advantages_match_a_hand_computation():
    rewards = jnp.asarray([[1.0, -2.0, 0.5], [3.0, 0.0, 0.5], [0.2, 0.4, 0.6], [0.0, 0.0, 1.2]])
    want = np.array([[-1.0, -1.0, 0.0], [1.0, 1.0, 0.0], [0.1, 0.2, -0.3], [-0.1, -0.2, 0.3]])
    np.testing.assert_allclose(advantages(rewards, 2, clip=False), want, atol=1e-6)
    np.testing.assert_allclose(advantages(rewards, 2, clip=True), np.maximum(want, 0), atol=1e-6)


def _batch(n=2, t=12, seed=7, packed=False):
    """Random rows, the second ending in 3 padding tokens; `packed`: the first row holds two
    documents (segment ids 1 and 2), as the shipped run's packed batches do."""
    tokens = np.asarray(_tokens(n, t + 1, seed=seed))
    weights = np.ones((n, t), np.float32)
    weights[1, -3:] = 0  # padding at the end of the second row
    targets = tokens[:, 1:] * (weights > 0)
    batch = {
        "decoder_input_tokens": jnp.asarray(tokens[:, :-1]),
        "decoder_target_tokens": jnp.asarray(targets),
        "decoder_loss_weights": jnp.asarray(weights),
    }
    if packed:
        segments = np.ones((n, t), np.int32)
        segments[0, t // 2 + 1 :] = 2
        segments[1] = weights[1] > 0
        batch["decoder_segment_ids"] = jnp.asarray(segments)
    return batch


def _terms(config, params, batch):
    spec = ThinkingSpec(N_A, N_T, collect_logits=True)
    return jax.jit(
        lambda p: quiet_star_terms(
            config, spec, p, batch, jax.random.PRNGKey(2), clip_advantage=True
        )
    )(params)


def _hand_rewards_and_advantages(terms, segments):
    """R[i] = sum over talk steps s whose target y[i + s] is real and in i's document."""
    valid = np.asarray(terms["valid"])
    base_lp = np.asarray(terms["base_logp"])
    talk_lp = np.asarray(terms["true_logp"])[-N_T:]
    n, t = valid.shape
    rewards = np.zeros((n, t))
    for r in range(n):
        for i in range(t):
            for s in range(N_T):
                if i + s < t and valid[r, i + s] and segments[r, i + s] == segments[r, i]:
                    rewards[r, i] += talk_lp[s, r, i] - base_lp[r, i + s]
    pairs = rewards.reshape(n // 2, 2, t)
    return rewards, np.maximum(pairs - pairs.mean(1, keepdims=True), 0).reshape(n, t)


def test_policy_logp_scores_the_sampled_thought_without_the_thought_ids():
    """log softmax(logits / 3)[sampled] with the thought ids out of the normaliser (the
    reference sets them to -1e10), recomputed in numpy from each thinking step's logits; the
    same at the sampling temperature 1 for `sample_logp` (the entropy estimate)."""
    config = tiny_config()
    terms = _terms(config, tiny_params(config, mixing_random=True), _batch())
    logits = np.asarray(terms["logits"])[: N_A - 3].astype(np.float64)  # steps that sample
    sampled = np.asarray(terms["next_token"])[: N_A - 3]
    logits[..., list(config.thought_token_ids)] = -np.inf
    for key, temperature in (("policy_logp", 3.0), ("sample_logp", 1.0)):
        scaled = logits / temperature
        top = scaled.max(-1, keepdims=True)
        lse = top[..., 0] + np.log(np.exp(scaled - top).sum(-1))
        hand = np.take_along_axis(scaled, sampled[..., None], -1)[..., 0] - lse
        np.testing.assert_allclose(terms[key][: N_A - 3], hand, rtol=1e-5, atol=1e-5)


def test_thought_statistics_match_a_hand_computation():
    """The logged share of positive advantages, thought entropy estimate and distinct-token
    share, recomputed position by position from the terms."""
    config = tiny_config()
    params = tiny_params(config, mixing_random=True)
    batch = _batch(packed=True)
    terms = _terms(config, params, batch)
    _, metrics = quiet_star_loss(
        build_model(config), params, batch, jax.random.PRNGKey(2), spec=ThinkingSpec(N_A, N_T)
    )
    valid = np.asarray(terms["valid"])
    tokens = np.asarray(terms["next_token"])[: N_A - 3]
    sample_lp = np.asarray(terms["sample_logp"])[: N_A - 3]
    positive, entropy, distinct = [], [], []
    for r, i in zip(*np.nonzero(valid)):
        positive.append(float(terms["advantages"][r, i] > 0))
        entropy.append(-sample_lp[:, r, i].mean())
        distinct.append(len(set(tokens[:, r, i].tolist())) / (N_A - 3))
    assert 0 < np.mean(positive) < 1 and 1 / (N_A - 3) < np.mean(distinct) < 1
    np.testing.assert_allclose(metrics["positive_advantage_share"], np.mean(positive), rtol=1e-6)
    np.testing.assert_allclose(metrics["thought_entropy"], np.mean(entropy), rtol=1e-5)
    np.testing.assert_allclose(metrics["thought_distinct"], np.mean(distinct), rtol=1e-6)


@pytest.mark.parametrize("packed", [False, True], ids=["rows", "packed"])
@pytest.mark.parametrize("policy_form", ["reference", "summed"])
def test_objective_terms_match_a_hand_computation(policy_form, packed):
    """Rewards, losses and the policy term recomputed in numpy from the per-step outputs:
    the reference's form (mean over the thought tokens and over every row's positions
    0 .. T - n_t - 1) by default, the summed one (sum over tokens, mean over real targets)."""
    config = tiny_config()
    params = tiny_params(config, mixing_random=True)
    batch = _batch(packed=packed)
    terms = _terms(config, params, batch)
    segments = np.asarray(
        batch.get("decoder_segment_ids", np.ones(batch["decoder_loss_weights"].shape))
    )
    segments = np.repeat(segments, 2, axis=0)  # the P = 2 copies of each row, as the terms
    rewards, adv = _hand_rewards_and_advantages(terms, segments)
    np.testing.assert_allclose(terms["rewards"], rewards, atol=1e-5)
    np.testing.assert_allclose(terms["advantages"], adv, atol=1e-5)
    valid = np.asarray(terms["valid"])
    base_lp = np.asarray(terms["base_logp"])
    talk_lp = np.asarray(terms["true_logp"])[-N_T:]
    n, t = valid.shape
    policy_lp = np.asarray(terms["policy_logp"])[: N_A - 3]
    form = {} if policy_form == "reference" else {"policy_form": policy_form}
    loss, metrics = quiet_star_loss(
        build_model(config),
        params,
        batch,
        jax.random.PRNGKey(2),
        spec=ThinkingSpec(N_A, N_T),
        beta=10.0,
        **form,
    )
    base_ce = -(base_lp * valid).sum() / valid.sum()
    talk_valid = [valid[:, s:] & (segments[:, s:] == segments[:, : t - s]) for s in range(N_T)]
    talk_ce = np.mean(
        [-(talk_lp[s][:, : t - s] * talk_valid[s]).sum() / talk_valid[s].sum() for s in range(N_T)]
    )
    if policy_form == "reference":
        counted = np.arange(t) < t - N_T
        policy = -(adv * policy_lp.mean(0) * counted).sum() / (n * (t - N_T))
    else:
        policy = -(adv * policy_lp.sum(0) * valid).sum() / valid.sum()
    np.testing.assert_allclose(metrics["base_ce"], base_ce, rtol=1e-5)
    np.testing.assert_allclose(metrics["talk_ce"], talk_ce, rtol=1e-5)
    np.testing.assert_allclose(metrics["policy_loss"], policy, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(loss, 0.5 * base_ce + 0.5 * talk_ce + 10.0 * policy, rtol=1e-5)


@pytest.mark.parametrize(
    "record, overrides",
    [((), {}), (ThinkingSpec.record, {}), (RECORDABLE, BIASES_AND_LLAMA3_ROPE)],
    ids=["record-none", "record-default", "record-all-qkv-bias-llama3-rope"],
)
def test_loss_and_gradients_agree_between_streams_and_dense_mask(record, overrides):
    """Also checks the streams backward's replays: recording nothing recomputes every
    projection but the keys and values; recording everything recomputes none of them (and
    a replayed projection differentiates its bias too)."""
    config = tiny_config(**overrides)
    params = tiny_params(config, mixing_random=True)
    model = build_model(config)
    batch = _batch(seed=8, packed=True)
    results = {}
    for impl in ("streams", "dense_mask"):
        fn = lambda p, impl=impl: quiet_star_loss(  # noqa: E731
            model,
            p,
            batch,
            jax.random.PRNGKey(3),
            spec=ThinkingSpec(N_A, N_T, implementation=impl, record=record),
            beta=1.0,
        )
        results[impl] = jax.jit(jax.value_and_grad(fn, has_aux=True))(params)
    (loss_s, m_s), g_s = results["streams"]
    (loss_d, m_d), g_d = results["dense_mask"]
    np.testing.assert_allclose(loss_s, loss_d, rtol=1e-5)
    assert float(m_s["policy_loss"]) != 0.0
    flat_s, flat_d = jax.tree.leaves_with_path(g_s), jax.tree.leaves(g_d)
    for (path, a), b in zip(flat_s, flat_d):
        scale = float(np.abs(b).max()) + 1e-12
        np.testing.assert_allclose(
            np.asarray(a) / scale,
            np.asarray(b) / scale,
            atol=2e-5,
            err_msg=jax.tree_util.keystr(path),
        )
    assert (
        float(np.abs(g_s["start_thought"]).max()) > 0
        and float(np.abs(g_s["mixing_head"]["out_kernel"]).max()) > 0
    )
    if config.decoder.attention_bias:
        attention = g_s["decoder"]["layers_0"]["self_attention"]
        assert all(float(np.abs(attention[n]["bias"]).max()) > 0 for n in ("query", "value"))


@pytest.mark.parametrize("implementation", ["dense_mask", "streams"])
@pytest.mark.parametrize("remat_policy", ["full", "dots_no_batch"])
def test_remat_policy_keeps_loss_and_gradients(implementation, remat_policy):
    """The decoder's remat_policy (dense_mask steps and both context forwards) changes what
    the backward stores, not what it computes."""
    batch = _batch(seed=9)
    results = []
    for policy in ("none", remat_policy):
        config = tiny_config(remat_policy=policy)
        params = tiny_params(config, mixing_random=True)
        fn = lambda p, c=config: quiet_star_loss(  # noqa: E731
            build_model(c),
            p,
            batch,
            jax.random.PRNGKey(4),
            spec=ThinkingSpec(N_A, N_T, implementation=implementation),
            beta=1.0,
        )
        results.append(jax.jit(jax.value_and_grad(fn, has_aux=True))(params))
    (loss, _), grads = results[0]
    (loss_remat, _), grads_remat = results[1]
    np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
    for (path, a), b in zip(jax.tree.leaves_with_path(grads_remat), jax.tree.leaves(grads)):
        _close(a, b, err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("prefilled", [False, True], ids=["empty", "prefilled"])
@pytest.mark.parametrize("use_replay", [False, True])
def test_append_scan_gradients_match_lax_scan(use_replay, prefilled):
    """The O(steps) backward equals differentiating the plain scan with the buffer as carry,
    also when the recomputed steps take their recorded projection and their own slot from
    the `Replay` instead of recomputing them, and when the first slot comes in filled (a
    function of the parameters) and the steps start at slot 1."""
    steps, width = 5, 3
    first = 1 if prefilled else 0

    def step(consts, statics, carry, buffer, k, replay):
        w, b = consts
        earlier = (jnp.arange(steps) < k)[:, None]
        project = lambda buf, w: jnp.tanh(buf @ w)  # noqa: E731
        known = use_replay and replay is not None
        projected = replayed(project, (buffer, w), replay.record) if known else project(buffer, w)
        summary = jnp.sum(jnp.where(earlier, projected, 0.0), axis=0)
        new_slot = lambda summary, b: jnp.sin(summary + b * (k + 1) + statics) + 0.1 * carry  # noqa: E731
        new = replayed(new_slot, (summary, b), replay.slot) if known else new_slot(summary, b)
        # the carry changes every step (not differentiated, like sampled ids) and each step
        # reads it, so a replay handed the wrong carry recomputes a different step
        next_carry = carry + 1.0 + jax.lax.stop_gradient(new)
        return next_carry, new, jnp.sum(new**2), projected if use_replay else ()

    def initial(consts):
        buf = jnp.zeros((steps, width))
        return buf.at[0].set(jnp.cos(consts[1] * 3.0)) if prefilled else buf

    def plain(consts):
        def body(state, k):
            carry, buf = state
            carry, new, y, _ = step(consts, 0.5, carry, buf, k, None)
            return (carry, buf.at[k].set(new)), y

        _, ys = jax.lax.scan(body, (jnp.zeros(width), initial(consts)), jnp.arange(first, steps))
        return jnp.sum(ys * jnp.arange(1, steps + 1 - first))

    def ours(consts):
        _, _, ys = append_scan(
            step,
            consts,
            0.5,
            jnp.zeros(width),
            initial(consts),
            jnp.arange(first, steps),
            index_fn=lambda k: k,
            axis=0,
        )
        return jnp.sum(ys * jnp.arange(1, steps + 1 - first))

    consts = (
        jax.random.normal(jax.random.PRNGKey(0), (width, width)),
        jnp.asarray([0.1, -0.2, 0.3]),
    )
    np.testing.assert_allclose(ours(consts), plain(consts), rtol=1e-6)
    for a, b in zip(jax.grad(ours)(consts), jax.grad(plain)(consts)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- sharding


def _train_steps(mesh, devices, steps=2):
    config = tiny_config()
    tx, _ = make_optimizer(OptimizerConfig(name="sgd", learning_rate=0.1))
    partitioner = Partitioner(create_mesh(MeshConfig.parse(mesh), devices))
    objective = functools.partial(quiet_star_loss, spec=ThinkingSpec(N_A, N_T), beta=1.0)
    trainer = Trainer(build_model(config), objective, tx, partitioner)
    batch = _batch(n=8, t=12, seed=9)
    state = trainer.init_state(0, batch)
    losses = []
    for _ in range(steps):
        state, metrics = trainer.train_step(state, partitioner.host_batch_to_global(batch))
        losses.append(float(metrics["loss"]))
    return np.array(losses), jax.device_get(state.params)


@pytest.fixture(scope="module")
def one_device_steps():
    """The one-device run every mesh is compared with (run once per test process)."""
    return _train_steps("1x1x1", jax.devices()[:1])


@pytest.mark.parametrize("mesh", ["8x1x1", "2x2x2", "1x2x4"])
def test_sharded_quiet_star_steps_match_one_device(mesh, one_device_steps):
    want_losses, want = one_device_steps
    got_losses, got = _train_steps(mesh, jax.devices()[:8])
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    # Parameters after two steps from the trainer's init, whose zero mixing head makes the
    # rewards of the P thoughts differ only by float noise at first: the start thought's
    # update is a policy gradient of noise-level advantages, which the all-reduce's other
    # summation order moves by ~1e-4 of the parameter. These parameters are held to 1e-5
    # of max(|param|, 1); every per-tensor check of outputs and gradients is in the tests
    # above.
    for (path, a), b in zip(jax.tree.leaves_with_path(got), jax.tree.leaves(want)):
        _close(a, b, err_msg=jax.tree_util.keystr(path), floor=1.0)
