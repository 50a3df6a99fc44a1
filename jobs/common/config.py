"""Config base class and the TOML loader with errors a person can act on."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo

from schemas.errors import ConfigError


class StrictModel(BaseModel):
    """Frozen, unknown fields rejected: a typo in a config is an error, not a silent default."""

    model_config = ConfigDict(frozen=True, extra="forbid")


M = TypeVar("M", bound=BaseModel)


def resolve_path(value: str | None, info: ValidationInfo) -> str | None:
    """A relative local path resolved against the config file's folder (``base_dir`` in the validation
    context); absolute paths unchanged. For use in field validators.

    URLs are refused: the driver probes, fingerprints and stores through the local file system, so an
    object store is read through a mount (a path), never ``s3a://`` directly."""
    if value and "://" in value:
        raise ValueError(f"{value!r}: URLs are not supported; mount the bucket or share and give its local path")
    base = (info.context or {}).get("base_dir")
    if value and base and not Path(value).is_absolute():
        return str((Path(base) / value).resolve())
    return value


def _as_written(loc: tuple, data: object) -> list[str]:
    """The error's location as the user wrote it: no list position where they wrote a single
    table (``[train]`` that the config wraps in a list), no union tag (``mf``) that pydantic adds."""
    parts, current = [], data
    for position, part in enumerate(loc):
        last = position == len(loc) - 1
        if isinstance(part, int) and isinstance(current, dict):
            continue  # a single table that was wrapped into a list
        if isinstance(part, str) and isinstance(current, dict) and part not in current and not last:
            continue  # a tagged-union tag: the same table continues
        parts.append(str(part))
        if isinstance(current, dict):
            current = current.get(part)
        elif isinstance(current, list) and isinstance(part, int) and part < len(current):
            current = current[part]
        else:
            current = None
    return parts


def describe_validation_error(err: ValidationError, source: str, data: object = None) -> str:
    """One line per problem: ``file: section.field: message``."""
    lines = []
    for problem in err.errors():
        where = ".".join(_as_written(problem["loc"], data)) or "(top level)"
        msg = problem["msg"]
        if problem["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {where}: {msg}")
    return "\n".join(lines)


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None


def validate(model: type[M], data: dict, source: str, base_dir: Path | None = None) -> M:
    """Validate ``data`` into ``model``; relative paths resolve against ``base_dir``."""
    try:
        return model.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, source, data)) from None
