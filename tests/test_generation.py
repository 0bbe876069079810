"""Generation at scale: sharded sampling writes what one device writes, a stopped run resumes to
the same bytes, bucketing cuts padding without changing greedy outputs, and the bad inputs."""

import dataclasses
import functools
import json
import os
import shutil

import jax
import pytest
from generation_setup import CharVocabulary, generation_config, prompts, save_checkpoint

from t5x_rationale.architectures import get_preset
from t5x_rationale.generation import generate_to_shards, read_generations
from t5x_rationale.runtime.partitioning import MeshConfig, Partitioner, create_mesh

VOCAB = CharVocabulary()
ONE_DEVICE = (1, 1, 1)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("checkpoints")

    @functools.cache
    def make(preset):
        save_checkpoint(preset, str(root / preset))
        return str(root / preset)

    return make


def _partitioner(mesh):
    devices = jax.devices()[: mesh[0] * mesh[1] * mesh[2]]
    return Partitioner(create_mesh(MeshConfig(*mesh), devices))


def _generate(
    out, checkpoint, preset="t5-tiny", mesh=ONE_DEVICE, rows=None, stop=None, **overrides
):
    return generate_to_shards(
        get_preset(preset),
        checkpoint(preset),
        VOCAB,
        prompts() if rows is None else rows,
        str(out),
        generation_config(**overrides),
        _partitioner(mesh),
        stop_after_shards=stop,
        log=lambda line: None,
    )


def _files(out):
    """Every output file's bytes except the timings in summary.json."""
    names = sorted(n for n in os.listdir(out) if n != "summary.json")
    return {n: (out / n).read_bytes() for n in names}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, checkpoint):
    """The one-device output directory of a preset's test run (made once)."""
    root = tmp_path_factory.mktemp("reference")
    return functools.cache(lambda preset: _one_device(root / preset, checkpoint, preset))


def _one_device(out, checkpoint, preset):
    return out, _generate(out, checkpoint, preset, **SETTINGS[preset])


# The decoder-only run decodes one batch: each batch's shortest prompt compiles a program.
SETTINGS = {"t5-tiny": {}, "decoder-tiny": {"rows": prompts(4), "shard_size": 4}}


@pytest.mark.parametrize("preset,mesh", [("t5-tiny", (2, 4, 1)), ("decoder-tiny", (2, 2, 2))])
def test_sharded_generation_writes_the_one_device_tokens(
    tmp_path, reference, checkpoint, preset, mesh
):
    one, single = reference(preset)
    sharded = _generate(tmp_path, checkpoint, preset, mesh=mesh, **SETTINGS[preset])
    assert _files(tmp_path) == _files(one)
    assert sharded["generated_tokens"] == single["generated_tokens"] > 0
    rows = read_generations(str(one))
    expected = SETTINGS[preset].get("rows", prompts())
    assert [(r["id"], r["sample"]) for r in rows] == [
        (p["id"], k) for p in expected for k in range(2)
    ]
    assert all(r["gold"] == int(r["id"][1:]) and r["prompt"] for r in rows)  # passthrough kept
    assert all(0 < r["num_tokens"] <= 6 and isinstance(r["text"], str) for r in rows)
    # Sampling: the two samples of a prompt differ somewhere.
    assert any(a["text"] != b["text"] for a, b in zip(rows[::2], rows[1::2]))


def test_output_files_and_rows(tmp_path, reference):
    one, summary = reference("t5-tiny")
    assert sorted(os.listdir(one)) == [
        "manifest.json",
        *[f"shard-0000{i}-of-00003.jsonl" for i in range(3)],
        "summary.json",
    ]
    assert summary["rows"] == 2 * len(prompts()) and summary["complete"]
    assert summary["tokens_per_second"] > 0
    copy = tmp_path / "copy"
    shutil.copytree(one, copy)
    shard = copy / "shard-00001-of-00003.jsonl"
    shard.write_text(shard.read_text().replace('"sample": 1', '"sample": 2', 1))
    with pytest.raises(ValueError, match="shard-00001-of-00003.jsonl: contents differ"):
        read_generations(str(copy))
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="shard listed in the manifest is missing"):
        read_generations(str(copy))


