"""The house rules of docs/architecture.md, checked on the source tree: the import-linter
layer contract (pyproject.toml), ruff format and lint, and the size limits of modules and
functions."""

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "t5x_rationale"
BIN = Path(sys.executable).parent
MAX_MODULE_LINES = 400
# the code after the docstring; a gin entry point's keyword list is not code
MAX_FUNCTION_LINES = 60


def _tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed next to {sys.executable}; install the test extra")
    return str(path)


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [_tool("lint-imports"), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": str(BIN)},
        capture_output=True,
        text=True,
    )


def test_layer_contract_holds():
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout, result.stdout


@pytest.mark.parametrize(
    "module, upward_import",
    [
        ("architectures/layers.py", "from t5x_rationale.runtime import trainer"),
        ("data/vocab.py", "from t5x_rationale.architectures import configs"),
        ("objectives/lm.py", "from t5x_rationale.inference import prediction"),
        ("inference/prediction.py", "from t5x_rationale.objectives import lm"),
        ("runtime/flops.py", "from t5x_rationale import train"),
        ("quiet_star/spec.py", "from t5x_rationale.objectives import quiet_star"),
        ("inference/prediction.py", "import seqio"),
    ],
)
def test_layer_contract_catches_an_upward_import(tmp_path, module, upward_import):
    """The contract on a copy of the package with one forbidden import added must fail."""
    shutil.copytree(
        PACKAGE, tmp_path / "t5x_rationale", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "t5x_rationale" / module
    target.write_text(target.read_text() + f"\n{upward_import}  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert "BROKEN" in result.stdout or "broken" in result.stdout, result.stdout


def test_ruff_format_and_lint_are_clean():
    fmt = subprocess.run(
        [_tool("ruff"), "format", "--check", "."], cwd=ROOT, capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout + fmt.stderr
    lint = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def _code_lines(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the first statement after the docstring to the end of the function."""
    body = node.body
    if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:] or body
    return node.end_lineno - body[0].lineno + 1


def test_modules_and_functions_fit_on_a_screen():
    """Package and test modules at most 400 lines; package functions at most 60 lines of code."""
    too_long = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "tests").glob("*.py")]):
        text = path.read_text()
        name = path.relative_to(ROOT)
        if text.count("\n") > MAX_MODULE_LINES:
            too_long.append(f"{name}: {text.count(chr(10))} lines (> {MAX_MODULE_LINES})")
        if PACKAGE not in path.parents:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                if _code_lines(node) > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {_code_lines(node)} lines")
    assert not too_long, "\n".join(too_long)
