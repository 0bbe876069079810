"""Library objects exposed to gin files (library code itself stays gin-free).

Names as written in configs: `@model_config()`, `@OptimizerConfig()`, `@MeshConfig()`,
`@EncDecConverter()`, `@DecoderConverter()`, `@MultiTaskEncDecConverter()`,
`@MultiTaskDecoderConverter()`, `@CandidatesConverter()`, `@token_loss`,
`@step_by_step_loss`, `@counterfactual_loss`, `@kd_loss`, `@DecodeConfig()`, `@register_gsm8k()`,
`@gsm8k_task_name()`, `@register_jsonl()`, `@quiet_star_config()`, `@quiet_star_loss`,
`@ThinkingSpec()`, `@ThoughtDecodeConfig()`, `@qcrd_loss`, `@discriminator_loss`,
`@discriminator_model()`, `@QcrdSettings()`. The entry points register themselves when they
run (`gin_launch.register`); nothing here imports them.
"""

from __future__ import annotations

from typing import Optional

import gin

from t5x_rationale.architectures import QuietStarConfig, get_preset
from t5x_rationale.architectures.discriminator import Discriminator
from t5x_rationale.data import converters, counterfactual, qcrd_converter, registry
from t5x_rationale.data.choice_converter import ChoicesConverter
from t5x_rationale.data.hf_vocab import quiet_star_thought_ids
from t5x_rationale.data.vocab import get_vocabulary
from t5x_rationale.inference.decoding import DecodeConfig
from t5x_rationale.inference.thought_generation import ThoughtDecodeConfig
from t5x_rationale.interop.hf_start import hf_model_config
from t5x_rationale.objectives import counterfactual_loss, kd_loss, step_by_step_loss, token_loss
from t5x_rationale.objectives.discriminator import discriminator_loss
from t5x_rationale.objectives.pinto import pinto_loss
from t5x_rationale.objectives.qcrd import qcrd_loss
from t5x_rationale.objectives.quiet_star import quiet_star_loss
from t5x_rationale.qcrd.settings import QcrdSettings
from t5x_rationale.quiet_star.spec import ThinkingSpec
from t5x_rationale.runtime.optimizers import OptimizerConfig
from t5x_rationale.runtime.partitioning import MeshConfig


@gin.configurable
def model_config(preset: Optional[str] = None, hf_dir: Optional[str] = None, **overrides):
    """A named architecture preset with field overrides (e.g. `vocab_size`, `dtype`), or the
    model a Hugging Face directory's `config.json` describes (`hf_dir`; only runtime fields
    such as `dtype` may be overridden). Exactly one of the two."""
    if (preset is None) == (hf_dir is None):
        raise ValueError(
            "bind exactly one of model_config.preset and model_config.hf_dir "
            f"(got preset={preset!r}, hf_dir={hf_dir!r}); configs/models/hf.gin sets preset "
            "to None"
        )
    if hf_dir is not None:
        return hf_model_config(hf_dir, **overrides)
    return get_preset(preset, **overrides)


@gin.configurable
def quiet_star_config(
    decoder=gin.REQUIRED,
    thought_init_ids=None,
    thought_token_ids=None,
    thought_scale: float = 100.0,
    mixing_sigmoid: bool = False,
    vocabulary_path: Optional[str] = None,
):
    """A decoder config (`@model_config()`) with the Quiet-STaR thought embeddings and mixing
    head. The thought ids default to the shipped tokenizer's; `vocabulary_path` (a tokenizer
    or a Hugging Face directory) derives both from it instead (`quiet_star_thought_ids`)."""
    ids = {
        k: tuple(v)
        for k, v in (
            ("thought_init_ids", thought_init_ids),
            ("thought_token_ids", thought_token_ids),
        )
        if v is not None
    }
    if vocabulary_path is not None:
        if ids:
            raise ValueError("quiet_star_config: set vocabulary_path or the thought ids, not both")
        derived = quiet_star_thought_ids(get_vocabulary(vocabulary_path))
        ids = {"thought_init_ids": derived.thought_init_ids}
        ids["thought_token_ids"] = derived.thought_token_ids
    return QuietStarConfig(
        decoder, thought_scale=thought_scale, mixing_sigmoid=mixing_sigmoid, **ids
    )


@gin.configurable
def discriminator_model(preset: str = "t5-tiny", hidden_dim: int = 256, **overrides):
    """QCRD's discriminator D(x, r) over the encoder of a T5 preset (fields overridable, e.g.
    `vocab_size` to match the student's tokenizer), with `hidden_dim` after the pool."""
    return Discriminator(get_preset(preset, **overrides), hidden_dim=hidden_dim)


for _cls in (
    converters.EncDecConverter,
    converters.MultiTaskEncDecConverter,
    converters.DecoderConverter,
    converters.MultiTaskDecoderConverter,
    qcrd_converter.CandidatesConverter,
    counterfactual.CounterfactualEncDecConverter,
    counterfactual.CounterfactualDecoderConverter,
):
    gin.external_configurable(_cls)
gin.external_configurable(OptimizerConfig)
gin.external_configurable(MeshConfig)
gin.external_configurable(DecodeConfig)
gin.external_configurable(ThoughtDecodeConfig)
gin.external_configurable(ThinkingSpec)
gin.external_configurable(token_loss)
gin.external_configurable(step_by_step_loss)
gin.external_configurable(counterfactual_loss)
gin.external_configurable(kd_loss)
gin.external_configurable(quiet_star_loss)
# PINTO: `@ChoicesConverter()` batches of a `*_choices` task, `@pinto_loss`
gin.external_configurable(ChoicesConverter)
gin.external_configurable(pinto_loss)
gin.external_configurable(qcrd_loss)
gin.external_configurable(QcrdSettings)
gin.external_configurable(discriminator_loss)
gin.external_configurable(registry.register_gsm8k)
gin.external_configurable(registry.gsm8k_task_name)
gin.external_configurable(registry.register_jsonl)
