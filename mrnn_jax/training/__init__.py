"""Training: the loop, its checkpoints, logs, signals, lock and guards."""
