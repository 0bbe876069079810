"""A SentencePiece unigram model as a Hugging Face fast tokenizer that encodes token for token.

`transformers` 5 reads a SentencePiece `tokenizer.model` by converting it to a fast tokenizer,
and the conversion is lossy for the shipped model (`tokenizers/rationale_sp.model`): the Llama
converter assumes BPE, the T5 converter collapses whitespace and drops the byte fallback. So an
export writes `tokenizer.json` itself, from the model proto, as the `tokenizers` package reads it
(plain JSON: writing needs neither `tokenizers` nor `transformers`):

- model: `Unigram` with every piece in id order, the unk id and byte fallback. The scores are
  those SentencePiece's encoder uses: a user-defined piece (`<thought>`, `-->`, ...) scores
  `bytes * max(FLT_MIN, max normal score) - 0.1`, and control, unknown, byte and unused pieces,
  which SentencePiece never matches in text, score below any path of normal pieces.
- normalizer: the proto's precompiled charsmap if it has one (the shipped model's normalizer is
  `identity`, without one), `remove_extra_whitespaces` as a strip and a collapse of space runs,
  the dummy prefix `▁`, spaces as `▁`.
- pre-tokenizer: a unigram model in `tokenizers` matches every vocabulary entry, control and byte
  pieces included (the text `<0x41>` would read as the byte 0x41), and a low score cannot stop
  that where the other path has an unknown character. So each character that starts such a
  piece, is in no normal piece and starts every user-defined piece it is in (`<` for the shipped
  model) is a pre-token of its own unless a user-defined piece starts there: SentencePiece cuts
  around it anyway.
- added tokens: the control and unknown pieces, special (`<pad>`, `</s>`, `<unk>`). User-defined
  pieces are not added tokens (they are split off before normalization, which would put a dummy
  prefix after each one); their unigram scores keep each of them one piece.
- decoder: `▁` as a space, byte pieces as UTF-8, and the dummy prefix stripped.

`tokenizer_config.json` names `PreTrainedTokenizerFast`, the eos / pad / unk tokens, no bos, and
`split_special_tokens`, so that `</s>` written in a text is its characters, as in SentencePiece.

Known differences: where two segmentations have the same pieces in another order (`####` with
the shipped model: `#`, `###` or `###`, `#`), SentencePiece picks by the float32 rounding of the
score of the text before it, which no tokenizer.json can reproduce (74 of the 14,946 GSM8K train
texts; the decoded text is the same). Decoding the unknown id gives ` ⁇ ` in SentencePiece and
`<unk>` (or nothing, skipping special tokens) here; a malformed run of byte pieces decodes
differently (`_decoder`); so does a byte piece for a space at the start.
"""

from __future__ import annotations

import base64
import json
import os
import struct

HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
SPACE = "\u2581"  # SentencePiece's whitespace mark
# sentencepiece_model.proto: ModelProto.SentencePiece.Type and TrainerSpec.ModelType
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
UNIGRAM = 1
_REGEX_SPECIAL = set("\\.^$|?*+()[]{}")  # Oniguruma metacharacters
FLT_MIN = 1.1754943508222875e-38  # the start of SentencePiece's max score


