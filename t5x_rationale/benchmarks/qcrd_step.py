"""`bench --objective qcrd`: QCRD's student step, and the sampler's and discriminator's cost
per step when amortised over their intervals (random tokens, random weights).

The step's batch has `batch` label rows ([input_length] -> [target_length]) and `batch`
questions ([input_length]) with `candidates` slots of [target_length] each, of which
`num_samples` are self-adversarial slots. The loss step is timed on steps without a
discriminator update; MFU counts `flops.qcrd_step_counts` (D's forward inside the loss is
not counted). The sampler draws `num_samples` per question at temperature 1.5 from the
ring's lagged params, `target_length` tokens (a random model rarely emits EOS, so every
row runs the full length); reading the samples' answers on the host is not timed. One
discriminator update is timed on its own; both are divided by their intervals.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import numpy as np

from t5x_rationale.architectures import build_model, get_preset
from t5x_rationale.architectures.discriminator import Discriminator
from t5x_rationale.objectives.qcrd import qcrd_loss
from t5x_rationale.qcrd.negatives import SelfAdversarialNegatives
from t5x_rationale.qcrd.settings import QcrdSettings
from t5x_rationale.qcrd.trainer import QcrdTrainer, candidate_part
from t5x_rationale.runtime.flops import measure_peak_matmul_flops, qcrd_step_counts
from t5x_rationale.runtime.host_memory import huge_pages_enabled
from t5x_rationale.runtime.optimizers import OptimizerConfig, make_optimizer
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh

QCRD_COLUMNS = (  # beside bench.py's usual columns
    "candidates",
    "sampler_s_per_call",
    "amortised_sampler_s_per_step",
    "discriminator_s_per_update",
    "amortised_discriminator_s_per_step",
    "amortised_overhead_fraction",
)


@dataclasses.dataclass(frozen=True)
class QcrdBenchShape:
    preset: str
    batch: int
    input_length: int
    target_length: int
    candidates: int = 5
    num_samples: int = 2
    sample_every: int = 10
    discriminator_every: int = 10
    discriminator_preset: str = "t5-tiny"


def random_qcrd_batch(shape: QcrdBenchShape, vocab_size: int, seed: int) -> dict:
    """A host batch of the step's layout: two teacher positives, the rest negatives."""
    rng = np.random.default_rng(seed)
    b, lin, lt, k = shape.batch, shape.input_length, shape.target_length, shape.candidates
    teacher = k - shape.num_samples
    tokens = lambda *s: rng.integers(2, vocab_size, s).astype(np.int32)  # noqa: E731
    label = tokens(b, lt)
    cand = tokens(b, teacher, lt)
    return {
        "encoder_input_tokens": tokens(b, lin),
        "decoder_input_tokens": np.pad(label[:, :-1], ((0, 0), (1, 0))),
        "decoder_target_tokens": label,
        "decoder_loss_weights": np.ones((b, lt), np.float32),
        "candidate_encoder_input_tokens": tokens(b, lin),
        "candidate_input_tokens": np.pad(cand[..., :-1], ((0, 0), (0, 0), (1, 0))),
        "candidate_target_tokens": cand,
        "candidate_loss_weights": np.ones((b, teacher, lt), np.float32),
        "candidate_mask": np.ones((b, teacher), np.int32),
        "candidate_is_positive": (np.arange(teacher) < min(2, teacher))
        .astype(np.int32)[None]
        .repeat(b, 0),
        "candidate_label_tokens": tokens(b, 4),
    }


