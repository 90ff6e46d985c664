"""WordPiece vocabulary building with the `tokenizers` library, saved as a Hugging Face tokenizer directory."""
