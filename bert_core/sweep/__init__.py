"""Hyper-parameter sweeps over fine-tuning: the typed search space (no Optuna here; ``tasks/sweep_*`` drive it)."""
