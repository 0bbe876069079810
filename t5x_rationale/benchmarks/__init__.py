"""Benchmark helpers: random batches and the by-parts timing of a dense_mask step."""
