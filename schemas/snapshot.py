"""The dataset snapshot contract: what the index stage writes and train reads.

    <snapshot>/
      manifest.json                 Manifest below; written last, before the directory is renamed into place
      interactions/split=train/     Parquet: schemas.ratings.INTERACTION_COLUMNS
      interactions/split=valid/
      vocab/<entity>/               Parquet: schemas.vocab.VOCAB_COLUMNS, one dataset per id column
      quarantine/                   Parquet: schemas.ratings.QUARANTINE_COLUMNS (may have zero rows)

A snapshot directory is immutable once it exists under its id.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "valid")


def interactions_dir(split: str) -> str:
    return f"interactions/split={split}"


def vocab_dir(entity: str) -> str:
    return f"vocab/{entity}"


QUARANTINE_DIR = "quarantine"


class InputFile(BaseModel):
    model_config = ConfigDict(frozen=True)
    path: str
    size: int
    sha256: str | None = None  # None when fingerprinting by metadata only
    mtime_ns: int | None = None


class Counts(BaseModel):
    """Row accounting: read == kept + quarantined + duplicates + superseded."""

    model_config = ConfigDict(frozen=True)
    read: int
    kept: int
    quarantined: int
    duplicates: int
    superseded: int
    quarantine_reasons: dict[str, int]
    train: int
    valid: int

    def balanced(self) -> bool:
        return (
            self.read == self.kept + self.quarantined + self.duplicates + self.superseded
            and self.kept == self.train + self.valid
            and self.quarantined == sum(self.quarantine_reasons.values())
        )


class VocabStats(BaseModel):
    model_config = ConfigDict(frozen=True)
    size: int  # largest index + 1 (index 0 included)
    keys: int  # keys with their own index
    new_keys: int  # appended by this build (== keys on a first build)
    rare_keys: int  # keys seen but mapped to 0 (count < min_count)


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)
    schema_version: int = SCHEMA_VERSION
    snapshot_id: str
    content_key: str  # hash of input fingerprint + data config; equal content -> reused snapshot
    dataset: str
    kind: str = "ratings"
    parent: str | None
    created_at: str
    input_format: str
    input_files: list[InputFile]
    input_fingerprint: str
    data_config: dict
    counts: Counts
    vocab: dict[str, VocabStats]
    rating_range: tuple[float, float]
    split: dict
    code_version: str
    spark: dict
