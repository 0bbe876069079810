"""TensorFlow's C++ start-up lines and its SentencePiece op's notice kept off the console.

TensorFlow writes them from C++ straight to file descriptor 2 (through absl logging, which
`TF_CPP_MIN_LOG_LEVEL` does not reach), so they are filtered at the descriptor: the block
runs with fd 2 going to a temporary file, and afterwards every line but the known notices
is written back. If the block raises, every line is written back.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile
from typing import Callable, Iterator

# Notices of a working TensorFlow: oneDNN, CPU features, no CUDA driver on a CPU machine.
_TF_STARTUP = re.compile(
    r"All log messages before absl::InitializeLog\(\)"
    r"|^[IWE]\d{4} [\d:. ]+\d+ (port|cudart_stub|cpu_feature_guard|cuda_platform|cuda_executor)"
    r"\.cc:\d+\]"
    r"|^To enable the following instructions: "
)
# Logged each time the op loads a model without a normalization map (ours: identity).
_TOKENIZER_NOTICE = "precompiled_charsmap is empty"


def is_tf_startup_notice(line: str) -> bool:
    return bool(_TF_STARTUP.search(line))


def is_tokenizer_notice(line: str) -> bool:
    return _TOKENIZER_NOTICE in line


@contextlib.contextmanager
def stderr_without(drop: Callable[[str], bool]) -> Iterator[None]:
    """Runs the block with fd 2 captured; then writes back the lines `drop` rejects."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        failed = True
        try:
            yield
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(ln for ln in lines if failed or not drop(ln))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` with a loader that runs its import with the start-up notices
    dropped and then hides every GPU from it (it only feeds data; accelerators are JAX's).
    Installed once; TensorFlow is still imported only when something imports it."""

    def find_spec(self, name, path, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(self)  # find the real spec, once
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


class _QuietLoader(importlib.abc.Loader):
    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        with stderr_without(is_tf_startup_notice):
            self.loader.exec_module(module)
            try:
                module.config.set_visible_devices([], "GPU")
            except RuntimeError:  # TensorFlow's devices were already initialised
                pass


def quiet_tensorflow_imports() -> None:
    """Makes the first `import tensorflow` (by seqio or this package) quiet."""
    if not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        if "tensorflow" not in sys.modules:
            sys.meta_path.insert(0, _QuietTensorFlowImport())
