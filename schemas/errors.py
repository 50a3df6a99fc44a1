"""Errors a user can act on. The CLI prints their message alone (no traceback)."""


class LatentstoreError(Exception):
    """Base class: the message names the file, field or row at fault."""


class ConfigError(LatentstoreError):
    """The TOML config is missing, unparsable or invalid."""


class InputError(LatentstoreError):
    """The raw input is missing, unreadable, empty or lacks a mapped column."""


class StoreError(LatentstoreError):
    """The store directory is missing, foreign or inconsistent."""


class StoreLockedError(StoreError):
    """Another process holds the store's writer lock."""


class TrainingDiverged(LatentstoreError):
    """The training loss became NaN or infinite: the learning rate is too high for the data."""


class GateRefused(LatentstoreError):
    """The quality gate refused a version: its validation metric regressed (``--force`` overrides)."""


class StageFailed(LatentstoreError):
    """A pipeline stage failed: the message names the stage, the model or config, and the cause."""
