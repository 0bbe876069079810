"""Tiny checkpoints, a character vocabulary and mixed-length prompts for the generation tests.

Also a script: `python tests/generation_setup.py --checkpoint DIR --preset P --out OUT
[--coordinator HOST:PORT --num_processes 2 --process_id I --local_devices 4]` generates the
test prompts into OUT (the multi-process and kill tests run it).
"""

from __future__ import annotations

import argparse
import os
import sys

SAMPLE = dict(max_decode_length=6, method="sample", temperature=1.0)
NUM_PROMPTS = 13


class CharVocabulary:
    """One id per character (ids 3..258 wrap into the model's vocab); EOS 1, pad 0."""

    eos_id = 1

    def __init__(self, vocab_size: int = 256):
        self.size = vocab_size - 3

    def encode(self, text: str) -> list[int]:
        return [3 + ord(c) % self.size for c in text]

    def decode(self, ids) -> str:
        return "".join(chr(i - 3 + 97) if i >= 3 else "?" for i in ids)


def prompts(n: int = NUM_PROMPTS) -> list[dict]:
    """Prompts of mixed lengths (2 to 40 characters), with a passthrough field."""
    lengths = [(7 * i * i + 3 * i) % 39 + 2 for i in range(n)]
    return [
        {"id": f"q{i}", "prompt": "".join(chr(97 + (i + j) % 26) for j in range(k)), "gold": i}
        for i, k in enumerate(lengths)
    ]


def save_checkpoint(preset: str, directory: str, **overrides) -> None:
    """A tiny preset (fields overridden) with random params (`random_params`, drawn with numpy:
    nothing is compiled), saved at step 0 in `directory`."""
    import jax.numpy as jnp
    import numpy as np
    import optax
    from random_params import random_params

    from t5x_rationale.architectures import build_model, get_preset
    from t5x_rationale.runtime.checkpoints import Checkpointer
    from t5x_rationale.runtime.trainer import TrainState

    config = get_preset(preset, **overrides)
    model = build_model(config)
    ones = np.ones((1, 4), np.int32)
    inputs = {"decoder_input_tokens": ones}
    if config.architecture == "encoder_decoder":
        inputs = {"encoder_input_tokens": ones, "decoder_input_tokens": ones}
    params = random_params(model, seed=3, **inputs)
    zero = jnp.zeros((), jnp.int32)
    state = TrainState(
        step=zero,
        params=params,
        opt_state=optax.identity().init(params),
        rng=jnp.zeros((2,), jnp.uint32),
        skipped_steps=zero,
        bad_streak=zero,
    )
    checkpointer = Checkpointer(directory, save_every=1)
    checkpointer.save(0, state)
    checkpointer.wait()
    checkpointer.close()


def generation_config(**overrides):
    from t5x_rationale.generation import GenerationConfig
    from t5x_rationale.inference.decoding import DecodeConfig

    # One padded width (bucket_width = input_length) keeps each mesh to one decode program.
    settings = dict(
        num_samples=2, batch_size=8, input_length=48, shard_size=5, seed=11, bucket_width=48
    )
    settings.update(overrides)
    decode = DecodeConfig(**{**SAMPLE, **settings.pop("decode", {})})
    return GenerationConfig(decode=decode, **settings)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--preset", default="t5-tiny")
    p.add_argument("--out", required=True)
    p.add_argument("--mesh", default="-1x1x1")
    p.add_argument("--coordinator")
    p.add_argument("--num_processes", type=int, default=1)
    p.add_argument("--process_id", type=int, default=0)
    p.add_argument("--local_devices", type=int, default=1)
    p.add_argument("--sleep_after_shard", type=float, default=0.0)
    args = p.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.local_devices}"
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    if args.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)
    import time

    from t5x_rationale.architectures import get_preset
    from t5x_rationale.generation import generate_to_shards
    from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh

    def log(line):
        print(line, flush=True)
        if "wrote" in line:
            time.sleep(args.sleep_after_shard)

    generate_to_shards(
        get_preset(args.preset),
        args.checkpoint,
        CharVocabulary(),
        prompts(),
        args.out,
        generation_config(),
        Partitioner(create_mesh(MeshConfig.parse(args.mesh))),
        log=log,
    )


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
