"""The train state and one jitted, sharded train step built from any objective.

Nothing here is model- or loss-specific: an objective is
`loss(model, params, batch, rng) -> (scalar, metrics)` whose metrics may carry a
`denominator` (the batch's weight when microbatches are combined; default 1). An objective
that needs frozen arrays (a teacher's params) gets them as `constants=`: they are an
argument of every step, sharded by the caller, never differentiated, updated or saved.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Optional

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec

from t5x_rationale.architectures import init_inputs
from t5x_rationale.runtime.partitioning import Partitioner

Objective = Callable[[nn.Module, Any, dict, Optional[jax.Array]], tuple[jax.Array, dict]]


@flax.struct.dataclass
class TrainState:
    """Everything a step reads and writes; saved whole in checkpoints."""

    step: jax.Array  # int32 scalar: number of steps taken (including skipped ones)
    params: Any
    opt_state: Any
    rng: jax.Array  # raw uint32[2] key; step k uses fold_in(rng, k)
    skipped_steps: jax.Array  # int32: updates skipped for non-finite loss/gradients
    bad_streak: jax.Array  # int32: consecutive skipped updates


class NonFiniteLossError(RuntimeError):
    """Raised when too many consecutive steps had a non-finite loss or gradient."""


class Trainer:
    """Builds, shards and runs train steps for one model, objective and optimizer.

    Args:
      model: a Flax module from `t5x_rationale.architectures.build_model`.
      objective: the loss function.
      optimizer: an optax transformation (see `optimizers.make_optimizer`).
      partitioner: mesh and logical rules.
      learning_rate_fn: the schedule, reported as a metric.
      num_microbatches: gradient accumulation; the batch is split into this many strided parts.
      max_bad_steps: stop (raise `NonFiniteLossError`) after this many consecutive skipped steps.
      constants: frozen arrays passed to the objective as `constants=` (None: not passed).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        optimizer: optax.GradientTransformation,
        partitioner: Partitioner,
        *,
        learning_rate_fn: Optional[optax.Schedule] = None,
        num_microbatches: int = 1,
        max_bad_steps: int = 10,
        constants: Any = None,
    ):
        if num_microbatches < 1:
            raise ValueError(f"num_microbatches must be >= 1, got {num_microbatches}")
        self.model = model
        self.objective = objective
        self.optimizer = optimizer
        self.partitioner = partitioner
        self.learning_rate_fn = learning_rate_fn
        self.num_microbatches = num_microbatches
        self.max_bad_steps = max_bad_steps
        self.constants = constants
        self._layout = None  # (abstract state, logical specs, shardings, notes), from first batch
        self._step_fn = None
        self._init_jit = None

    # ------------------------------------------------------------------- contexts

    def context(self):
        """Mesh + logical rules, active whenever model code is traced or run."""
        return self.partitioner.context()

    # --------------------------------------------------------------------- layout

    def _init_fn(self, example_batch: dict):
        example = init_inputs(self.model.config, example_batch)
        inputs = {k: jnp.asarray(v[:1]) for k, v in example.items()}

        def init(rng, boxed=False):
            init_rng, state_rng = jax.random.split(rng)
            variables = self.model.init({"params": init_rng, "dropout": init_rng}, **inputs)
            params = variables["params"] if boxed else nn.unbox(variables["params"])
            opt_state = self.optimizer.init(nn.unbox(params)) if not boxed else None
            zero = jnp.zeros((), jnp.int32)
            return TrainState(
                step=zero,
                params=params,
                opt_state=opt_state,
                rng=state_rng,
                skipped_steps=zero,
                bad_streak=zero,
            )

        return init

    def layout(self, example_batch: dict):
        """(abstract state, logical specs, shardings, replication notes) for these batch shapes."""
        if self._layout is None:
            init = self._init_fn(example_batch)
            rng = jax.random.PRNGKey(0)
            with self.context():
                boxed = jax.eval_shape(lambda r: init(r, boxed=True), rng)
                abstract = jax.eval_shape(init, rng)
            param_specs = nn.get_partition_spec(boxed.params)
            opt_specs = _optimizer_specs(self.optimizer, abstract.opt_state, param_specs)
            specs = abstract.replace(
                params=param_specs,
                opt_state=opt_specs,
                step=PartitionSpec(),
                rng=PartitionSpec(),
                skipped_steps=PartitionSpec(),
                bad_streak=PartitionSpec(),
            )
            specs = self._extend_specs(boxed, abstract, specs)
            shardings, notes = self.partitioner.shardings_for(abstract, specs)
            self._layout = (abstract, specs, shardings, notes)
        return self._layout

    def _extend_specs(self, boxed, abstract, specs):
        """Logical specs of the fields a subclass adds to the state (none here)."""
        del boxed, abstract
        return specs

    def abstract_state(self, example_batch: dict) -> TrainState:
        """ShapeDtypeStructs carrying this mesh's shardings (the restore target)."""
        abstract, _, shardings, _ = self.layout(example_batch)
        return jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
        )

    def init_state(self, seed: int, example_batch: dict) -> TrainState:
        """A fresh, sharded train state; identical for any mesh given the same seed."""
        if self._init_jit is None:
            _, _, shardings, _ = self.layout(example_batch)
            self._init_jit = jax.jit(self._init_fn(example_batch), out_shardings=shardings)
        with self.context():
            return self._init_jit(jax.random.PRNGKey(seed))

    # ----------------------------------------------------------------------- step

    def _jitted_step(self, batch):
        if self._step_fn is None:
            _, _, shardings, _ = self.layout(batch)
            self._step_fn = jax.jit(
                self._step,
                out_shardings=(shardings, self.partitioner.replicated),
                donate_argnums=(0,),
            )
        return self._step_fn

    def train_step(self, state: TrainState, batch: dict[str, jax.Array]) -> tuple[TrainState, dict]:
        """One optimizer step on a global batch; the input state is donated."""
        step_fn = self._jitted_step(batch)
        with self.context():
            return step_fn(state, batch, self.constants)

    def compile_step(self, state: TrainState, batch: dict[str, jax.Array]):
        """The compiled train step for these shapes (for memory and cost analysis)."""
        step_fn = self._jitted_step(batch)
        with self.context():
            return step_fn.lower(state, batch, self.constants).compile()

    def _step(self, state: TrainState, batch: dict, constants: Any) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        grads, metrics = self._gradients(state.params, batch, rng, constants)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)

        def update(params_and_opt):
            params, opt_state = params_and_opt
            updates, new_opt_state = self.optimizer.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), new_opt_state

        # A branch rather than where(finite, new, old): the select keeps the old moments alive
        # next to the new ones, so XLA copies every moment buffer first (about 100 ms a step
        # for t5-small on CPU); under lax.cond the update runs in place.
        new_params, new_opt_state = jax.lax.cond(
            finite, update, lambda old: old, (state.params, state.opt_state)
        )
        bad = (~finite).astype(jnp.int32)
        new_state = state.replace(
            step=state.step + 1,
            params=new_params,
            opt_state=new_opt_state,
            skipped_steps=state.skipped_steps + bad,
            bad_streak=(state.bad_streak + bad) * bad,
        )
        metrics = dict(
            metrics,
            grad_norm=grad_norm,
            skipped=bad,
            skipped_steps=new_state.skipped_steps,
            bad_streak=new_state.bad_streak,
        )
        if self.learning_rate_fn is not None:
            # Skipped steps freeze the optimizer's own step count, so its schedule lags state.step.
            applied_updates = state.step - state.skipped_steps
            metrics["learning_rate"] = jnp.asarray(
                self.learning_rate_fn(applied_updates), jnp.float32
            )
        return new_state, metrics

    def _loss_and_grads(self, params, batch, rng, constants=None):
        extra = {} if constants is None else {"constants": constants}
        (_, metrics), grads = jax.value_and_grad(
            lambda p: self.objective(self.model, p, batch, rng, **extra), has_aux=True
        )(params)
        metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
        metrics.setdefault("denominator", jnp.ones((), jnp.float32))
        return grads, metrics

    def _gradients(self, params, batch, rng, constants):
        """Gradients and metrics, accumulated over strided microbatches weighted by denominator."""
        n = self.num_microbatches
        if n == 1:
            return self._loss_and_grads(params, batch, rng, constants)
        shards = self.partitioner.batch_shards
        size = next(iter(batch.values())).shape[0]
        if size % (n * shards):
            raise ValueError(
                f"batch size {size} must be divisible by num_microbatches ({n}) x data x fsdp "
                f"({shards})"
            )
        # Row r of microbatch i is global row r * n + i: every device keeps its own rows.
        micro = jax.tree.map(
            lambda x: jnp.swapaxes(x.reshape((size // n, n) + x.shape[1:]), 0, 1), batch
        )

        def body(carry, inputs):
            grad_sum, metric_sum = carry
            index, mb = inputs
            mb = {
                k: jax.lax.with_sharding_constraint(v, PartitionSpec(("data", "fsdp")))
                for k, v in mb.items()
            }
            grads, metrics = self._loss_and_grads(
                params, mb, jax.random.fold_in(rng, index), constants
            )
            w = metrics["denominator"]
            grad_sum = jax.tree.map(lambda s, g: s + w * g.astype(jnp.float32), grad_sum, grads)
            metric_sum = {
                k: metric_sum[k] + (v if k == "denominator" else w * v) for k, v in metrics.items()
            }
            return (grad_sum, metric_sum), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
        _, first_metrics = jax.eval_shape(
            self._loss_and_grads, params, jax.tree.map(lambda x: x[0], micro), rng, constants
        )
        metric_zeros = {k: jnp.zeros((), jnp.float32) for k in first_metrics}
        (grad_sum, metric_sum), _ = jax.lax.scan(
            body, (zeros, metric_zeros), (jnp.arange(n), micro)
        )
        total = metric_sum["denominator"]
        grads = jax.tree.map(lambda g, p: (g / total).astype(p.dtype), grad_sum, params)
        metrics = {k: v if k == "denominator" else v / total for k, v in metric_sum.items()}
        return grads, metrics

    def check_finite(self, metrics: dict) -> None:
        """Host-side stop rule for the NaN guard (the step itself already skipped the update)."""
        streak = int(metrics["bad_streak"])
        if streak >= self.max_bad_steps:
            raise NonFiniteLossError(
                f"{streak} consecutive steps had a non-finite loss or gradient "
                f"(limit max_bad_steps={self.max_bad_steps}); stopping"
            )


def abstract_params(model: nn.Module, partitioner: Partitioner, example_batch: dict) -> Any:
    """ShapeDtypeStructs of a model's params carrying their mesh shardings (restore targets)."""
    return Trainer(model, None, optax.identity(), partitioner).abstract_state(example_batch).params


def _optimizer_specs(optimizer, abstract_opt_state, param_specs):
    """Logical specs for optimizer state: a param's spec where the shapes agree, else replicated."""

    def spec_for(leaf, spec):
        if spec is None or len(spec) != len(getattr(leaf, "shape", ())):
            return PartitionSpec()
        return spec

    return optax.tree_map_params(
        optimizer,
        spec_for,
        abstract_opt_state,
        param_specs,
        transform_non_params=lambda _: PartitionSpec(),
        is_leaf=lambda x: isinstance(x, PartitionSpec) or x is None,
    )


@dataclasses.dataclass
class Throughput:
    """Host-side tokens/s and MFU from wall time between completed steps.

    Args:
      tokens_per_step: token positions processed per step (inputs + targets).
      flops_per_step: model FLOPs of one step (`flops.train_step_flops`).
      peak_flops: peak FLOP/s of all devices together (measured matmul rate x devices).
    """

    tokens_per_step: int
    flops_per_step: float
    peak_flops: Optional[float] = None
    _last: Optional[float] = None

    def start(self) -> None:
        self._last = time.perf_counter()

    def update(self) -> dict[str, float]:
        """Call after a step's results are on the host; returns step_time, tokens/s and MFU."""
        now = time.perf_counter()
        if self._last is None:
            self._last = now
            return {}
        dt, self._last = now - self._last, now
        out = {
            "step_time_s": dt,
            "tokens_per_s": self.tokens_per_step / dt,
            "model_tflops_per_s": self.flops_per_step / dt / 1e12,
        }
        if self.peak_flops:
            out["mfu"] = self.flops_per_step / dt / self.peak_flops
        return out


def host_metrics(metrics: dict) -> dict[str, float]:
    """Device metrics -> Python floats (one transfer)."""
    return {k: float(v) for k, v in jax.device_get(metrics).items()}
