"""The train stage: learn vectors from a snapshot with PyTorch (CUDA when present)."""