def _float32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def read_model_proto(sp_model_path: str):
    """The `ModelProto` of a SentencePiece model file."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    with open(os.fspath(sp_model_path), "rb") as f:
        proto.ParseFromString(f.read())
    return proto


def _unigram_vocab(proto) -> list[list]:
    """[piece, score] in id order, with the scores SentencePiece's encoder uses.

    A user-defined piece scores `bytes * max(FLT_MIN, max normal score) - 0.1` (unigram_model.cc),
    rounded to float32 as SentencePiece stores path scores. A control, unknown, byte or unused
    piece scores `(longest piece + 1) * min normal score - 10`, below any path of normal pieces
    as long as it; the unknown score (`tokenizers` takes the lowest score - 10) is then lower
    than SentencePiece's, which changes nothing where every path has the same unknown characters
    (a character that is no piece is in no normal piece of a trained model).
    """
    normal = [p.score for p in proto.pieces if p.type == NORMAL]
    max_score = max([FLT_MIN, *normal])
    longest = max(len(p.piece.encode("utf-8")) for p in proto.pieces)
    never = (longest + 1) * min(normal) - 10.0
    vocab = []
    for piece in proto.pieces:
        score = piece.score
        if piece.type == USER_DEFINED:
            score = _float32(_float32(len(piece.piece.encode("utf-8")) * max_score) - 0.1)
        elif piece.type != NORMAL:
            score = never
        vocab.append([piece.piece, score])
    return vocab


def _escape(text: str) -> str:
    return "".join("\\" + c if c in _REGEX_SPECIAL else c for c in text)


def _guard_pattern(proto) -> str | None:
    """A regex for the characters that must be pre-tokens of their own (module docstring)."""
    text = {t: [p.piece for p in proto.pieces if p.type == t] for t in (NORMAL, USER_DEFINED)}
    unmatched = [p.piece for p in proto.pieces if p.type in (CONTROL, UNKNOWN, BYTE, UNUSED)]
    alternatives = []
    for char in sorted({p[0] for p in unmatched if p}):
        user = [p for p in text[USER_DEFINED] if char in p]
        if any(char in p for p in text[NORMAL]) or any(p.index(char) != 0 for p in user):
            continue
        rests = sorted({p[1:] for p in user if len(p) > 1}, key=lambda r: (-len(r), r))
        ahead = f"(?!{'|'.join(_escape(r) for r in rests)})" if rests else ""
        alternatives.append(_escape(char) + ahead)
    return "|".join(alternatives) or None


def _normalizer(spec) -> dict | None:
    """The normalizers of `spec` (a `NormalizerSpec`) in SentencePiece's order."""
    steps = []
    if spec.precompiled_charsmap:
        charsmap = base64.b64encode(spec.precompiled_charsmap).decode("ascii")
        steps.append({"type": "Precompiled", "precompiled_charsmap": charsmap})
    elif spec.name not in ("identity", ""):
        raise ValueError(f"normalizer {spec.name!r} without a precompiled charsmap")
    if spec.remove_extra_whitespaces:
        # spaces only (a charsmap maps other whitespace to spaces first), as SentencePiece
        steps.append({"type": "Replace", "pattern": {"Regex": "\\A +| +\\z"}, "content": ""})
        steps.append({"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "})
    if spec.add_dummy_prefix:
        steps.append({"type": "Prepend", "prepend": SPACE})
    if spec.escape_whitespaces:
        steps.append({"type": "Replace", "pattern": {"String": " "}, "content": SPACE})
    return {"type": "Sequence", "normalizers": steps} if steps else None


def _decoder(proto) -> dict:
    """`▁` as a space, bytes as UTF-8, the dummy prefix stripped.

    `ByteFallback` reads a run of byte pieces that is not UTF-8 as one U+FFFD per byte, where
    SentencePiece keeps the valid characters in it (encoded text never has such a run).
    Replacing each ASCII byte piece first would narrow that to non-ASCII bytes, but 128
    `Replace` decoders make decoding about 15 times slower.
    """
    steps = [
        {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
        {"type": "ByteFallback"},
        {"type": "Fuse"},
    ]
    spec = proto.normalizer_spec
    if spec.add_dummy_prefix or spec.remove_extra_whitespaces:
        steps.append({"type": "Strip", "content": " ", "start": 1, "stop": 0})
    return {"type": "Sequence", "decoders": steps}


def _added_token(index: int, content: str) -> dict:
    return {
        "id": index,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


def tokenizer_json(proto, *, add_eos: bool = False) -> dict:
    """The `tokenizer.json` content (a dict) of a unigram SentencePiece `ModelProto`.

    Args:
      proto: the model (`read_model_proto`).
      add_eos: append the eos piece when special tokens are added (a template post-processor,
        as T5's tokenizer does); otherwise encoding adds nothing.

    Raises:
      ValueError: the model is not a unigram model, or its normalizer has no equivalent here.
    """
    trainer = proto.trainer_spec
    if trainer.treat_whitespace_as_suffix:
        raise ValueError("treat_whitespace_as_suffix has no tokenizer.json equivalent here")
    if trainer.model_type != UNIGRAM:
        raise ValueError(
            f"only unigram SentencePiece models are supported, not {trainer.model_type}"
        )
    special = [(i, p.piece) for i, p in enumerate(proto.pieces) if p.type in (CONTROL, UNKNOWN)]
    guard = _guard_pattern(proto)
    pre_tokenizer = None
    if guard:
        pattern = {"Regex": guard}
        pre_tokenizer = {
            "type": "Split",
            "pattern": pattern,
            "behavior": "Isolated",
            "invert": False,
        }
    post_processor = None
    if add_eos:
        if trainer.eos_id < 0:
            raise ValueError("add_eos: the model has no eos piece")
        eos = proto.pieces[trainer.eos_id].piece
        post_processor = {
            "type": "TemplateProcessing",
            "single": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
            ],
            "pair": [
                {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
                {"Sequence": {"id": "B", "type_id": 0}},
                {"SpecialToken": {"id": eos, "type_id": 0}},
            ],
            "special_tokens": {eos: {"id": eos, "ids": [trainer.eos_id], "tokens": [eos]}},
        }
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added_token(i, piece) for i, piece in special],
        "normalizer": _normalizer(proto.normalizer_spec),
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": _decoder(proto),
        "model": {
            "type": "Unigram",
            "unk_id": trainer.unk_id if trainer.unk_id >= 0 else None,
            "vocab": _unigram_vocab(proto),
            "byte_fallback": bool(trainer.byte_fallback),
        },
    }


