"""Pretraining a BERT encoder: model, data loading, training loop, checkpoints, export."""
