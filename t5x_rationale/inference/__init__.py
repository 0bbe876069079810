"""Inference: KV-cached decoding, prediction over tasks, thought generation and scoring."""
