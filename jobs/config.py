"""The pipeline config: one TOML file, one section per job.

    name = "movielens"          # dataset name, and model name when one model is trained
    [index]  ...                # jobs.index.config.IndexConfig
    [index.input] ...
    [train]  ...                # jobs.train.config: one model (MFConfig, SkipgramConfig or GRUConfig) ...
    [[train]] ...               # ... or several over the same snapshot, each published as its own model
    [publish] ...               # jobs.publish.config.PublishConfig
"""

from __future__ import annotations

from pathlib import Path

from pydantic import field_validator, model_validator

from jobs.common.config import StrictModel, load_toml, validate
from jobs.index.config import IndexConfig
from jobs.publish.config import PublishConfig
from jobs.train.config import RATINGS_MODELS, SEQUENCE_MODELS, MFConfig, TrainConfig
from schemas.errors import ConfigError
from schemas.store import check_name


class PipelineConfig(StrictModel):
    """A whole pipeline: index once -> train each model -> publish each model."""

    name: str
    """Default dataset name (snapshots/<name>/) and model name (the SQL schema of its tables)."""
    index: IndexConfig
    train: tuple[TrainConfig, ...] = (MFConfig(name=None),)
    """The models to train on the snapshot; a single [train] table or an array of [[train]] tables."""
    publish: PublishConfig = PublishConfig()

    @model_validator(mode="before")
    @classmethod
    def _defaults_from_name(cls, data: object) -> object:
        if not isinstance(data, dict) or not isinstance(data.get("name"), str):
            return data
        data = dict(data)
        data["index"] = {"dataset": data["name"], **(data.get("index") or {})}
        trains = data.get("train", [{}])
        trains = [trains] if isinstance(trains, dict) else list(trains)
        several = len(trains) > 1
        named = []
        for train in trains:
            if isinstance(train, dict) and train.get("name") is None:
                family = train.get("model", "mf")
                train = {**train, "name": f"{data['name']}_{family}" if several else data["name"]}
            named.append(train)
        data["train"] = named
        return data

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return check_name(value, "name")

    @model_validator(mode="after")
    def _models_fit_the_index(self) -> "PipelineConfig":
        if not self.train:
            raise ValueError("train: give at least one model")
        names = [train.name for train in self.train]
        if len(set(names)) != len(names):
            raise ValueError(f"train: model names must differ (got {', '.join(names)}); set train.name")
        fits = RATINGS_MODELS if self.index.kind == "ratings" else SEQUENCE_MODELS
        for train in self.train:
            if train.model not in fits:
                raise ValueError(f"train.model = {train.model!r} does not train on {self.index.kind}; "
                                 f"use {' or '.join(sorted(fits))}")
        unknown = sorted(set(self.publish.gate.floors) - set(names))
        if unknown:  # a typo would silently leave the model without a floor
            raise ValueError(f"publish.gate.floors names no model of this config: {', '.join(unknown)}; "
                             f"its models: {', '.join(names)}")
        return self

    def with_lock_timeout(self, seconds: float | None) -> "PipelineConfig":
        """This config with the writer lock's wait replaced (``--lock-timeout``); None keeps it."""
        if seconds is None:
            return self
        return self.model_copy(update={"publish": self.publish.model_copy(update={"lock_timeout_seconds": seconds})})

    def with_fold_in(self, mode: str | None) -> "PipelineConfig":
        """This config with every model warm-started from its current version (``--fold-in``, the hourly
        fold-in deployment): ``mode`` "new" or "all"; None keeps it."""
        if mode is None:
            return self
        return self.model_copy(update={"train": [t.model_copy(update={"warm_start": "current", "fold_in": mode})
                                                 for t in self.train]})

    def model_names(self) -> list[str]:
        return [train.name for train in self.train]

    def model(self, name: str | None = None) -> TrainConfig:
        """The train config of model ``name``; without a name, the only model."""
        if name is None:
            if len(self.train) > 1:
                raise ConfigError(f"config {self.name!r} trains several models ({', '.join(self.model_names())}): "
                                  "name one")
            return self.train[0]
        for train in self.train:
            if train.name == name:
                return train
        raise ConfigError(f"config {self.name!r} has no model {name!r}; its models: {', '.join(self.model_names())}")


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
