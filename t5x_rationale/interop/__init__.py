"""Interop: Hugging Face safetensors and config.json import and export, serving export."""
