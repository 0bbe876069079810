"""An imported model keeps its tokenizer: `import_hf` copies the tokenizer files into
CKPT/tokenizer (a `vocabulary_path`), and `export` writes them back with the model's special
ids, from the import or from `--hf_dir` for a fine-tuned run's checkpoint."""

import json
import os
import shutil

import pytest

from t5x_rationale.data.hf_vocab import vocabulary_from_hf_dir
from t5x_rationale.export import export_hf
from t5x_rationale.import_hf import import_hf
from t5x_rationale.interop.checkpoint_files import save_params

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TOKENIZER = os.path.join(FIXTURES, "hf_tokenizers", "bpe")
IDS = {"bos_token_id": 300, "eos_token_id": 301, "pad_token_id": 302}
TEXT = "What is 12 + 30? It is 42.\n"


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    """The llama2 fixture's weights with the byte-level BPE tokenizer fixture and its ids."""
    directory = tmp_path_factory.mktemp("hf") / "model"
    shutil.copytree(os.path.join(FIXTURES, "hf", "llama2"), directory)
    for name in os.listdir(TOKENIZER):
        shutil.copy(os.path.join(TOKENIZER, name), directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, **IDS}))
    return str(directory)


def _files(directory):
    return {n: open(os.path.join(directory, n), "rb").read() for n in sorted(os.listdir(directory))}


def test_import_keeps_the_tokenizer_and_export_writes_it_back(tmp_path, hf_dir):
    config, params = import_hf(hf_dir, str(tmp_path / "ckpt"))
    kept = vocabulary_from_hf_dir(str(tmp_path / "ckpt" / "tokenizer"))
    source = vocabulary_from_hf_dir(hf_dir)
    assert kept.encode(TEXT) == source.encode(TEXT) and len(source.encode(TEXT)) > 5
    assert (kept.eos_id, kept.pad_id) == (source.eos_id, source.pad_id) == (301, 302)

    export_hf(str(tmp_path / "ckpt" / "checkpoints"), config, str(tmp_path / "out"))
    written = _files(tmp_path / "out")
    for name, content in _files(TOKENIZER).items():
        if name != "generation_config.json":  # ours is written from config.json's ids
            assert written[name] == content, name
    assert {k: json.loads(written["config.json"])[k] for k in IDS} == IDS


def test_a_fine_tuned_checkpoint_takes_ids_and_tokenizer_from_hf_dir(tmp_path, hf_dir):
    config, params = import_hf(hf_dir, str(tmp_path / "ckpt"))
    save_params(str(tmp_path / "run" / "checkpoints"), params)  # a run's own checkpoints
    run = str(tmp_path / "run" / "checkpoints")
    export_hf(run, config, str(tmp_path / "plain"))
    plain = _files(tmp_path / "plain")  # as if trained on the shipped tokenizer
    assert plain["tokenizer.json"] != _files(TOKENIZER)["tokenizer.json"]
    assert json.loads(plain["tokenizer_config.json"])["eos_token"] == "</s>"
    assert json.loads((tmp_path / "plain" / "config.json").read_text())["eos_token_id"] == 1
    export_hf(run, config, str(tmp_path / "out"), hf_dir=hf_dir)
    assert _files(tmp_path / "out")["tokenizer.json"] == _files(TOKENIZER)["tokenizer.json"]
    got = json.loads((tmp_path / "out" / "config.json").read_text())
    assert {k: got[k] for k in IDS} == IDS
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        export_hf(run, config, str(tmp_path / "bad"), hf_dir=str(tmp_path))
    assert not os.path.exists(tmp_path / "bad")
