"""QCRD's train state and step: the student step of `runtime.trainer`, plus a ring of the
student's last K params and an online discriminator, all in one sharded, checkpointed state.

Ring (K = `lag` slots, each sharded like the params): at step s, before the update, slot
s mod K holds the params of step s - K (the initial params while s < K); the step then
writes its own params_s there. So `lagged_params(state)` read before step s is exactly the
student of K steps earlier, and nothing about it lives on the host.

Discriminator: its params and Adam state are fields of the state. The student loss reads
its scores through `constants["discriminator"]` (stop-gradient inside `qcrd_loss`); every
M-th step D takes one step of `discriminator_loss` on the step's candidates (teacher
positives and negatives and the kept self-adversarial samples), after the student's loss
has read the old D. `pretrain_discriminator` runs D's first steps before the student's.
"""

from __future__ import annotations

import functools
from typing import Any, Iterator

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from t5x_rationale.objectives.discriminator import discriminator_loss
from t5x_rationale.objectives.qcrd import split_qcrd_batch
from t5x_rationale.qcrd.settings import QcrdSettings
from t5x_rationale.runtime.trainer import Trainer, TrainState, _optimizer_specs


@flax.struct.dataclass
class QcrdTrainState(TrainState):
    """`TrainState` plus the lagged ring and the discriminator's params and optimizer."""

    ring: Any  # the params tree with a leading [K] axis
    discriminator_params: Any
    discriminator_opt_state: Any
    discriminator_steps: jax.Array  # int32: D updates taken (pretraining included)


def candidate_part(batch: dict) -> dict:
    """The `CandidatesConverter` view of a merged QCRD batch (what D trains on)."""
    return split_qcrd_batch(batch)[1]


