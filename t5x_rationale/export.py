"""Export a checkpoint of ours as a Hugging Face model directory.

    python -m t5x_rationale.export --checkpoint CKPT --model_gin MODEL.gin --out_dir D
        [--model_type llama|mistral|qwen2|t5] [--max_shard_mb 4096] [--hf_dir HF_DIR]

CKPT is a run's `checkpoints/` (its latest step) or one step directory; MODEL.gin binds
`model_config` (a run's or `import_hf`'s `model.gin`, a `configs/models/` file, or a run's
`config.gin`). D gets `config.json`, `generation_config.json`, the safetensors (shards
with an index past `--max_shard_mb`) and the tokenizer files, which `transformers`' Auto
classes load; a Quiet-STaR model also `quiet_star.safetensors`. Special ids and tokenizer
come from `--hf_dir` (the HF directory a fine-tuned model came from), else from what an
import left in CKPT's root (`hf_config.json`, `tokenizer/` if any), else from the SentencePiece
model the run used (`--sentencepiece_model`, default the shipped one; pad 0, eos 1), written
as a `tokenizer.json` that transformers reads as SentencePiece does. D is written beside
itself and renamed when complete.

`--format jax_export [--max_input_length 512] [--max_decode_length 128]` writes instead the
`jax.export`-serialized serving functions and params that `interop.serving` decodes from
without the model code (layout: `interop.jax_export`).
"""

from __future__ import annotations

import argparse
import ast
import json
import logging
import os
import re
import shutil
import sys
from typing import Optional

from t5x_rationale.architectures import (
    DecoderConfig,
    QuietStarConfig,
    build_model,
    dummy_batch,
    get_preset,
)
from t5x_rationale.interop.exporter import hf_tensors
from t5x_rationale.interop.hf_config import to_hf_config
from t5x_rationale.interop.hf_start import hf_model_config
from t5x_rationale.interop.jax_export import PLATFORMS, export_jax
from t5x_rationale.interop.quiet_star_files import write_quiet_star_file
from t5x_rationale.interop.safetensors_io import write_safetensors
from t5x_rationale.interop.sentencepiece_json import write_hf_tokenizer
from t5x_rationale.interop.tokenizer_files import copy_tokenizer_files
from t5x_rationale.runtime.checkpoints import restore_params
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh
from t5x_rationale.runtime.trainer import abstract_params

SHIPPED_TOKENIZER = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tokenizers", "rationale_sp.model"
)
SPECIAL_IDS = ("pad_token_id", "eos_token_id", "bos_token_id", "decoder_start_token_id")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--model_gin", required=True, help="a gin file binding model_config")
    p.add_argument("--out_dir", required=True, help="the HF directory to write (must not exist)")
    p.add_argument(
        "--model_type",
        help="llama, mistral, qwen2, t5 or mt5 (default: the imported one, else from the config)",
    )
    p.add_argument("--max_shard_mb", type=int, default=4096)
    p.add_argument(
        "--hf_dir", help="the HF directory the model came from: its special ids and tokenizer"
    )
    p.add_argument(
        "--sentencepiece_model",
        help="a model not from HF: the SentencePiece model it was trained with (default: the "
        "shipped tokenizers/rationale_sp.model), written as tokenizer.json",
    )
    p.add_argument("--format", choices=("hf", "jax_export"), default="hf")
    p.add_argument("--max_input_length", type=int, default=512, help="jax_export: prompt width")
    p.add_argument("--max_decode_length", type=int, default=128, help="jax_export: new tokens")
    p.add_argument("--platforms", default=",".join(PLATFORMS), help="jax_export: lowered for")
    return p.parse_args(argv)


