"""Knowledge distillation: a fine-tuned teacher's soft labels train a smaller student (DistilBERT, TinyBERT)."""