class QcrdTrainer(Trainer):
    """A `Trainer` whose state carries QCRD's ring and discriminator.

    Args:
      settings: QCRD's settings (D is `settings.discriminator`).
      (the rest as `Trainer`; the objective is `qcrd_loss` with `discriminator=` bound.)
    """

    def __init__(self, *args, settings: QcrdSettings, **kwargs):
        super().__init__(*args, **kwargs)
        if self.model.config.architecture not in ("encoder_decoder", "decoder"):
            raise ValueError(
                "QCRD trains an encoder-decoder or decoder-only student, not a "
                f"{self.model.config.architecture} model"
            )
        self.discriminator = discriminator = settings.discriminator
        self.settings = settings
        self.discriminator_optimizer = optax.adam(settings.discriminator_learning_rate)
        self._lagged_fn = self._pretrain_fn = None
        if settings.discriminator_weights:  # scores from the state's D (qcrd_loss docstring)
            self.objective = functools.partial(self.objective, discriminator=discriminator)

    # ------------------------------------------------------------------- layout

    def _init_fn(self, example_batch: dict):
        base_init = super()._init_fn(example_batch)
        cand = candidate_part(example_batch)
        questions = jnp.asarray(cand["encoder_input_tokens"][:1])
        targets = jnp.asarray(cand["candidate_target_tokens"][:1])
        lag = self.settings.lag

        def init(rng, boxed=False):
            state = base_init(rng, boxed)
            d_rng = jax.random.fold_in(rng, 1)
            d_params = self.discriminator.init({"params": d_rng}, questions, targets)["params"]
            params = state.params
            ring = jax.tree.map(lambda p: _stack(p, lag), params)
            if not boxed:
                d_params = nn.unbox(d_params)
            d_opt = None if boxed else self.discriminator_optimizer.init(d_params)
            return QcrdTrainState(
                **{f: getattr(state, f) for f in TrainState.__dataclass_fields__},
                ring=ring,
                discriminator_params=d_params,
                discriminator_opt_state=d_opt,
                discriminator_steps=jnp.zeros((), jnp.int32),
            )

        return init

    def _extend_specs(self, boxed, abstract, specs):
        param_specs = specs.params
        d_specs = nn.get_partition_spec(boxed.discriminator_params)
        return specs.replace(
            ring=jax.tree.map(
                lambda s: PartitionSpec(None, *s),
                param_specs,
                is_leaf=lambda x: isinstance(x, PartitionSpec),
            ),
            discriminator_params=d_specs,
            discriminator_opt_state=_optimizer_specs(
                self.discriminator_optimizer, abstract.discriminator_opt_state, d_specs
            ),
            discriminator_steps=PartitionSpec(),
        )

    # --------------------------------------------------------------------- step

    def _step(self, state: QcrdTrainState, batch: dict, constants: Any):
        if self.settings.discriminator_weights:
            constants = {**(constants or {}), "discriminator": state.discriminator_params}
        new_state, metrics = super()._step(state, batch, constants)
        slot = state.step % self.settings.lag
        ring = jax.tree.map(
            lambda r, p: jax.lax.dynamic_update_index_in_dim(r, p.astype(r.dtype), slot, 0),
            state.ring,
            state.params,
        )
        every = self.settings.discriminator_every
        update_d = (state.step % every == 0) if every else jnp.zeros((), bool)
        d_state, d_metrics = self._maybe_update_discriminator(
            state, candidate_part(batch), update_d
        )
        metrics.update({f"discriminator/{k}": v for k, v in d_metrics.items()})
        return new_state.replace(ring=ring, **d_state), metrics

    def _discriminator_update(self, d_params, d_opt, steps, candidates, rng):
        (_, metrics), grads = jax.value_and_grad(
            lambda p: discriminator_loss(self.discriminator, p, candidates, rng), has_aux=True
        )(d_params)
        updates, d_opt = self.discriminator_optimizer.update(grads, d_opt, d_params)
        return optax.apply_updates(d_params, updates), d_opt, steps + 1, metrics

    def _maybe_update_discriminator(self, state, candidates, update_d):
        rng = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 0xD15C)
        args = (state.discriminator_params, state.discriminator_opt_state)
        args += (state.discriminator_steps, candidates, rng)
        shapes = jax.eval_shape(self._discriminator_update, *args)[3]

        def skip(d_params, d_opt, steps, *_):
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
            return d_params, d_opt, steps, zeros

        d_params, d_opt, steps, metrics = jax.lax.cond(
            update_d, self._discriminator_update, skip, *args
        )
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        metrics["updated"] = update_d.astype(jnp.float32)
        fields = dict(
            discriminator_params=d_params, discriminator_opt_state=d_opt, discriminator_steps=steps
        )
        return fields, metrics

    # ----------------------------------------------------- lagged params, pretraining

    def lagged_params(self, state: QcrdTrainState) -> Any:
        """The student of `lag` steps before `state.step` (ring slot step mod K)."""
        if self._lagged_fn is None:
            shardings = self._layout[2].params
            self._lagged_fn = jax.jit(
                lambda ring, step: jax.tree.map(lambda r: r[step % self.settings.lag], ring),
                out_shardings=shardings,
            )
        with self.context():
            return self._lagged_fn(state.ring, state.step)

    def pretrain_discriminator(
        self, state: QcrdTrainState, batches: Iterator[dict], steps: int
    ) -> tuple[QcrdTrainState, list[dict]]:
        """`steps` D updates on candidate batches (global arrays), before the student trains."""
        if self._pretrain_fn is None:
            d_shardings = self._layout[2]

            def step_fn(state, candidates):
                rng = jax.random.fold_in(state.rng, 0x5EED + state.discriminator_steps)
                d_params, d_opt, n, metrics = self._discriminator_update(
                    state.discriminator_params,
                    state.discriminator_opt_state,
                    state.discriminator_steps,
                    candidates,
                    rng,
                )
                new = state.replace(
                    discriminator_params=d_params,
                    discriminator_opt_state=d_opt,
                    discriminator_steps=n,
                )
                return new, metrics

            self._pretrain_fn = jax.jit(
                step_fn,
                out_shardings=(d_shardings, self.partitioner.replicated),
                donate_argnums=(0,),
            )
        history = []
        with self.context():
            for _ in range(steps):
                state, metrics = self._pretrain_fn(state, next(batches))
                history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
        return state, history

    def refill_ring(self, state: QcrdTrainState) -> QcrdTrainState:
        """Every ring slot set to the current params (after a warm start changed them)."""
        fill = jax.jit(
            lambda ring, params: jax.tree.map(
                lambda r, p: jnp.broadcast_to(p[None].astype(r.dtype), r.shape), ring, params
            ),
            out_shardings=self._layout[2].ring,
        )
        with self.context():
            return state.replace(ring=fill(state.ring, state.params))


def _stack(leaf, count: int):
    """`count` copies of a param along a new leading axis (boxed params keep their names)."""
    if isinstance(leaf, nn.Partitioned):
        return leaf.replace(value=jnp.broadcast_to(leaf.value[None], (count,) + leaf.value.shape))
    return jnp.broadcast_to(leaf[None], (count,) + leaf.shape)
