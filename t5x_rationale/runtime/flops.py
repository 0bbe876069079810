"""Model FLOPs of a train step and the measured peak matmul rate of the machine.

Model FLOPs count the matmuls the model needs (forward x3 for forward + backward), not what
rematerialisation recomputes, and count attention over the full length (PaLM convention).
MFU = model FLOPs per second / peak FLOPs per second measured on the same machine.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

from t5x_rationale.architectures.configs import DecoderConfig, T5Config, resolve_dtype
from t5x_rationale.architectures.quiet_star_lm import QuietStarConfig
from t5x_rationale.quiet_star.spec import ThinkingSpec


def _mlp_params(c) -> int:
    num_in = len(c.mlp_activations) if c.architecture == "encoder_decoder" else 2
    return num_in * c.emb_dim * c.mlp_dim + c.mlp_dim * c.emb_dim


def _decoder_token_flops(c: DecoderConfig, keys: int) -> int:
    """Forward matmul FLOPs of one decoder token attending to `keys` keys, logits included."""
    q_out = 2 * c.emb_dim * c.num_heads * c.head_dim
    kv = 2 * c.emb_dim * c.kv_heads * c.head_dim
    per_token_layer = 2 * (q_out + kv + _mlp_params(c))
    attention = 2 * 2 * keys * c.num_heads * c.head_dim  # scores + weighted values
    logits = 2 * c.emb_dim * c.vocab_size
    return c.num_layers * (per_token_layer + attention) + logits


def decoder_forward_flops(c: DecoderConfig, batch: int, length: int) -> int:
    """Forward matmul FLOPs of a decoder-only LM over [batch, length] tokens."""
    return batch * length * _decoder_token_flops(c, length)


def quiet_star_forward_flops(
    c: QuietStarConfig, batch: int, length: int, *, num_ahead: int, num_talk: int, num_thoughts: int
) -> int:
    """Forward FLOPs the token-parallel decomposition needs (docs/methods.md).

    Rows are the batch repeated `num_thoughts` times. The base step is an ordinary decoder
    forward, and step 1 (the start thought) sees only the context: both are the same for the
    copies of a row, so they count once per batch row. Each later step of the
    n_a + n_t - 2 runs every row's new token through the decoder attending to the context
    (full length, as above) plus its own k stream tokens. Every step but n_a - 2 (whose sample
    would be replaced by the end thought) needs the LM head, and the n_t scored steps add the
    mixing head (2H -> H -> H -> 1). The dense-mask construction attends to T * (k + 1) keys
    instead and runs step 1 for every copy; that waste is not counted.
    """
    d = c.decoder
    rows = batch * num_thoughts
    later_steps = sum(
        _decoder_token_flops(d, length + k) for k in range(2, num_ahead + num_talk - 1)
    )
    idle_head = 2 * d.emb_dim * d.vocab_size
    mixing = num_talk * 2 * (3 * d.emb_dim**2 + d.emb_dim)
    once_per_row = decoder_forward_flops(d, batch, length) + batch * length * _decoder_token_flops(
        d, length + 1
    )
    return once_per_row + rows * length * (later_steps - idle_head + mixing)


def t5_encoder_flops(c: T5Config, batch: int, input_length: int) -> int:
    """Forward matmul FLOPs of T5's encoder stack over [batch, input_length]."""
    d_attn = c.num_heads * c.head_dim
    per_token = 4 * 2 * c.emb_dim * d_attn + 2 * _mlp_params(c) + 4 * input_length * d_attn
    return batch * input_length * c.num_encoder_layers * per_token


def t5_forward_flops(c: T5Config, batch: int, input_length: int, target_length: int) -> int:
    """Forward matmul FLOPs of T5 over [batch, input_length] -> [batch, target_length]."""
    d_attn = c.num_heads * c.head_dim
    proj = 2 * c.emb_dim * d_attn  # one of q, k, v, o
    mlp = 2 * _mlp_params(c)
    enc_tokens, dec_tokens = batch * input_length, batch * target_length
    encoder = t5_encoder_flops(c, batch, input_length)
    decoder_per_token = (
        4 * proj  # self-attention q, k, v, o
        + 2 * proj  # cross-attention q, o
        + mlp
        + 4 * target_length * d_attn  # self-attention scores/values
        + 4 * input_length * d_attn  # cross-attention scores/values
    )
    decoder = dec_tokens * c.num_decoder_layers * decoder_per_token
    # cross-attention k, v of the encoder output
    cross_kv = enc_tokens * c.num_decoder_layers * 2 * proj
    logits = dec_tokens * 2 * c.emb_dim * c.vocab_size
    return encoder + decoder + cross_kv + logits


