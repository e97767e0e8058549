"""Compression algorithms and training utilities (plain PyTorch; no Gymnasium inside)."""
