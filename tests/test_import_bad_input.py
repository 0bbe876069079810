"""`python -m t5x_rationale.import_hf` on bad input: one line naming the file and the tensor
or field, exit code 2, and no `--out_dir` (nor its `.importing` staging directory) left."""

import json
import os
import shutil

import pytest

from t5x_rationale import import_hf
from t5x_rationale.interop.safetensors_io import SafetensorsCheckpoint, write_safetensors

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf")


def _tensors(directory):
    checkpoint = SafetensorsCheckpoint.open(directory)
    return {name: checkpoint.read(name) for name in checkpoint.names()}


def _rewrite(directory, edit):
    tensors = _tensors(directory)
    edit(tensors)
    os.unlink(os.path.join(directory, "model.safetensors"))
    write_safetensors(directory, tensors, metadata={"format": "pt"})


def _missing(d):
    _rewrite(d, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    return "model.layers.1.mlp.up_proj.weight", d


def _extra(d):
    _rewrite(d, lambda t: t.update({"model.layers.2.mlp.up_proj.weight": t["model.norm.weight"]}))
    return "model.layers.2.mlp.up_proj.weight", f"{d}/model.safetensors"


def _misshapen(d):
    _rewrite(d, lambda t: t.update({"model.norm.weight": t["model.norm.weight"][:-1]}))
    return "tensor model.norm.weight has shape [63]", f"{d}/model.safetensors"


def _truncated(d):
    path = os.path.join(d, "model.safetensors")
    os.truncate(path, os.path.getsize(path) - 100)
    return "truncated", path


def _index_names_a_missing_shard(d):
    shutil.rmtree(d)
    shutil.copytree(os.path.join(FIXTURES, "llama3"), d)
    os.unlink(os.path.join(d, "model-00002-of-00004.safetensors"))
    return "model-00002-of-00004.safetensors", f"{d}/model.safetensors.index.json"


def _unsupported_config(d):
    path = os.path.join(d, "config.json")
    with open(path) as f:
        config = json.load(f)
    config["hidden_act"] = "gelu"
    with open(path, "w") as f:
        json.dump(config, f)
    return "hidden_act='gelu' is not supported", path


def _only_pickle(d):
    os.unlink(os.path.join(d, "model.safetensors"))
    open(os.path.join(d, "pytorch_model.bin"), "wb").write(b"\x80\x04pickled")
    return "pickle", d


@pytest.mark.parametrize(
    "damage",
    [
        _missing,
        _extra,
        _misshapen,
        _truncated,
        _index_names_a_missing_shard,
        _unsupported_config,
        _only_pickle,
    ],
)
def test_bad_input_is_one_named_error_and_leaves_no_out_dir(tmp_path, capsys, damage):
    hf = str(tmp_path / "hf")
    shutil.copytree(os.path.join(FIXTURES, "llama2"), hf)
    what, where = damage(hf)
    out = tmp_path / "ckpt"
    assert import_hf.main(["--hf_dir", hf, "--out_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("import_hf: error:") and len(err.splitlines()) == 1, err
    assert what in err and where in err, err
    assert sorted(os.listdir(tmp_path)) == ["hf"]