def read_model_config(model_gin: str):
    """The config of a gin file's `model_config.KEY = VALUE` lines (`preset` or `hf_dir`),
    as a Quiet-STaR model when it binds `quiet_star_config.*`. Values must be literals, or
    `%MACRO`s bound to literals in the file, as `import_hf` and `train` write them; other
    lines are skipped."""
    bindings = _literal_bindings(model_gin)
    fields = _scope(bindings, "model_config")
    thinking = _scope(bindings, "quiet_star_config")
    preset, hf_dir = fields.pop("preset", None), fields.pop("hf_dir", None)
    if hf_dir is not None:
        config = hf_model_config(hf_dir, **fields)
    elif preset is not None:
        config = get_preset(preset, **fields)
    else:
        raise ValueError(f"{model_gin} binds no model_config.preset or model_config.hf_dir")
    if "decoder" not in thinking:
        return config
    if "vocabulary_path" in thinking:
        raise ValueError(
            f"{model_gin} derives the thought ids from quiet_star_config.vocabulary_path; "
            "give the run's model.gin instead (written with its ids resolved)"
        )
    thinking.pop("decoder")
    ids = {k: tuple(v) for k, v in thinking.items() if k.endswith("_ids")}
    return QuietStarConfig(config, **{**thinking, **ids})


def _scope(bindings: dict, scope: str) -> dict:
    return {k.split(".", 1)[1]: v for k, v in bindings.items() if k.startswith(scope + ".")}


_BINDING = re.compile(r"((?:model_config|quiet_star_config)\.\w+|[A-Z][A-Z0-9_]*)\s*=\s*(.+)$")


