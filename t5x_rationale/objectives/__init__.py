"""Objectives: pure functions `loss(model, params, batch, rng) -> (scalar, metrics)`."""

from t5x_rationale.objectives.cross_entropy import token_cross_entropy, weighted_mean
from t5x_rationale.objectives.lm import forward_logits, token_loss

__all__ = ["forward_logits", "token_cross_entropy", "token_loss", "weighted_mean"]
