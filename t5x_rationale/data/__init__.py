"""seqio data: sources, tasks, converters and streams (TensorFlow lives here only).

Importing the package imports TensorFlow with its C++ start-up notices dropped and every
GPU hidden from it (`quiet_stderr`), before any module here imports it noisily.
"""

import importlib.util

from t5x_rationale.data.quiet_stderr import import_tensorflow_quietly

if importlib.util.find_spec("tensorflow") is not None:
    import_tensorflow_quietly()
