"""STaR entry point (being built)."""
