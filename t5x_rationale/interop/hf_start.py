"""Starting from a Hugging Face directory without a separate import step.

`train.init_from_hf = DIR` gives a new run the weights of DIR (params only, fresh optimizer,
step 0), and a KD teacher may be an HF directory too. The model config must be the one DIR
describes (gin: `model_config.hf_dir = DIR`); runtime fields (dtype, param_dtype, dropout,
remat, scan, attention) are free. A Quiet-STaR model takes its base LM from DIR; its thought
embeddings and mixing head are added on top (`runtime/warm_start.py`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from t5x_rationale.interop.hf_config import HfConfigError, read_hf_config
from t5x_rationale.interop.importer import import_params
from t5x_rationale.interop.safetensors_io import SafetensorsCheckpoint

# Fields a run may set freely on an HF model: they change how it runs, not what it computes.
RUNTIME_FIELDS = (
    "dropout_rate",
    "dtype",
    "param_dtype",
    "remat_policy",
    "scan_layers",
    "attention_impl",
)


def is_hf_dir(path: str) -> bool:
    """True for a Hugging Face model directory (it has a `config.json`)."""
    return os.path.isfile(os.path.join(path, "config.json"))


def hf_model_config(hf_dir: str, **overrides: Any):
    """The model config `hf_dir/config.json` describes, with runtime `overrides`; overriding
    an architecture field with another value is an error naming the field."""
    config = read_hf_config(hf_dir)
    runtime = {k: v for k, v in overrides.items() if k in RUNTIME_FIELDS}
    for name, value in overrides.items():
        if name in runtime:
            continue
        if not hasattr(config, name):
            raise HfConfigError(f"model_config.{name}: {type(config).__name__} has no such field")
        if getattr(config, name) != value:
            raise HfConfigError(
                f"model_config.{name} = {value!r}, but {hf_dir}/config.json gives "
                f"{getattr(config, name)!r} (only {', '.join(RUNTIME_FIELDS)} may differ)"
            )
    return dataclasses.replace(config, **runtime)


def hf_params(hf_dir: str, model_config, abstract_params: Any) -> Any:
    """The params of `model_config` read from `hf_dir` onto the shardings of
    `abstract_params`; for a Quiet-STaR model, those of its base LM only."""
    base = model_config.decoder if model_config.architecture == "quiet_star" else model_config
    check_same_architecture(hf_dir, base)
    return import_params(SafetensorsCheckpoint.open(hf_dir), base, abstract_params)


def check_same_architecture(hf_dir: str, config) -> None:
    """Raises naming every architecture field where `config` differs from `hf_dir`'s."""
    theirs = read_hf_config(hf_dir)
    if type(theirs) is not type(config):
        raise HfConfigError(
            f"{hf_dir}/config.json is a {type(theirs).__name__}, the run's model a "
            f"{type(config).__name__}"
        )
    differ = [
        f"{f.name}: run {getattr(config, f.name)!r}, {hf_dir} {getattr(theirs, f.name)!r}"
        for f in dataclasses.fields(config)
        if f.name not in RUNTIME_FIELDS and getattr(config, f.name) != getattr(theirs, f.name)
    ]
    if differ:
        raise HfConfigError(
            f"the run's model is not the one {hf_dir}/config.json describes (bind "
            f"model_config.hf_dir to it): {'; '.join(differ)}"
        )
