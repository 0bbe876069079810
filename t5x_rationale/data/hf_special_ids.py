"""The bos / eos / pad / unk ids of a Hugging Face model directory, read from its files.

Two kinds of file name them:
- the tokenizer files `tokenizer_config.json` and `special_tokens_map.json` name *tokens*
  (`"eos_token": "</s>"` or `{"content": "</s>", ...}`), which the tokenizer maps to ids;
- the model files `generation_config.json` and `config.json` name *ids*
  (`"eos_token_id": 2`, or a list of stop ids such as Llama 3 Instruct's).

The tokenizer files decide; where they name no token, the first id of the model files does.
Every file that names a role must agree with the decision (a list of ids must contain it),
so a directory whose tokenizer and model disagree is an error naming both files and fields,
never a silent choice. Only eos is required.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Optional

TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json")
MODEL_FILES = ("generation_config.json", "config.json")
ROLES = ("bos", "eos", "pad", "unk")


@dataclasses.dataclass(frozen=True)
class SpecialIds:
    """The special ids of a HF directory (None: no file names one).

    `eos_ids` are all the stop ids the model files list (eos first), for generation.
    """

    bos: Optional[int]
    eos: Optional[int]  # None only where `read_special_ids(require_eos=False)` found none
    pad: Optional[int]
    unk: Optional[int]
    eos_ids: tuple = ()


@dataclasses.dataclass(frozen=True)
class _Named:
    """One file's value for a role: where it came from, and the id (or ids) it means."""

    file: str
    field: str
    ids: tuple  # one id, or a model file's list of ids
    token: Optional[str] = None

    def describe(self) -> str:
        token = f" ({self.token!r})" if self.token is not None else ""
        value = self.ids[0] if len(self.ids) == 1 and self.token is not None else list(self.ids)
        return f"{self.file} field {self.field!r}{token} = id {value}"


def read_json(directory: str, name: str) -> Optional[dict]:
    """The JSON object in `directory/name`, or None if there is no such file."""
    path = os.path.join(directory, name)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path} holds a JSON {type(value).__name__}, expected an object")
    return value


def _token_content(path: str, field: str, value) -> Optional[str]:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    raise ValueError(
        f"{path} field {field!r} is {value!r}: expected a token string or "
        '{"content": "<token>", ...}'
    )


def _from_tokenizer_files(directory, files, role, token_to_id) -> list[_Named]:
    named = []
    for name, data in files.items():
        field = f"{role}_token"
        token = _token_content(os.path.join(directory, name), field, data.get(field))
        if token is None:
            continue
        index = token_to_id(token)
        if index is None:
            raise ValueError(
                f"{os.path.join(directory, name)} field {field!r} names the token {token!r}, "
                "which the tokenizer does not have"
            )
        named.append(_Named(name, field, (int(index),), token))
    return named


def _from_model_files(directory, files, role) -> list[_Named]:
    named = []
    for name, data in files.items():
        field = f"{role}_token_id"
        value = data.get(field)
        if value is None or value == -1:  # -1: "no such token" in some older configs
            continue
        ids = tuple(value) if isinstance(value, list) else (value,)
        if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError(
                f"{os.path.join(directory, name)} field {field!r} is {value!r}: expected an "
                "integer id or a non-empty list of them"
            )
        named.append(_Named(name, field, ids))
    return named


def _decide(directory: str, role: str, named: list[_Named], vocab_size: int) -> Optional[int]:
    """The role's id: the first tokenizer file's, else the first model file's first id;
    every other file must agree with it."""
    if not named:
        return None
    for entry in named:
        bad = [i for i in entry.ids if not 0 <= i < vocab_size]
        if bad:
            raise ValueError(
                f"{os.path.join(directory, entry.file)} field {entry.field!r} has id(s) {bad} "
                f"outside the tokenizer's {vocab_size} tokens"
            )
    first = named[0]
    chosen = first.ids[0]
    for other in named[1:]:
        agrees = chosen == other.ids[0] if other.token is not None else chosen in other.ids
        if not agrees:
            raise ValueError(
                f"inconsistent {role} id in {directory}: {first.describe()}, but {other.describe()}"
            )
    return chosen


def read_special_ids(
    directory: str,
    token_to_id: Callable[[str], Optional[int]],
    vocab_size: int,
    *,
    require_eos: bool = True,
) -> SpecialIds:
    """The special ids of `directory` (see the module docstring).

    Args:
      directory: a Hugging Face model or tokenizer directory.
      token_to_id: the tokenizer's id of a token string, None if it has none.
      vocab_size: the tokenizer's number of ids (every id read must be below it).
      require_eos: raise when no file names an eos (a SentencePiece model has its own).

    Raises:
      ValueError: a file is not JSON, a field is malformed, names a token the tokenizer lacks
        or an id outside it, two files disagree, or (`require_eos`) no file names an eos.
    """
    tokenizer_files = {n: d for n in TOKENIZER_FILES if (d := read_json(directory, n))}
    model_files = {n: d for n in MODEL_FILES if (d := read_json(directory, n))}
    ids, eos_ids = {}, ()
    for role in ROLES:
        named = _from_tokenizer_files(directory, tokenizer_files, role, token_to_id)
        from_model = _from_model_files(directory, model_files, role)
        ids[role] = _decide(directory, role, named + from_model, vocab_size)
        if role == "eos":
            found = [ids[role], *(i for m in from_model for i in m.ids)]
            eos_ids = tuple(dict.fromkeys(i for i in found if i is not None))
    if ids["eos"] is None and require_eos:
        fields = [f"{n} 'eos_token'" for n in TOKENIZER_FILES]
        fields += [f"{n} 'eos_token_id'" for n in MODEL_FILES]
        raise ValueError(
            f"no eos token in {directory}: none of {', '.join(fields)} names one "
            f"(files present: {sorted(tokenizer_files) + sorted(model_files) or 'none'})"
        )
    return SpecialIds(ids["bos"], ids["eos"], ids["pad"], ids["unk"], eos_ids)
