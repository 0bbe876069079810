"""Teacher annotation entry point (being built)."""
