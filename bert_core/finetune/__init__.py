"""Fine-tuning for sequence and token classification, with evaluation metrics and export."""
