"""Objectives: pure functions `loss(model, params, batch, rng) -> (scalar, metrics)`."""

from t5x_rationale.objectives.counterfactual import counterfactual_loss
from t5x_rationale.objectives.cross_entropy import (
    token_accuracy,
    token_cross_entropy,
    weighted_mean,
)
from t5x_rationale.objectives.distill_kd import kd_loss, kl_divergence
from t5x_rationale.objectives.lm import forward_logits, token_loss
from t5x_rationale.objectives.step_by_step import step_by_step_loss

__all__ = [
    "counterfactual_loss",
    "forward_logits",
    "kd_loss",
    "kl_divergence",
    "step_by_step_loss",
    "token_accuracy",
    "token_cross_entropy",
    "token_loss",
    "weighted_mean",
]
