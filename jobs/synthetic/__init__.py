"""Deterministic synthetic inputs with planted structure, for the demo, tests and benchmarks."""
