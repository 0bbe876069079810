"""Every shipped gin file parses and builds its objects; command-line gin errors are clear."""

import re
from pathlib import Path

import gin
import pytest

from t5x_rationale import (
    annotate,
    evaluate,
    evaluate_thoughts,
    gin_launch,
    infer,
    inspect_thoughts,
    star,
    train,
)
from t5x_rationale.architectures import DecoderConfig, QuietStarConfig, T5Config
from t5x_rationale.runtime.partitioning import MeshConfig

CONFIGS = Path(gin_launch.CONFIGS_DIR)
for _module in (train, evaluate, infer, inspect_thoughts, evaluate_thoughts, star, annotate):
    gin_launch.register(getattr(_module, _module.__name__.rsplit(".", 1)[1]))
ENTRY_POINTS = gin_launch.ENTRY_POINTS
# Macros that run files leave to the command line.
REQUIRED_MACROS = [
    "TASK = 'synthetic_arith_cot'",
    "RUN_DIR = '/tmp/unused'",
    "CHECKPOINT_PATH = '/tmp/unused'",
    "TEACHER_CHECKPOINT = '/tmp/unused'",
    "EVAL_TASK = 'synthetic_arith_cot'",
    "OUTPUT_DIR = '/tmp/unused'",
    "BASE = '/tmp/unused'",
]
# set by the gsm8k_* files over gsm8k_base.gin
GSM8K_MACROS = [
    "TRAIN_KIND = 'cot'",
    "EVAL_KIND = 'cot'",
]
GSM8K_ROW = (
    '{"question": "Ann has 2 pens and buys 3. How many?", "answer": "2 + 3 = <<2+3=5>>5\\n#### 5"}'
)


def _parse(files, bindings=()):
    gin.clear_config()
    gin_launch.parse_config(files, list(bindings))


def _built_entry_points():
    """gin.get_bindings evaluates every @reference, i.e. builds the configured objects."""
    built = {}
    for name in ENTRY_POINTS:
        bindings = gin.get_bindings(name)
        if bindings:
            built[name] = bindings
    return built


def _text_with_includes(path: Path) -> str:
    """The file's text followed by the text of every file it includes, recursively."""
    text = path.read_text()
    for name in re.findall(r"^include '([^']+)'", text, re.MULTILINE):
        text += "\n" + _text_with_includes(CONFIGS / name)
    return text


def _model_file_for(run_file: Path) -> list[str]:
    text = _text_with_includes(run_file)
    if "model_config.preset" in text:
        return []
    return [
        "models/quiet_star_tiny.gin" if "@quiet_star_config()" in text else "models/t5_tiny.gin"
    ]


@pytest.mark.parametrize("run_file", sorted((CONFIGS / "runs").glob("*.gin")), ids=lambda p: p.name)
def test_run_file_builds(run_file, tmp_path):
    files = _model_file_for(run_file) + [str(run_file)]
    text = _text_with_includes(run_file)
    # GSM8K runs register their copy when built
    (tmp_path / "train.jsonl").write_text(GSM8K_ROW + "\n")
    (tmp_path / "test.jsonl").write_text(GSM8K_ROW + "\n")
    required = REQUIRED_MACROS + GSM8K_MACROS + [f"GSM8K_DIR = '{tmp_path}'"]
    macros = [m for m in required if m.split(" =")[0] + " = %gin.REQUIRED" in text]
    _parse(files, macros)
    built = _built_entry_points()
    assert built, f"{run_file.name} binds none of {ENTRY_POINTS}"
    for name, bindings in built.items():
        assert isinstance(bindings["model_config"], (T5Config, DecoderConfig, QuietStarConfig)), (
            name
        )
        if "mesh" in bindings:
            assert isinstance(bindings["mesh"], MeshConfig)
    gin.clear_config()


@pytest.mark.parametrize(
    "model_file", sorted((CONFIGS / "models").glob("*.gin")), ids=lambda p: p.name
)
def test_model_file_builds_its_preset(model_file):
    bindings = ["train.model_config = @model_config()"]
    if model_file.name == "hf.gin":  # the model of a Hugging Face directory
        bindings.append(f"HF_DIR = '{Path(__file__).parent / 'fixtures' / 'hf' / 'llama2'}'")
    _parse([str(model_file)], bindings)
    config = gin.get_bindings("train")["model_config"]
    assert config.architecture in ("encoder_decoder", "decoder")
    gin.clear_config()


@pytest.mark.parametrize(
    "mesh_file", sorted((CONFIGS / "meshes").glob("*.gin")), ids=lambda p: p.name
)
def test_mesh_file_builds(mesh_file):
    _parse([str(mesh_file)], ["train.mesh = @MeshConfig()"])
    mesh = gin.get_bindings("train")["mesh"]
    assert isinstance(mesh, MeshConfig)
    mesh.shape(8)  # fits the 8 simulated devices
    gin.clear_config()


def test_typo_in_binding_names_the_binding():
    with pytest.raises(gin_launch.GinConfigError, match=r"--gin\.trian\.num_steps=3.*trian"):
        _parse(["runs/quickstart.gin"], ["trian.num_steps = 3"])
    gin.clear_config()


def test_typo_in_parameter_names_it():
    with pytest.raises(gin_launch.GinConfigError, match="num_stepz"):
        _parse(["runs/quickstart.gin"], ["train.num_stepz = 3"])
    gin.clear_config()


def test_missing_gin_file_is_named():
    with pytest.raises(gin_launch.GinConfigError, match="runs/nope.gin"):
        _parse(["runs/nope.gin"])


def test_flags_are_parsed_in_order():
    args = gin_launch.parse_args(
        ["--gin_file=a.gin", "--gin.X=1", "--gin_file=b.gin", "--gin.train.y='z'"]
    )
    assert args.gin_file == ["a.gin", "b.gin"]
    assert args.gin_bindings == ["X = 1", "train.y = 'z'"]
    with pytest.raises(gin_launch.GinConfigError, match="unknown flag"):
        gin_launch.parse_args(["--gin_fil=a.gin"])


def test_includes_resolve_from_a_directory_with_its_own_runs_folder(tmp_path, monkeypatch):
    """Runs write `runs/<name>/` into the working directory; an `include 'runs/...'` must
    still find the shipped file instead of tripping over that folder."""
    (tmp_path / "runs" / "quickstart").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    _parse(["runs/label_only.gin"], ["RUN_DIR = '/tmp/unused'"])
    assert gin.query_parameter("train.mixture_or_task_name") is not None
    gin.clear_config()
