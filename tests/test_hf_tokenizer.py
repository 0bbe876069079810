"""A Hugging Face directory's tokenizer as a seqio vocabulary (issue 21, tokenizers).

The fixture (tests/fixtures/hf_tokenizers/, written by tests/fixtures/make_hf_tokenizers.py)
is a byte-level BPE laid out as Llama 3's: 300 BPE ids, then bos 300, eos 301, pad 302.
`reference.json` holds the ids and texts transformers' AutoTokenizer gives on edge cases.
"""

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import seqio
import tensorflow as tf

from t5x_rationale.data import registry, vocab
from t5x_rationale.data.converters import DecoderConverter
from t5x_rationale.data.hf_vocab import (
    HFTokenizerVocabulary,
    quiet_star_thought_ids,
    vocabulary_from_hf_dir,
)
from t5x_rationale.data.pipeline import StreamSpec, TaskStream
from t5x_rationale.data.run_inputs import check_task
from t5x_rationale.data.tasks import register_text_task
from t5x_rationale.interop.tokenizer_files import copy_tokenizer_files

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "hf_tokenizers"
BPE_DIR = FIXTURES / "bpe"
REFERENCE = json.loads((FIXTURES / "reference.json").read_text())
CASES = REFERENCE["cases"]
BOS, EOS, PAD = 300, 301, 302


@pytest.fixture(scope="module")
def bpe():
    return vocabulary_from_hf_dir(str(BPE_DIR))


def _hf_dir(tmp_path, files=None, drop=()):
    """A copy of the fixture directory with some JSON files replaced or dropped."""
    target = tmp_path / "hf"
    shutil.copytree(BPE_DIR, target)
    for name in drop:
        (target / name).unlink()
    for name, value in (files or {}).items():
        (target / name).write_text(value if isinstance(value, str) else json.dumps(value))
    return target


def test_import_tokenizers_from_the_repository_root_is_the_hf_package():
    """The repository's tokenizers/ folder (no __init__.py) must not shadow the package."""
    script = "import tokenizers, sys; print(tokenizers.__file__); print(tokenizers.Tokenizer)"
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "site-packages" in out.splitlines()[0], out
    import tokenizers

    assert hasattr(tokenizers, "Tokenizer") and tokenizers.__file__ is not None


def test_reference_comes_from_transformers():
    assert REFERENCE["reference"].startswith("transformers"), REFERENCE["reference"]
    assert REFERENCE["special_ids"] == {"bos": BOS, "eos": EOS, "pad": PAD}


@pytest.mark.parametrize("case", CASES, ids=[repr(c["text"])[:24] for c in CASES])
def test_python_encode_and_decode_equal_transformers(bpe, case):
    ids = list(bpe.encode(case["text"]))
    assert ids == case["ids"]
    assert bpe._decode(ids) == case["decoded"]  # seqio's decode stops at the first eos
    framed = [BOS, *ids, EOS, PAD, PAD]
    if EOS not in ids:
        assert bpe.decode(ids) == case["decoded"]
        assert bpe.decode(framed) == case["decoded_framed"]
    # the template of tokenizer.json prepends the bos when asked for special tokens
    assert [BOS, *ids] == case["ids_with_special_tokens"]


def test_tf_encode_and_decode_equal_python(bpe):
    texts = [c["text"] for c in CASES]
    for text in texts:
        assert bpe.encode_tf(tf.constant(text)).numpy().tolist() == list(bpe.encode(text))
    ragged = bpe.encode_tf(tf.constant(texts))
    assert ragged.to_list() == [list(bpe.encode(t)) for t in texts]
    rows = [[BOS, *c["ids"], EOS, PAD] for c in CASES]
    width = max(map(len, rows))
    dense = np.array([r + [PAD] * (width - len(r)) for r in rows], np.int32)
    decoded = [t.decode() for t in bpe.decode_tf(tf.constant(dense)).numpy()]
    assert decoded == [bpe.decode(r) for r in dense.tolist()]
    assert bpe.decode_tf(tf.constant(dense[0])).numpy().decode() == bpe.decode(dense[0].tolist())


