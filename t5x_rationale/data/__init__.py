"""seqio data: sources, tasks, converters and streams (TensorFlow lives here only).

Importing the package makes TensorFlow's eventual import quiet (`quiet_stderr`): its C++
start-up notices are dropped and every GPU is hidden from it. TensorFlow itself is imported
only by the modules that need it (`synthetic/` never does).
"""

from t5x_rationale.data.quiet_stderr import quiet_tensorflow_imports

quiet_tensorflow_imports()
