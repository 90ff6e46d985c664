"""Prefect tasks wrapping ``bert_core`` stages: retries, MLflow logging, artifacts."""
