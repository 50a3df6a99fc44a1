"""Config of the publish stage."""

from __future__ import annotations

from pydantic import Field

from jobs.common.config import StrictModel


class PublishConfig(StrictModel):
    """How vectors are published (the model name comes from each [train] entry)."""

    hnsw_min_rows: int = Field(100_000, ge=1)
    """Tables with at least this many rows get an HNSW index; smaller ones use exact search."""
    hnsw_m: int = Field(16, ge=2)
    """HNSW graph degree (vss option M)."""
    hnsw_ef_construction: int = Field(128, ge=1)
    """HNSW build-time candidate list (vss option ef_construction)."""
    lock_timeout_seconds: float = Field(600.0, ge=0)
    """How long to wait for another publish holding the store's writer lock."""
