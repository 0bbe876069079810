"""The output directory of a generation run: numbered JSONL shards and the manifest.

`manifest.json` holds the run record (settings, checkpoint step, prompt fingerprint), the
plan's counts and one entry per finished shard (rows, tokens, sha256), in shard order: the
first shard it does not list is where a resumed run starts. It holds no timings, so a resumed
run writes the same bytes as an uninterrupted one; timings go in `summary.json`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Optional

from t5x_rationale.generation.config import differences
from t5x_rationale.runtime.run_files import write_text_atomic

FORMAT = "t5x_rationale.generation/1"
MANIFEST = "manifest.json"
SUMMARY = "summary.json"


def shard_name(index: int, num_shards: int) -> str:
    return f"shard-{index:05d}-of-{num_shards:05d}.jsonl"


def shard_text(rows: list[dict]) -> str:
    """One JSON object a line, keys in a fixed order (the bytes a shard is compared by)."""
    return "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_manifest(record: dict, num_shards: int, counts: dict[str, Any]) -> dict[str, Any]:
    """An unfinished manifest with no shard written yet."""
    return {
        "format": FORMAT,
        "record": record,
        "num_shards": num_shards,
        **counts,
        "shards": [],
        "complete": False,
    }


def write_text(path: str, text: str) -> None:
    write_text_atomic(path, text)


def write_json(path: str, value: dict) -> None:
    write_text_atomic(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def read_manifest(out_dir: str) -> Optional[dict[str, Any]]:
    """The manifest in `out_dir`, or None when there is none."""
    path = os.path.join(out_dir, MANIFEST)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        try:
            manifest = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a valid manifest: {e}") from e
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a generation manifest (format {FORMAT!r})")
    return manifest


def resume_manifest(out_dir: str, record: dict, fresh: dict) -> dict[str, Any]:
    """The manifest to continue: the saved one if its record matches, else `fresh` if none.

    A saved manifest written with other settings is refused, naming what differs; its listed
    shards must still be on disk with their recorded contents (else they are written again).
    """
    saved = read_manifest(out_dir)
    if saved is None:
        return fresh
    changed = differences(saved["record"], record)
    if changed:
        raise ValueError(
            f"{os.path.join(out_dir, MANIFEST)} was written with other settings "
            f"({'; '.join(changed[:6])}); use a new output directory or the same settings"
        )
    good = []
    for entry in saved["shards"]:
        if _shard_sha(out_dir, entry["file"]) != entry["sha256"]:
            break
        good.append(entry)
    return {
        **saved,
        "shards": good,
        "complete": saved["complete"] and len(good) == len(saved["shards"]),
    }


def _shard_sha(out_dir: str, name: str) -> Optional[str]:
    path = os.path.join(out_dir, name)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return sha256(f.read())


def read_generations(out_dir: str) -> list[dict]:
    """All rows of a finished run, in prompt order then sample order.

    Each row is `{"id", "sample", "prompt", "text", "num_tokens", ...passthrough}`. Refuses
    an unfinished run and a shard whose contents differ from the manifest's record of it.
    """
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise FileNotFoundError(f"{out_dir}: no {MANIFEST} (not a generation output directory)")
    if not manifest["complete"]:
        raise ValueError(
            f"{out_dir}: unfinished generation ({len(manifest['shards'])} of "
            f"{manifest['num_shards']} shards written); run it again to resume"
        )
    if len(manifest["shards"]) != manifest["num_shards"]:
        raise ValueError(
            f"{out_dir}: manifest lists {len(manifest['shards'])} shards of "
            f"{manifest['num_shards']}"
        )
    rows: list[dict] = []
    for entry in manifest["shards"]:
        path = os.path.join(out_dir, entry["file"])
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: shard listed in the manifest is missing")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if sha256(text) != entry["sha256"]:
            raise ValueError(f"{path}: contents differ from the manifest's record of the shard")
        # Split on "\n" only: str.splitlines also breaks at characters a text may hold (U+0085).
        rows += [json.loads(line) for line in text.split("\n") if line]
    return rows