def test_stopped_run_resumes_to_the_same_bytes(tmp_path, reference, checkpoint):
    full, _ = reference("t5-tiny")
    first = _generate(tmp_path, checkpoint, stop=1)
    assert (first["shards_done"], first["complete"]) == (1, False)
    with pytest.raises(ValueError, match="unfinished generation"):
        read_generations(str(tmp_path))
    # A shard written but not yet recorded (killed between the two writes) is written again.
    (tmp_path / "shard-00001-of-00003.jsonl").write_text("half a shard")
    resumed = _generate(tmp_path, checkpoint)
    assert (resumed["shards_written_now"], resumed["complete"]) == (2, True)
    assert _files(tmp_path) == _files(full)
    again = _generate(tmp_path, checkpoint)  # finished: nothing left to write
    assert again["shards_written_now"] == 0
    assert _files(tmp_path) == _files(full)


def test_resume_with_other_settings_is_refused_by_name(tmp_path, checkpoint):
    _generate(tmp_path / "out", checkpoint, stop=1)
    with pytest.raises(ValueError, match=r"generation\.seed: 11 -> 12"):
        _generate(tmp_path / "out", checkpoint, seed=12)
    with pytest.raises(ValueError, match="prompts_sha256"):
        _generate(tmp_path / "out", checkpoint, rows=prompts()[:-1])
    (tmp_path / "out" / "manifest.json").write_text(
        json.dumps({**json.loads((tmp_path / "out" / "manifest.json").read_text()), "format": "x"})
    )
    with pytest.raises(ValueError, match="not a generation manifest"):
        read_generations(str(tmp_path / "out"))


def test_bucketing_cuts_padding_and_keeps_greedy_outputs(tmp_path, checkpoint):
    greedy = dict(decode={"method": "greedy"}, num_samples=1, shard_size=13, batch_size=4)
    greedy["bucket_width"] = 16
    bucketed = _generate(tmp_path / "b", checkpoint, **greedy)
    plain = _generate(tmp_path / "p", checkpoint, bucket=False, **greedy)
    assert 0 < bucketed["padding_fraction"] < 0.75 * plain["padding_fraction"]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["padding_fraction"] == bucketed["padding_fraction"]
    assert read_generations(str(tmp_path / "b")) == read_generations(str(tmp_path / "p"))


def test_long_prompts_refused_by_id_or_skipped(tmp_path, checkpoint):
    rows = prompts() + [{"id": "long", "prompt": "x" * 60}]
    with pytest.raises(ValueError, match=r"id 'long'\) is 61 tokens, over input_length 48"):
        _generate(tmp_path / "a", checkpoint, rows=rows)
    summary = _generate(tmp_path / "b", checkpoint, rows=rows, skip_long_prompts=True)
    assert summary["skipped_ids"] == ["long"]
    assert summary["prompts"] == len(prompts())


@pytest.mark.parametrize(
    "rows,message",
    [
        ([], "no prompts"),
        ([{"id": "a"}], "field 'prompt'"),
        ([{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}], "id 'a' repeats prompt 0"),
        ([{"id": "a", "prompt": "x", "text": "y"}], "field 'text' is written by generation"),
    ],
)
def test_bad_prompt_rows(tmp_path, checkpoint, rows, message):
    with pytest.raises(ValueError, match=message):
        _generate(tmp_path, checkpoint, rows=rows)


def test_config_validation():
    with pytest.raises(ValueError, match="num_samples must be a positive int"):
        generation_config(num_samples=0)
    with pytest.raises(ValueError, match="'greedy' or 'sample'"):
        generation_config(decode={"method": "beam"})
    assert dataclasses.asdict(generation_config())["seed"] == 11
