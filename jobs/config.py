"""The pipeline config: one TOML file, one section per job.

    name = "movielens"          # dataset and model name (SQL identifier)
    [index]  ...                # jobs.index.config.IndexConfig
    [index.input] ...
    [train]  ...                # jobs.train.config.TrainConfig
    [publish] ...               # jobs.publish.config.PublishConfig
"""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator, model_validator

from jobs.common.config import StrictModel, load_toml, validate
from jobs.index.config import IndexConfig
from jobs.publish.config import PublishConfig
from jobs.train.config import TrainConfig
from schemas.store import check_name


class PipelineConfig(StrictModel):
    """A whole pipeline: index -> train -> publish."""

    name: str
    """Default dataset name (snapshots/<name>/) and model name (the SQL schema of its tables)."""
    index: IndexConfig
    train: TrainConfig = TrainConfig()
    publish: PublishConfig

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_name(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            data = dict(data)
            data["index"] = {"dataset": data["name"], **(data.get("index") or {})}
            data["publish"] = {"model": data["name"], **(data.get("publish") or {})}
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "name")


def load_config(path: str | Path, input_path: str | None = None) -> PipelineConfig:
    """Load and validate a pipeline config; ``input_path`` replaces ``index.input``'s source."""
    path = Path(path)
    data = load_toml(path)
    if input_path is not None:
        index = dict(data.get("index") or {})
        source = dict(index.get("input") or {})
        source.pop("synthetic", None)
        source["path"] = str(Path(input_path).resolve())
        index["input"] = source
        data = {**data, "index": index}
    return validate(PipelineConfig, data, str(path), base_dir=path.resolve().parent)
