"""The dataset snapshot contract: what the index stage writes and train reads.

    <snapshot>/                     kind = "ratings"
      manifest.json                 Manifest below; written last, before the directory is renamed into place
      interactions/split=train/     Parquet: schemas.ratings.INTERACTION_COLUMNS
      interactions/split=valid/
      vocab/<entity>/               Parquet: schemas.vocab.VOCAB_COLUMNS, one dataset per id column (user, item)
      quarantine/                   Parquet: schemas.ratings.QUARANTINE_COLUMNS (may have zero rows)

    <snapshot>/                     kind = "events" (see schemas.events)
      manifest.json
      sessions/                     Parquet: schemas.events.SESSION_COLUMNS, training sessions (held-out events excluded)
      histories/                    Parquet: schemas.events.HISTORY_COLUMNS, one row per indexed user
      vocab/user/, vocab/token/     Parquet: schemas.vocab.VOCAB_COLUMNS
      quarantine/                   Parquet: schemas.events.QUARANTINE_COLUMNS

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
SESSIONS_DIR = "sessions"
HISTORIES_DIR = "histories"


class InputFile(BaseModel):
    model_config = ConfigDict(frozen=True)
    path: str
    size: int
    sha256: str | None = None  # None when fingerprinting by metadata only
    mtime_ns: int | None = None


class Counts(BaseModel):
    """Row accounting: read == kept + quarantined + duplicates + superseded, kept == train + valid.

    For events, train and valid count events (valid: the held-out ones) and superseded is 0."""

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


class SessionStats(BaseModel):
    """Events only: how the kept events became sessions, chunks and held-out events."""

    model_config = ConfigDict(frozen=True)
    users: int  # distinct users with kept events
    users_indexed: int  # with their own index (count >= min_count): those get histories and vectors
    users_held_out: int  # indexed users with held-out events (more than ``holdout`` events)
    sessions: int  # training sessions, before chunking
    chunks: int  # rows of sessions/ (a session longer than max_length is several chunks)
    chunked_sessions: int  # sessions longer than max_length
    longest_session: int  # events in the longest training session
    session_gap_seconds: int
    max_length: int
    holdout: int
    history_length: int
    order: str  # the stated tie-break


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
    rating_range: tuple[float, float] | None  # ratings only
    split: dict
    sessions: SessionStats | None = None  # events only
    code_version: str
    spark: dict
