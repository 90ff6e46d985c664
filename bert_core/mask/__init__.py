"""Masked-data generation: BERT (nsp) and RoBERTa (full) recipes with static or dynamic masking."""
