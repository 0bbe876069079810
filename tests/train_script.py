"""A small end-to-end training run used by the kill/resume and multi-process tests.

Usage: python tests/train_script.py --preset decoder-tiny --mesh 2x2x2 --steps 6 --out result.npz
         [--checkpoint_dir DIR] [--sleep_after_step S] [--coordinator 127.0.0.1:PORT
         --num_processes 2 --process_id 0 --local_devices 4]
Writes the final params (flattened, float32) and per-step losses to --out (process 0).
"""

import argparse
import os
import sys
import time


def parse():
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="decoder-tiny")
    p.add_argument("--mesh", default="1x1x1")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--optimizer", default="adamw")
    p.add_argument("--out", required=True)
    p.add_argument("--checkpoint_dir")
    p.add_argument("--sleep_after_step", type=float, default=0.0)
    p.add_argument("--coordinator")
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--local_devices", type=int, default=1)
    return p.parse_args()


def main():
    args = parse()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    if args.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    import numpy as np

    from t5x_rationale.architectures import build_model, get_preset
    from t5x_rationale.benchmarks.random_batches import RandomBatches
    from t5x_rationale.objectives import token_loss
    from t5x_rationale.runtime.checkpoints import Checkpointer
    from t5x_rationale.runtime.optimizers import OptimizerConfig, make_optimizer
    from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
    from t5x_rationale.runtime.trainer import Trainer
    from t5x_rationale.runtime.training_loop import train_loop

    config = get_preset(args.preset)
    tx, schedule = make_optimizer(OptimizerConfig(name=args.optimizer, learning_rate=1e-2))
    partitioner = Partitioner(create_mesh(MeshConfig.parse(args.mesh)))
    trainer = Trainer(build_model(config), token_loss, tx, partitioner, learning_rate_fn=schedule)
    # Each process reads its own rows of the global batch (host-local data).
    local_batch = args.batch // jax.process_count()
    input_length = 12 if config.architecture == "encoder_decoder" else 0
    global_data = RandomBatches(
        vocab_size=config.vocab_size,
        batch_size=args.batch,
        target_length=16,
        input_length=input_length,
        seed=1,
    )
    data = _HostSlice(global_data, jax.process_index() * local_batch, local_batch)
    example = next(
        RandomBatches(
            vocab_size=config.vocab_size,
            batch_size=args.batch,
            target_length=16,
            input_length=input_length,
        )
    )
    init = lambda: trainer.init_state(0, example)  # noqa: E731
    losses = {}
    if args.checkpoint_dir:
        checkpointer = Checkpointer(args.checkpoint_dir, save_every=1, keep=2)
        state, data_state, source = checkpointer.restore_or_init(
            trainer.abstract_state(example), init
        )
        if data_state:
            data.set_state(data_state)
        print(f"start: {source} step {int(state.step)}", flush=True)
    else:
        checkpointer, state = None, init()

    def on_metrics(step, metrics):
        losses[step] = metrics["loss"]
        print(f"step {step} loss {metrics['loss']:.6f}", flush=True)
        time.sleep(args.sleep_after_step)

    state = train_loop(
        trainer, state, data, num_steps=args.steps, checkpointer=checkpointer, on_metrics=on_metrics
    )
    params = jax.tree.map(
        lambda x: np.asarray(
            jax.device_get(jax.jit(lambda y: y, out_shardings=partitioner.replicated)(x))
        ),
        state.params,
    )
    if jax.process_index() == 0:
        flat = {
            jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_flatten_with_path(params)[0]
        }
        np.savez(
            args.out,
            **{f"param:{k}": v for k, v in flat.items()},
            **{f"loss:{k}": v for k, v in losses.items()},
        )
    print("done", flush=True)


class _HostSlice:
    """This process's rows [start, start + size) of a global batch iterator."""

    def __init__(self, data, start, size):
        self.data, self.start, self.size = data, start, size

    def __next__(self):
        return {k: v[self.start : self.start + self.size] for k, v in next(self.data).items()}

    def get_state(self):
        return self.data.get_state()

    def set_state(self, state):
        self.data.set_state(state)


if __name__ == "__main__":
    sys.exit(main())
