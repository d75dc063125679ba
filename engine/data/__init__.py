"""Corpora, tokenisation, batching and masking for distillation."""