def test_tf_encode_inside_a_tf_data_graph(bpe):
    texts = [c["text"] for c in CASES]
    ds = tf.data.Dataset.from_tensor_slices(texts).map(bpe.encode_tf)
    assert ds.element_spec.shape.as_list() == [None]
    assert [x.tolist() for x in ds.as_numpy_iterator()] == [c["ids"] for c in CASES]


def test_special_ids_are_read_from_the_files(bpe):
    assert isinstance(bpe, HFTokenizerVocabulary)
    assert (bpe.bos_id, bpe.eos_id, bpe.pad_id, bpe.unk_id) == (BOS, EOS, PAD, None)
    assert bpe.vocab_size == REFERENCE["vocab_size"] == 303
    assert bpe.special_ids.eos_ids == (EOS,)


def test_eos_from_model_files_when_the_tokenizer_files_name_none(tmp_path):
    directory = _hf_dir(
        tmp_path,
        files={"config.json": {"eos_token_id": EOS, "bos_token_id": BOS}},
        drop=("tokenizer_config.json", "special_tokens_map.json", "generation_config.json"),
    )
    found = vocabulary_from_hf_dir(str(directory))
    assert (found.bos_id, found.eos_id, found.pad_id, found.unk_id) == (BOS, EOS, EOS, None)


def test_a_list_of_stop_ids_keeps_the_tokenizer_eos_first(tmp_path):
    directory = _hf_dir(tmp_path, files={"generation_config.json": {"eos_token_id": [PAD, EOS]}})
    special = vocabulary_from_hf_dir(str(directory)).special_ids
    assert (special.eos, special.eos_ids) == (EOS, (EOS, PAD))


def test_pickles_and_compares_by_content(bpe, tmp_path):
    again = pickle.loads(pickle.dumps(bpe))
    assert again == bpe and again.encode("Tom has") == bpe.encode("Tom has")
    assert vocabulary_from_hf_dir(str(_hf_dir(tmp_path))) == bpe
    assert bpe != vocab.get_vocabulary()


@pytest.mark.parametrize(
    "files, drop, message",
    [
        ({}, ("tokenizer.json",), "no tokenizer in .*expected tokenizer.json"),
        (
            {"special_tokens_map.json": {"eos_token": "<|pad|>"}},
            (),
            "inconsistent eos id.*tokenizer_config.json field 'eos_token'.*"
            "special_tokens_map.json field 'eos_token'",
        ),
        (
            {"generation_config.json": {"eos_token_id": [BOS]}},
            (),
            "inconsistent eos id.*generation_config.json field 'eos_token_id'",
        ),
        (
            {"config.json": {"pad_token_id": 0}},
            (),
            "inconsistent pad id.*config.json field 'pad_token_id'",
        ),
        (
            {"tokenizer_config.json": {"eos_token": "<|eot|>"}},
            (),
            "tokenizer_config.json field 'eos_token' names the token '<\\|eot\\|>'",
        ),
        (
            {"tokenizer_config.json": {"bos_token": "<|begin_of_text|>"}},
            ("special_tokens_map.json", "generation_config.json"),
            "no eos token in .*tokenizer_config.json 'eos_token'.*config.json 'eos_token_id'",
        ),
        (
            {"config.json": {"eos_token_id": 999}},
            ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json"),
            "config.json field 'eos_token_id' has id.*999.*outside the tokenizer's 303 tokens",
        ),
        ({"config.json": {"eos_token_id": "2"}}, (), "config.json field 'eos_token_id' is '2'"),
        ({"tokenizer_config.json": "{not json"}, (), "tokenizer_config.json is not valid JSON"),
        ({"tokenizer.json": "{}"}, (), "tokenizer.json is not a tokenizer"),
    ],
    ids=[
        "no tokenizer.json",
        "tokenizer files disagree",
        "generation_config disagrees",
        "config pad disagrees",
        "unknown token",
        "no eos anywhere",
        "id outside the vocabulary",
        "id not an int",
        "bad json",
        "bad tokenizer.json",
    ],
)
def test_bad_directories_name_the_file_and_field(tmp_path, files, drop, message):
    directory = _hf_dir(tmp_path, files=files, drop=drop)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        vocabulary_from_hf_dir(str(directory))


