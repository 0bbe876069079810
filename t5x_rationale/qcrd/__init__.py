"""QCRD training: the lagged parameter ring, the online discriminator and self-adversarial
negatives, around the pure loss in `objectives/qcrd.py` (docs/methods.md 3.1)."""
