"""Runtime: train state and step, loop, partitioning, checkpoints, optimizers, metrics, FLOPs."""
