"""Config of the publish stage: indexes, the writer lock, the quality gate, drift, retention, the map."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from jobs.common.config import StrictModel, resolve_path
from schemas.store import check_name


class GateConfig(StrictModel):
    """Refuse a version whose validation metric regresses (see jobs.publish.gate)."""

    enabled: bool = True
    """Off: every version is published (the decision is still recorded)."""
    tolerance: float = Field(0.02, ge=0)
    """On the same validation set as the current version: refuse when the new metric is worse by more
    than this fraction of the current value (0.02: 2% worse at most). The metric's direction applies."""
    floors: dict[str, float] = {}
    """Per model name, the metric's worst acceptable value, used when there is no comparable current
    version (the first publish, or a new snapshot): e.g. {movielens = 0.95} (RMSE at most 0.95)."""

    @field_validator("floors")
    @classmethod
    def _names(cls, value: dict[str, float]) -> dict[str, float]:
        for name in value:
            check_name(name, "publish.gate.floors key")
        return value


class MapConfig(StrictModel):
    """A 2-D map of one entity's vectors after each publish (PNG, attached to the flow run as a link)."""

    entity: str = "item"
    """The entity table to draw."""
    labels: str | None = None
    """CSV or Parquet with a label per key (relative paths resolve against the config file's folder)."""
    key_column: str = "key"
    """Column of ``labels`` holding the keys."""
    label_column: str | None = None
    """Column of ``labels`` that colours the points; multi-valued labels ("a|b") use the first value."""
    title_column: str | None = None
    """Column of ``labels`` with a readable name for the annotated points (default: the key)."""
    method: Literal["pca", "tsne"] = "pca"
    """Projection: PCA, or t-SNE (scikit-learn; slower)."""
    sample: int = Field(10_000, ge=10)
    """At most this many points (a seeded sample; the most frequent keys are always in it)."""
    min_count: int = Field(0, ge=0)
    """Only keys seen at least this often (rare keys' vectors are mostly noise)."""

    _resolve = field_validator("labels")(resolve_path)


#: How long a writer waits for the store's writer lock unless told otherwise.
DEFAULT_LOCK_TIMEOUT_SECONDS = 600.0


class PublishConfig(StrictModel):
    """How vectors are published (the model name comes from each [train] entry)."""

    hnsw_min_rows: int = Field(100_000, ge=1)
    """Tables with at least this many rows get an HNSW index; smaller ones use exact search."""
    hnsw_m: int = Field(16, ge=2)
    """HNSW graph degree (vss option M)."""
    hnsw_ef_construction: int = Field(128, ge=1)
    """HNSW build-time candidate list (vss option ef_construction)."""
    lock_timeout_seconds: float = Field(DEFAULT_LOCK_TIMEOUT_SECONDS, ge=0)
    """How long to wait for another publish holding the store's writer lock."""
    keep_versions: int | None = Field(5, ge=1)
    """Retention: keep the newest this many versions of each model (the current one always); none: keep all."""
    retention_grace_seconds: float = Field(300.0, ge=0)
    """A version is removed only once it has not been current for this long (readers still opening it)."""
    gate: GateConfig = GateConfig()
    drift_sample: int = Field(1000, ge=1)
    """Drift: keys sampled (seeded) among those in both the current and the new version."""
    drift_seed: int = 42
    """Seed of the drift sample."""
    map: MapConfig | None = None
    """Draw a 2-D map of an entity after each publish."""
