"""Generation at scale: batched, sharded, resumable sampling over a dataset into JSONL shards.

    summary = generate_to_shards(model_config, checkpoint_path, vocabulary, prompts, out_dir,
                                 GenerationConfig(decode=DecodeConfig(...), num_samples=4))
    rows = read_generations(out_dir)

See docs/generation.md.
"""

from t5x_rationale.generation.config import GenerationConfig
from t5x_rationale.generation.runner import generate_to_shards
from t5x_rationale.generation.shards import read_generations

__all__ = ["GenerationConfig", "generate_to_shards", "read_generations"]
