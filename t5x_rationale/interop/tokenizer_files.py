"""The tokenizer files of a Hugging Face directory, copied beside an export (no TensorFlow).

`transformers`' `AutoTokenizer` reads a directory through `tokenizer.json` (fast tokenizers),
`tokenizer.model` / `spiece.model` (SentencePiece), `vocab.json` + `merges.txt` (GPT-2 style
BPE), with `tokenizer_config.json`, `special_tokens_map.json` and `added_tokens.json` naming
the special tokens. Whichever of them the source holds are copied byte for byte.
"""

from __future__ import annotations

import os
import shutil

TOKENIZER_MODEL_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json")
TOKENIZER_FILES = TOKENIZER_MODEL_FILES + (
    "merges.txt",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
)


def tokenizer_files(hf_dir: str) -> list[str]:
    """The names of the tokenizer files `hf_dir` holds, in `TOKENIZER_FILES` order."""
    return [name for name in TOKENIZER_FILES if os.path.isfile(os.path.join(hf_dir, name))]


def copy_tokenizer_files(hf_dir: str, out_dir: str, *, require_tokenizer: bool = True) -> list:
    """Copies the tokenizer files of `hf_dir` into `out_dir` (created if missing).

    Each file is copied aside and renamed into place, so a reader never sees half a file.

    Args:
      hf_dir: the Hugging Face directory the model was imported from.
      out_dir: the export directory.
      require_tokenizer: raise when `hf_dir` holds no tokenizer model file (otherwise copy
        whatever tokenizer files there are, possibly none).

    Returns:
      The names of the files copied.

    Raises:
      FileNotFoundError: `hf_dir` is not a directory, or (with `require_tokenizer`) it holds
        none of `TOKENIZER_MODEL_FILES`.
    """
    hf_dir, out_dir = os.fspath(hf_dir), os.fspath(out_dir)
    if not os.path.isdir(hf_dir):
        raise FileNotFoundError(f"Hugging Face directory {hf_dir} does not exist")
    names = tokenizer_files(hf_dir)
    if require_tokenizer and not set(names) & set(TOKENIZER_MODEL_FILES):
        raise FileNotFoundError(
            f"no tokenizer in {hf_dir}: expected one of {', '.join(TOKENIZER_MODEL_FILES)} "
            f"(files present: {sorted(os.listdir(hf_dir)) or 'none'})"
        )
    os.makedirs(out_dir, exist_ok=True)
    for name in names:
        target = os.path.join(out_dir, name)
        aside = f"{target}.partial"
        shutil.copyfile(os.path.join(hf_dir, name), aside)
        os.replace(aside, target)
    return names