def test_a_directory_with_only_tokenizer_config(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(FileNotFoundError, match=r"tokenizer\.json or one of tokenizer\.model"):
        vocabulary_from_hf_dir(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        vocabulary_from_hf_dir(str(tmp_path / "missing"))


def _sentencepiece_dir(tmp_path, config):
    directory = tmp_path / "sp"
    directory.mkdir()
    shutil.copy(vocab.DEFAULT_SPM_PATH, directory / "tokenizer.model")
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    return directory


def test_tokenizer_model_loads_as_the_project_loads_sentencepiece(tmp_path):
    directory = _sentencepiece_dir(tmp_path, {"eos_token": "</s>", "unk_token": "<unk>"})
    loaded = vocabulary_from_hf_dir(str(directory))
    shipped = vocab.get_vocabulary()
    assert isinstance(loaded, seqio.SentencePieceVocabulary)
    assert loaded.eos_id == shipped.eos_id == 1
    assert loaded.encode("Tom has 3 apples.") == shipped.encode("Tom has 3 apples.")
    (directory / "config.json").write_text(json.dumps({"eos_token_id": 2}))
    with pytest.raises(ValueError, match="config.json field 'eos_token_id'"):
        vocabulary_from_hf_dir(str(directory))


def test_tokenizer_model_disagreeing_with_the_hf_files(tmp_path):
    directory = _sentencepiece_dir(tmp_path, {"unk_token": "</s>"})
    with pytest.raises(ValueError, match="give unk id 1, but the SentencePiece model"):
        vocabulary_from_hf_dir(str(directory))


def test_quiet_star_thought_ids_are_appended_after_the_vocabulary(bpe):
    ids = quiet_star_thought_ids(bpe)
    assert ids.thought_token_ids == (303, 304) and ids.appended
    assert ids.thought_init_ids == tuple(bpe.encode("---")) == tuple(CASES[7]["ids"])
    assert bpe.decode(list(ids.thought_init_ids)) == "---"
    assert bpe.decode([*bpe.encode("a"), 303, 304]) == "a"  # thought ids decode to nothing


def test_quiet_star_thought_ids_reuse_tokens_the_tokenizer_has(tmp_path):
    import tokenizers

    tokenizer = tokenizers.Tokenizer.from_file(str(BPE_DIR / "tokenizer.json"))
    tokenizer.add_special_tokens(["<|startthought|>", "<|endthought|>"])
    directory = _hf_dir(tmp_path)
    tokenizer.save(str(directory / "tokenizer.json"))
    ids = quiet_star_thought_ids(vocabulary_from_hf_dir(str(directory)))
    assert (ids.thought_token_ids, ids.appended) == ((303, 304), False)
    shipped = quiet_star_thought_ids(vocab.get_vocabulary())
    assert shipped.thought_token_ids == vocab.thought_token_ids(vocab.get_vocabulary())
    assert not shipped.appended


def test_the_data_pipeline_tokenizes_with_an_hf_directory(tmp_path):
    """`get_vocabulary(HF_DIR)` (what `train.vocabulary_path` reads), a task registered with
    it, and the repository's stream: the batch holds the python encoding and the eos."""
    hf_vocab = vocab.get_vocabulary(str(BPE_DIR))
    texts = ["Tom has 3 apples.", "unicode: café, 東京 🤖"]

    def dataset_fn(split, shuffle_files, seed=None):
        return tf.data.Dataset.from_tensor_slices({"text": texts})

    source = seqio.FunctionDataSource(dataset_fn, splits=("train",))
    name = register_text_task("hf_bpe_text_test", source, vocabulary=hf_vocab, overwrite=True)
    assert check_task(name, vocab.get_vocabulary(str(BPE_DIR))) is not None
    with pytest.raises(
        ValueError, match="tokenized with .*rationale_sp.model, but this run uses .*tokenizer.json"
    ):
        check_task("synthetic_arith_text", hf_vocab)
    spec = StreamSpec(name, "train", {"targets": 64}, 2, shuffle=False, num_epochs=1)
    converter = DecoderConverter(pack=False, inputs=False, loss_on_targets_only=False)
    batch = next(TaskStream(spec, converter, host_rows=slice(0, 2)))
    for row, text in zip(batch["decoder_target_tokens"], texts):
        expected = [*hf_vocab.encode(text), EOS]
        assert row[: len(expected)].tolist() == expected
        assert hf_vocab.decode(row.tolist()) == text


def test_gsm8k_and_jsonl_tasks_take_a_vocabulary_path(tmp_path):
    for split in ("train", "test"):
        (tmp_path / f"{split}.jsonl").write_text("")
    name = registry.gsm8k_task_name(
        "label", data_dir=str(tmp_path), name="hf_gsm8k_test", vocabulary_path=str(BPE_DIR)
    )
    names = registry.register_jsonl(
        "hf_jsonl_test", train=str(tmp_path / "train.jsonl"), vocabulary_path=str(BPE_DIR)
    )
    for task in (name, names.cot):
        features = seqio.get_mixture_or_task(task).output_features
        assert features["targets"].vocabulary == vocabulary_from_hf_dir(str(BPE_DIR))


def test_tokenizer_files_are_copied_for_an_export(tmp_path):
    out = tmp_path / "export"
    copied = copy_tokenizer_files(str(BPE_DIR), str(out))
    assert copied == ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]
    for name in copied:
        assert (out / name).read_bytes() == (BPE_DIR / name).read_bytes()
    assert sorted(os.listdir(out)) == sorted(copied)  # nothing left aside
    assert vocabulary_from_hf_dir(str(out)) == vocabulary_from_hf_dir(str(BPE_DIR))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "tokenizer_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="no tokenizer in .*tokenizer.json"):
        copy_tokenizer_files(str(empty), str(tmp_path / "out2"))
    assert copy_tokenizer_files(str(empty), str(tmp_path / "out3"), require_tokenizer=False) == [
        "tokenizer_config.json"
    ]


def test_tokenizer_files_module_needs_no_tensorflow():
    script = (
        "import sys; import t5x_rationale.interop.tokenizer_files; "
        "assert 'tensorflow' not in sys.modules and 'seqio' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, check=True)


@pytest.mark.parametrize("pack", [False, True])
def test_id_zero_is_a_real_token_in_byte_level_bpe(bpe, pack):
    """In byte-level BPE vocabularies (Llama 3, Qwen2, this fixture) id 0 is '!': the whole
    training stream keeps it as a token with its loss weight, packed or not."""
    name = "hf_bpe_bang_test"
    source = seqio.FunctionDataSource(
        lambda split, shuffle_files, seed=None: tf.data.Dataset.from_tensor_slices(
            {"text": ["Hi!"]}
        ),
        splits=("train",),
    )
    register_text_task(name, source, vocabulary=bpe, overwrite=True)
    assert 0 in bpe.encode("Hi!")
    spec = StreamSpec(name, "train", {"targets": 8}, 1, shuffle=False, num_epochs=1)
    converter = DecoderConverter(pack=pack, inputs=False, loss_on_targets_only=False)
    batch = next(TaskStream(spec, converter, host_rows=slice(0, 1)))
    ids = list(bpe.encode("Hi!")) + [bpe.eos_id]
    n = len(ids)
    assert batch["decoder_target_tokens"][0, :n].tolist() == ids
    assert batch["decoder_loss_weights"][0].tolist() == [1.0] * n + [0.0] * (8 - n)