def _piece(proto, index: int) -> str | None:
    return proto.pieces[index].piece if 0 <= index < len(proto.pieces) else None


def tokenizer_config(proto, *, add_eos: bool = False, model_max_length: int | None = None):
    """`tokenizer_config.json` and `special_tokens_map.json` contents for `tokenizer_json`."""
    trainer = proto.trainer_spec
    tokens = {
        "bos_token": _piece(proto, trainer.bos_id),
        "eos_token": _piece(proto, trainer.eos_id),
        "unk_token": _piece(proto, trainer.unk_id),
        "pad_token": _piece(proto, trainer.pad_id),
    }
    special = [(i, p.piece) for i, p in enumerate(proto.pieces) if p.type in (CONTROL, UNKNOWN)]
    added = {}
    for index, piece in special:
        entry = _added_token(index, piece)
        del entry["id"]
        added[str(index)] = entry
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **tokens,
        "add_bos_token": False,
        "add_eos_token": add_eos,
        "added_tokens_decoder": added,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": True,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    if model_max_length is not None:
        config["model_max_length"] = int(model_max_length)
    return config, {name: token for name, token in tokens.items() if token is not None}


def write_hf_tokenizer(
    sp_model_path: str,
    out_dir: str,
    *,
    add_eos: bool = False,
    model_max_length: int | None = None,
) -> list[str]:
    """Writes `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json`.

    `transformers.AutoTokenizer.from_pretrained(out_dir)` (and `tokenizers.Tokenizer.from_file`
    on `tokenizer.json`) then encodes and decodes as the SentencePiece model does (module
    docstring). Each file is written aside and renamed into place.

    Args:
      sp_model_path: a unigram SentencePiece model (`tokenizers/rationale_sp.model`).
      out_dir: the export directory (created if missing).
      add_eos: append the eos piece when special tokens are added (`tokenizer(text)`), as
        T5's tokenizer does; by default encoding adds no special tokens.
      model_max_length: written to `tokenizer_config.json` when given.

    Returns:
      The names of the files written (`HF_TOKENIZER_FILES`).

    Raises:
      FileNotFoundError: `sp_model_path` does not exist.
      ValueError: the model is not unigram or its normalizer has no equivalent here.
    """
    sp_model_path, out_dir = os.fspath(sp_model_path), os.fspath(out_dir)
    if not os.path.isfile(sp_model_path):
        raise FileNotFoundError(f"SentencePiece model {sp_model_path} does not exist")
    proto = read_model_proto(sp_model_path)
    config, special_map = tokenizer_config(
        proto, add_eos=add_eos, model_max_length=model_max_length
    )
    contents = [tokenizer_json(proto, add_eos=add_eos), config, special_map]
    os.makedirs(out_dir, exist_ok=True)
    for name, content in zip(HF_TOKENIZER_FILES, contents):
        path = os.path.join(out_dir, name)
        with open(f"{path}.partial", "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2, ensure_ascii=False)
            f.write("\n")
        os.replace(f"{path}.partial", path)
    return list(HF_TOKENIZER_FILES)
