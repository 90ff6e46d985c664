"""Corpus ingestion: raw text/JSONL/CSV/Parquet files into a clean, deduplicated, sharded Parquet corpus."""
