"""Quiet-STaR's thinking forward: spec, functional decoder, steps, streams, dense_mask, terms."""