def _literal_bindings(model_gin: str) -> dict:
    """{"model_config.KEY" or "quiet_star_config.KEY": value}, macros resolved; references to
    configurables (`@...`) are skipped."""
    bindings, macros, references = {}, {}, {}
    with open(model_gin, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            match = _BINDING.match(line.strip())
            if not match:
                continue
            name, text = match[1], match[2]
            if text.startswith("@"):  # a reference: only the Quiet-STaR wrapping matters
                if name == "quiet_star_config.decoder":
                    bindings[name] = text
                continue
            if text.startswith("%"):
                references[name] = (text, number)
                continue
            try:
                value = ast.literal_eval(text)
            except (ValueError, SyntaxError) as e:
                if name.isupper():
                    continue  # a macro we do not need
                raise ValueError(f"{model_gin}:{number}: {text!r} is not a literal") from e
            (macros if name.isupper() else bindings)[name] = value
    for name, (text, number) in references.items():
        if text[1:] not in macros:
            raise ValueError(f"{model_gin}:{number}: {text!r} is not a literal")
        if not name.isupper():
            bindings[name] = macros[text[1:]]
    return bindings


def export_hf(
    checkpoint: str,
    config,
    out_dir: str,
    *,
    model_type=None,
    max_shard_mb=4096,
    hf_dir=None,
    sentencepiece_model=None,
):
    """Writes `checkpoint`'s params of model `config` as the HF directory `out_dir`; a
    Quiet-STaR model as its base LM plus `quiet_star.safetensors` (interop/quiet_star_files)."""
    if os.path.exists(out_dir):
        raise FileExistsError(f"--out_dir {out_dir} exists; choose a new directory")
    base = config.decoder if config.architecture == "quiet_star" else config
    config_json, tokenizer_dir = _origin(checkpoint, hf_dir)
    model_type = model_type or _default_model_type(base, config_json)
    enc_dec = config.architecture == "encoder_decoder"
    example = dummy_batch(config, 1, target_length=8, input_length=8 if enc_dec else 0)
    partitioner = Partitioner(create_mesh(MeshConfig.parse("1x-1x1")))
    params, _ = restore_params(
        checkpoint, abstract_params(build_model(config), partitioner, example)
    )
    fields = {**to_hf_config(base, model_type=model_type), "dtype": base.param_dtype}
    ids = _special_ids(config_json, enc_dec)
    partial = f"{out_dir.rstrip('/')}.exporting"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        write_safetensors(
            partial,
            hf_tensors(base, params),
            max_shard_bytes=max_shard_mb << 20,
            metadata={"format": "pt"},
        )
        if base is not config:
            write_quiet_star_file(partial, config, params)
        if tokenizer_dir is not None:
            copy_tokenizer_files(tokenizer_dir, partial, require_tokenizer=hf_dir is not None)
        elif config_json is None or sentencepiece_model:  # trained on a SentencePiece model
            write_hf_tokenizer(sentencepiece_model or SHIPPED_TOKENIZER, partial, add_eos=enc_dec)
        _write_json(os.path.join(partial, "config.json"), {**fields, **ids})
        _write_json(os.path.join(partial, "generation_config.json"), ids)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    os.replace(partial, out_dir)
    return fields


def _default_model_type(config, config_json: Optional[str]) -> str:
    """The model_type the model came with (its HF config.json), else one that can hold it."""
    if config_json is not None:
        with open(config_json, encoding="utf-8") as f:
            recorded = json.load(f).get("model_type")
        if recorded:
            return recorded
    if isinstance(config, DecoderConfig):
        if config.attention_bias:
            return "qwen2"
        return "mistral" if config.sliding_window else "llama"
    return "t5"


def _origin(checkpoint: str, hf_dir: Optional[str]) -> tuple[Optional[str], Optional[str]]:
    """(the config.json holding the model's special ids, the directory of its tokenizer
    files): `hf_dir`'s, else those an import left in the checkpoint's root (`hf_config.json`,
    `tokenizer/`), else (None, None)."""
    if hf_dir is not None:
        if not os.path.isfile(os.path.join(hf_dir, "config.json")):
            raise FileNotFoundError(f"--hf_dir {hf_dir} has no config.json")
        return os.path.join(hf_dir, "config.json"), hf_dir
    path = os.path.abspath(checkpoint.rstrip("/"))
    root = os.path.dirname(os.path.dirname(path) if os.path.basename(path).isdigit() else path)
    recorded, tokenizer = os.path.join(root, "hf_config.json"), os.path.join(root, "tokenizer")
    if not os.path.isfile(recorded):
        return None, None
    return recorded, tokenizer if os.path.isdir(tokenizer) else None


def _special_ids(config_json: Optional[str], enc_dec: bool) -> dict:
    """The special ids of an HF config.json, else ours (the shipped tokenizer's)."""
    if config_json is not None:
        with open(config_json, encoding="utf-8") as f:
            hf = json.load(f)
        return {k: hf[k] for k in SPECIAL_IDS if hf.get(k) is not None}
    ids = {"pad_token_id": 0, "eos_token_id": 1}
    return {**ids, "decoder_start_token_id": 0} if enc_dec else ids


def _write_json(path: str, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")


def _export_jax(args, config) -> int:
    """--format jax_export: serving functions and params (see interop.jax_export)."""
    export_jax(
        args.checkpoint,
        config,
        args.out_dir,
        max_input_length=args.max_input_length,
        max_decode_length=args.max_decode_length,
        special_ids=_special_ids(
            _origin(args.checkpoint, args.hf_dir)[0], config.architecture == "encoder_decoder"
        ),
        platforms=tuple(args.platforms.split(",")),
    )
    print(f"export: {args.checkpoint} -> {args.out_dir} (jax_export)")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.getLogger("absl").setLevel(logging.ERROR)  # orbax's notices of a normal run
    try:
        config = read_model_config(args.model_gin)
        if args.format == "jax_export":
            return _export_jax(args, config)
        export_hf(
            args.checkpoint,
            config,
            args.out_dir,
            model_type=args.model_type,
            max_shard_mb=args.max_shard_mb,
            hf_dir=args.hf_dir,
            sentencepiece_model=args.sentencepiece_model,
        )
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"export: error: {e}", file=sys.stderr)
        return 2
    print(f"export: {args.checkpoint} -> {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
