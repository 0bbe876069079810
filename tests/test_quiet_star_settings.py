"""One owner for the thinking settings: the `ThinkingSpec` gin binds is the one the loss,
the logged FLOPs (MFU) and thought scoring use."""

import functools

import gin
import pytest
from quiet_star_models import tiny_config

from t5x_rationale import gin_launch, train
from t5x_rationale.architectures import get_preset
from t5x_rationale.data.converters import DecoderConverter
from t5x_rationale.data.pipeline import StreamSpec
from t5x_rationale.objectives.quiet_star import quiet_star_loss
from t5x_rationale.quiet_star.spec import ThinkingSpec
from t5x_rationale.runtime.flops import quiet_star_forward_flops

SPEC = ThinkingSpec(num_ahead=5, num_talk=2, num_thoughts=3)


def _logged_flops(config, thinking, batch=8, length=32):
    stream = StreamSpec("synthetic_arith_text", "train", {"targets": length}, batch)
    converter = DecoderConverter(pack=True, inputs=False, loss_on_targets_only=False)
    return train._throughput(config, stream, converter, False, thinking).flops_per_step


def test_logged_flops_count_the_handed_spec():
    config = tiny_config()
    expected = 3 * quiet_star_forward_flops(config, 8, 32, num_ahead=5, num_talk=2, num_thoughts=3)
    assert _logged_flops(config, SPEC) == expected
    assert _logged_flops(config, ThinkingSpec()) != expected  # the count depends on the spec


def test_train_hands_the_spec_to_the_objective_and_refuses_a_mismatch():
    objective = train._with_thinking(quiet_star_loss, tiny_config(), SPEC)
    assert isinstance(objective, functools.partial) and objective.keywords == {"spec": SPEC}
    with pytest.raises(ValueError, match="train.thinking"):
        train._with_thinking(quiet_star_loss, tiny_config(), None)
    with pytest.raises(ValueError, match="does not think"):
        train._with_thinking(quiet_star_loss, get_preset("decoder-tiny"), SPEC)


def test_gin_binds_one_spec_for_training_and_scoring():
    gin_launch.register(train.train)
    gin.clear_config()
    gin_launch.parse_config(
        ["models/quiet_star_tiny.gin", "runs/quiet_star.gin"],
        [
            "RUN_DIR = '/tmp/unused'",
            "ThinkingSpec.num_ahead = 5",
            "ThinkingSpec.num_talk = 2",
            "ThinkingSpec.num_thoughts = 3",
        ],
    )
    try:
        assert gin.get_bindings("train")["thinking"] == SPEC
    finally:
        gin.clear_config()
