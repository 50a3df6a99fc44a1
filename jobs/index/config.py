"""Config of the index stage: where the raw ratings are, how to read and validate them."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from jobs.common.config import StrictModel
from schemas.store import check_name

InputFormat = Literal["auto", "csv", "tsv", "movielens-udata", "movielens-dat", "parquet", "jsonl"]


class ColumnMap(StrictModel):
    """Which raw column holds each canonical field (see schemas.ratings)."""

    user: str = "user"
    """Raw column with the user id (any type; kept as text)."""
    item: str = "item"
    """Raw column with the item id (any type; kept as text)."""
    rating: str = "rating"
    """Raw column with the numeric rating."""
    timestamp: str | None = "timestamp"
    """Raw column with the event time (Unix seconds/milliseconds or ISO-8601); "" for none."""

    @field_validator("timestamp")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None


class SyntheticRatings(StrictModel):
    """Generate a ratings set with planted taste clusters instead of reading a file."""

    users: int = Field(2000, ge=10)
    """Number of users."""
    items: int = Field(600, ge=10)
    """Number of items."""
    clusters: int = Field(6, ge=2)
    """Planted taste clusters; users and items each belong to one."""
    ratings_per_user: int = Field(40, ge=5)
    """Mean ratings per user (Poisson)."""
    noise: float = Field(0.5, ge=0)
    """Standard deviation of the rating noise, in stars."""
    seed: int = 42
    """Seed of the generator; the same settings give the same file."""


class InputConfig(StrictModel):
    """The raw ratings: one file, a directory of files, or generated data."""

    path: str | None = None
    """File or directory (relative paths resolve against the config file's directory)."""
    synthetic: SyntheticRatings | None = None
    """Generate the data instead (written under the store's inputs/)."""
    format: InputFormat = "auto"
    """auto picks by name: u.data, *.dat, *.csv, *.tsv, *.parquet, *.jsonl/*.json."""
    columns: ColumnMap = ColumnMap()
    """Mapping from canonical fields to raw column names."""
    delimiter: str | None = None
    """Field separator for csv (default ",") and tsv (tab)."""
    header: bool = True
    """Whether csv/tsv files start with a header line."""
    timestamp_unit: Literal["s", "ms"] = "s"
    """Unit of numeric timestamps."""
    fingerprint: Literal["content", "metadata"] = "content"
    """content: sha256 of every file (exact); metadata: size and mtime (fast on huge inputs)."""

    @field_validator("path")
    @classmethod
    def _resolve(cls, value: str | None, info: ValidationInfo) -> str | None:
        base = (info.context or {}).get("base_dir")
        if value and base and "://" not in value and not Path(value).is_absolute():
            return str((Path(base) / value).resolve())
        return value

    @model_validator(mode="after")
    def _one_source(self) -> "InputConfig":
        if (self.path is None) == (self.synthetic is None):
            raise ValueError("set exactly one of input.path or input.synthetic")
        return self


class SplitConfig(StrictModel):
    """How kept ratings are split into train and validation."""

    kind: Literal["random", "time"] = "random"
    """random: a seeded hash of (user, item); time: the latest `fraction` of ratings by timestamp."""
    fraction: float = Field(0.1, gt=0, lt=1)
    """Share of ratings held out for validation."""
    seed: int = 42
    """Seed of the random split (changing it changes the snapshot)."""


class SparkConfig(StrictModel):
    """Where Spark runs. Only this changes to scale out (standalone, YARN, Kubernetes)."""

    master: str = "local[*]"
    """Spark master URL."""
    driver_memory: str = "2g"
    """Driver heap; applies only when this process starts the JVM."""
    shuffle_partitions: int = Field(8, ge=1)
    """spark.sql.shuffle.partitions (AQE coalesces small ones)."""
    conf: dict[str, str] = {}
    """Any extra Spark settings, e.g. executor memory or s3a credentials providers."""


class IndexConfig(StrictModel):
    """The index stage: raw ratings -> validated, deduplicated, indexed snapshot."""

    dataset: str
    """Snapshot namespace in the store (defaults to the config's name)."""
    input: InputConfig
    min_count: int = Field(1, ge=1)
    """Keys seen fewer times than this map to the reserved index 0."""
    rating_range: tuple[float, float] = (0.5, 5.0)
    """Inclusive valid rating range; ratings outside are quarantined."""
    split: SplitConfig = SplitConfig()
    parent: str = "latest"
    """Vocabulary parent: "latest" snapshot of this dataset, "none", or a snapshot id."""
    spark: SparkConfig = SparkConfig()

    @field_validator("dataset")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "dataset")

    @field_validator("rating_range")
    @classmethod
    def _range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not value[0] < value[1]:
            raise ValueError("rating_range must be [low, high] with low < high")
        return value

    def data_config(self) -> dict:
        """The fields that shape the snapshot's content (hashed into its id)."""
        return self.model_dump(
            mode="json",
            include={"min_count", "rating_range", "split", "input"},
            exclude={"input": {"path", "synthetic", "fingerprint"}},
        )
