"""seqio data: sources, tasks, converters and streams (TensorFlow lives here only)."""
