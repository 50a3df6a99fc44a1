"""Data contracts every stage agrees on.

Nothing here imports Spark, torch, DuckDB or Prefect: the contracts are plain
Python so that any stage (and any test) can import them cheaply.
"""

from schemas.errors import (
    ConfigError,
    GateRefused,
    InputError,
    LatentstoreError,
    StoreError,
    StoreLockedError,
    TrainingDiverged,
)

__all__ = ["ConfigError", "GateRefused", "InputError", "LatentstoreError", "StoreError", "StoreLockedError",
           "TrainingDiverged"]
