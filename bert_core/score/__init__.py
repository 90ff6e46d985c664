"""Bulk scoring of Parquet tables with a fine-tuned model, exactly once."""