def _trainer(shape: QcrdBenchShape, partitioner: Partitioner) -> QcrdTrainer:
    config = get_preset(shape.preset)
    d_config = get_preset(shape.discriminator_preset, vocab_size=config.vocab_size)
    settings = QcrdSettings(
        candidate_task="random",
        candidate_lengths={"inputs": 1, "positives": 1, "negatives": 1, "targets": 1},
        num_positives=2,
        num_negatives=max(shape.candidates - shape.num_samples - 2, 0),
        sample_every=shape.sample_every,
        num_samples=shape.num_samples,
        discriminator_every=shape.discriminator_every,
        discriminator=Discriminator(d_config, hidden_dim=256),
    )
    tx, schedule = make_optimizer(OptimizerConfig(learning_rate=1e-4))
    model = build_model(config)
    return QcrdTrainer(
        model, qcrd_loss, tx, partitioner, learning_rate_fn=schedule, settings=settings
    )


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_qcrd(shape: QcrdBenchShape, partitioner: Partitioner, steps: int) -> dict:
    """The timings (seconds) and counts of the result row; MFU is the caller's (its peak)."""
    trainer = _trainer(shape, partitioner)
    negatives = SelfAdversarialNegatives(trainer, lambda sample, label: True)
    host = [
        negatives(None, random_qcrd_batch(shape, trainer.model.config.vocab_size, s))
        for s in (0, 1)
    ]
    batches = [partitioner.host_batch_to_global(h) for h in host]
    state = trainer.init_state(0, batches[0])
    state, _ = trainer.train_step(state, batches[0])  # step 0: compiles; D updates (0 mod M)
    tokens, flops = qcrd_step_counts(trainer.model.config, host[0])
    times = []
    for i in range(steps):
        t0 = time.perf_counter()
        state, metrics = trainer.train_step(state, batches[i % 2])
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    questions = host[0]["candidate_encoder_input_tokens"]
    negatives.sample(state, questions, shape.target_length)  # compile
    sample_s = _median_time(lambda: negatives.sample(state, questions, shape.target_length), 2)
    d_batch = partitioner.host_batch_to_global(candidate_part(host[0]))

    def d_update():
        nonlocal state
        state, _ = trainer.pretrain_discriminator(state, iter([d_batch]), 1)
        return state.discriminator_params

    d_update()  # compile
    d_step_s = _median_time(d_update, 2)
    sampler = sample_s / shape.sample_every if shape.sample_every else 0.0
    disc = d_step_s / shape.discriminator_every if shape.discriminator_every else 0.0
    return {
        "step_s": step_s,
        "step_s_min": min(times),
        "tokens_per_s": tokens / step_s,
        "model_gflop_per_step": flops / 1e9,
        "achieved_gflop_per_s": flops / step_s / 1e9,
        "loss": float(metrics["loss"]),
        "sampler_s_per_call": sample_s,
        "sampled_tokens_per_s": questions.shape[0]
        * shape.num_samples
        * shape.target_length
        / sample_s,
        "discriminator_s_per_update": d_step_s,
        "amortised_sampler_s_per_step": sampler,
        "amortised_discriminator_s_per_step": disc,
        "amortised_overhead_fraction": (sampler + disc) / step_s,
    }


def qcrd_row(shape: QcrdBenchShape, mesh: MeshConfig, steps: int, peak_size: int) -> dict:
    """`bench`'s result row: the timings, with MFU against the best matmul peak measured
    before and after them."""
    peak = measure_peak_matmul_flops(peak_size)
    partitioner = Partitioner(create_mesh(mesh))
    row = dict(
        preset=shape.preset,
        objective="qcrd",
        batch=shape.batch,
        input_length=shape.input_length,
        target_length=shape.target_length,
        candidates=shape.candidates,
        mesh="x".join(map(str, partitioner.mesh.devices.shape)),
        devices=jax.device_count(),
        backend=jax.default_backend(),
        huge_pages=huge_pages_enabled(),
    )
    timed = run_qcrd(shape, partitioner, max(steps, 1))
    peak = max(peak, measure_peak_matmul_flops(peak_size)) * jax.device_count()
    flops = timed["model_gflop_per_step"] * 1e9
    timed.update(
        peak_matmul_gflop_per_s=peak / 1e9,
        mfu=flops / timed["step_s"] / peak,
        mfu_best_step=flops / timed["step_s_min"] / peak,
    )
    return dict(row, **timed)