def decode_step_counts(
    c: T5Config | DecoderConfig, batch: int, prompt_length: int, new_tokens: int
) -> tuple[float, float]:
    """(model FLOPs, bytes that must be read) of one KV-cached decode step, averaged over the
    steps after the first: every matmul weight once, the self-attention keys/values of the
    positions written so far and an encoder-decoder's cross-attention keys/values.

    Each matmul weight element costs 2 FLOPs per row, so the weights a step reads are its
    token FLOPs without attention, halved (the embedding table counts only as the logits).
    """
    param_bytes = jnp.dtype(resolve_dtype(c.param_dtype)).itemsize
    cache_bytes = jnp.dtype(resolve_dtype(c.dtype)).itemsize
    if c.architecture == "encoder_decoder":
        d_attn = c.num_heads * c.head_dim
        self_keys, cross_keys = new_tokens / 2, prompt_length
        dense = c.num_decoder_layers * 2 * (6 * c.emb_dim * d_attn + _mlp_params(c))
        dense += 2 * c.emb_dim * c.vocab_size
        attention = c.num_decoder_layers * 4 * (self_keys + cross_keys) * d_attn
        kv = c.num_decoder_layers * 2 * (self_keys + cross_keys) * d_attn
    else:
        keys = prompt_length + new_tokens / 2
        dense = _decoder_token_flops(c, 0)
        attention = _decoder_token_flops(c, keys) - dense
        kv = c.num_layers * 2 * keys * c.kv_heads * c.head_dim
    flops = batch * (dense + attention)
    return flops, dense / 2 * param_bytes + batch * kv * cache_bytes


def train_step_flops(
    config: T5Config | DecoderConfig | QuietStarConfig,
    batch: int,
    *,
    target_length: int,
    input_length: int = 0,
    thinking: ThinkingSpec | None = None,
) -> int:
    """Model FLOPs of one training step (forward + backward = 3x forward).

    `thinking` (n_a, n_t, P) is required for a Quiet-STaR model.
    """
    if config.architecture == "quiet_star":
        if thinking is None:
            raise ValueError("train_step_flops of a Quiet-STaR model needs thinking=ThinkingSpec")
        return 3 * quiet_star_forward_flops(
            config,
            batch,
            target_length,
            num_ahead=thinking.num_ahead,
            num_talk=thinking.num_talk,
            num_thoughts=thinking.num_thoughts,
        )
    if config.architecture == "encoder_decoder":
        return 3 * t5_forward_flops(config, batch, input_length, target_length)
    return 3 * decoder_forward_flops(config, batch, target_length)


def qcrd_step_counts(model_config, batch: dict) -> tuple[int, int]:
    """(token positions, model FLOPs) of one QCRD student step: the label rows plus every
    candidate slot over its question (FLOPs are 3x the forward). Encoder-decoder: the
    question is encoded once for its slots. Decoder-only: each slot is a row of question
    ++ candidate. D's small forward inside the loss is not counted (MFU errs low)."""
    label_rows, label_len = batch["decoder_target_tokens"].shape
    rows, slots, length = batch["candidate_target_tokens"].shape
    question = batch["candidate_encoder_input_tokens"].shape[1]
    if model_config.architecture != "encoder_decoder":
        forward = decoder_forward_flops(model_config, label_rows, label_len)
        forward += decoder_forward_flops(model_config, rows * slots, question + length)
        tokens = label_rows * label_len + rows * slots * (question + length)
        return tokens, 3 * forward
    label_in = batch["encoder_input_tokens"].shape[1]
    forward = t5_forward_flops(model_config, label_rows, label_in, label_len)
    forward += t5_forward_flops(model_config, rows * slots, question, length)
    forward -= (slots - 1) * t5_encoder_flops(model_config, rows, question)
    tokens = label_rows * (label_in + label_len) + rows * (question + slots * length)
    return tokens, 3 * forward


def pinto_step_counts(model_config, batch: dict) -> tuple[int, int]:
    """(token positions, model FLOPs) of one PINTO step: the batch and its perturbed copy, each
    row encoded once and decoded once per choice slot, or for a decoder-only student one
    sequence of context ++ choice per slot (FLOPs are 3x the forward)."""
    rows, choices, length = batch["choice_target_tokens"].shape
    rows *= 2  # the perturbed copy
    inputs = batch["encoder_input_tokens"].shape[1]
    if model_config.architecture == "decoder":
        forward = decoder_forward_flops(model_config, rows * choices, inputs + length)
        return rows * choices * (inputs + length), 3 * forward
    forward = t5_forward_flops(model_config, rows * choices, inputs, length)
    forward -= (choices - 1) * t5_encoder_flops(model_config, rows, inputs)
    return rows * (inputs + choices * length), 3 * forward


def objective_step_counts(model_config, batch: dict) -> tuple[int, int] | None:
    """QCRD's or PINTO's (tokens, FLOPs) by the batch's features; None for a batch whose rows
    are the model's rows (`train_step_flops` counts those)."""
    if "candidate_target_tokens" in batch:
        return qcrd_step_counts(model_config, batch)
    if "choice_target_tokens" in batch:
        return pinto_step_counts(model_config, batch)
    return None


def measure_peak_matmul_flops(
    size: int = 2048, dtype=jnp.float32, repeats: int = 10, device=None
) -> float:
    """Best-of-`repeats` FLOP/s of a square matmul on one device (the MFU denominator)."""
    device = device or jax.devices()[0]
    a = jax.device_put(jnp.ones((size, size), dtype) * 0.5, device)
    b = jax.device_put(jnp.ones((size, size), dtype) * 0.25, device)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best
