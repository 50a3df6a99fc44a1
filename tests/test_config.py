"""Config: strict, frozen, round-trips, errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.common.config import validate
from jobs.config import PipelineConfig, load_config
from schemas.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.toml")))
def test_shipped_configs_validate_and_round_trip(name):
    cfg = load_config(ROOT / "configs" / name)
    dumped = cfg.model_dump(mode="json")
    assert validate(PipelineConfig, dumped, "dump") == cfg


def test_name_fills_dataset_and_model(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('name = "films"\n[index.input]\npath = "data.csv"\n')
    cfg = load_config(path)
    assert cfg.index.dataset == "films" and cfg.model_names() == ["films"]
    # relative input paths resolve against the config file's folder
    assert cfg.index.input.path == str(tmp_path / "data.csv")


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('name = "x"\n[index.input]\npath = "a.csv"\n[train]\ndimension = 3\n')
    with pytest.raises(ConfigError, match=r"c.toml: train.dimension: unknown key"):
        load_config(path)


def test_wrong_type_is_named(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('name = "x"\n[index.input]\npath = "a.csv"\n[train]\nepochs = "many"\n')
    with pytest.raises(ConfigError, match=r"train.epochs: Input should be a valid integer"):
        load_config(path)


def test_bad_names_and_sources_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="name: Value error, name 'Bad-Name' must match"):
        validate(PipelineConfig, {"name": "Bad-Name", "index": {"input": {"path": "a"}}}, "t")
    with pytest.raises(ConfigError, match="set exactly one of input.path or input.synthetic"):
        validate(PipelineConfig, {"name": "ok", "index": {"input": {}}}, "t")
    with pytest.raises(ConfigError, match="reserved"):
        validate(PipelineConfig, {"name": "versions", "index": {"input": {"path": "a"}}}, "t")


def test_invalid_toml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(ConfigError, match="bad.toml: not valid TOML"):
        load_config(bad)


def test_config_is_frozen():
    cfg = load_config(ROOT / "configs" / "default.toml")
    with pytest.raises(Exception):
        cfg.train[0].dim = 3


def test_input_override_replaces_a_synthetic_source(tmp_path):
    cfg = load_config(ROOT / "configs" / "default.toml", input_path=str(tmp_path / "mine.parquet"))
    assert cfg.index.input.synthetic is None
    assert cfg.index.input.path == str(tmp_path / "mine.parquet")


def test_a_gate_floor_for_a_model_the_config_does_not_train_is_an_error(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('name = "films"\n[index.input]\npath = "r.csv"\n[publish.gate]\nfloors = { typo_model = 0.95 }\n')
    with pytest.raises(ConfigError, match=r"publish\.gate\.floors names no model of this config: typo_model; "
                                          r"its models: films"):
        load_config(path)
    path.write_text('name = "films"\n[index.input]\npath = "r.csv"\n[publish.gate]\nfloors = { films = 0.95 }\n')
    assert load_config(path).publish.gate.floors == {"films": 0.95}


def test_an_object_store_url_is_refused_with_what_to_do(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text('name = "films"\n[index.input]\npath = "s3a://bucket/ratings.csv"\n')
    with pytest.raises(ConfigError, match=r"index\.input\.path: .*'s3a://bucket/ratings\.csv': URLs are not supported; "
                                          r"mount the bucket"):
        load_config(path)


def test_an_events_config_still_refuses_ratings_only_settings(tmp_path):
    path = tmp_path / "e.toml"
    base = ('name = "clicks"\n[index]\nkind = "events"\n{extra}[index.input]\npath = "e.csv"\n'
            'columns = {{ user = "u", timestamp = "t", type = "e"{columns} }}\n'
            '[index.events]\ntemplates = {{ "*" = "{{type}}" }}\n')
    with pytest.raises(ConfigError, match=r"input\.columns\.item is not used by kind = 'events'"):
        load_config(path.write_text(base.format(extra="", columns=', item = "movie"')) and path)
    with pytest.raises(ConfigError, match=r"index\.split is only for kind = 'ratings'"):
        load_config(path.write_text(base.format(extra='split = { kind = "time" }\n', columns="")) and path)
