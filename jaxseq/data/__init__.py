"""Data: strict text reading, tokenizers, vocabularies, batches, corpora."""
