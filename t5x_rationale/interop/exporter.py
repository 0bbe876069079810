"""Our params -> Hugging Face tensors (the inverse of `importer`, layout by layout)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from t5x_rationale.interop.hf_names import mappings


def hf_tensors(config, params: Any) -> dict[str, np.ndarray]:
    """Every HF tensor of `config`'s model from `params` (gathered to the host)."""
    tensors = {}
    for m in mappings(config):
        value = params
        for key in m.path:
            value = value[key]
        ours = np.asarray(jax.device_get(value))
        tensors[m.hf_name] = m.layout.to_hf(ours)
    return tensors
