"""The index job end to end on small files: quarantine, dedup, formats, snapshots."""

from __future__ import annotations

import hashlib
import json
import os

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.index.job import plan, run
from schemas.errors import InputError
from schemas.ratings import Reason
from schemas.snapshot import interactions_dir, vocab_dir
from schemas.store import StoreLayout
from tests.helpers import pipeline_config, read_parquet_dir, write_csv

ML_COLUMNS = {"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"}

# One row per rule, plus duplicates and a superseded rating, in ml-latest layout.
MESSY_ROWS = [
    ["1", "10", "4.0", "100"],
    ["1", "10", "4.0", "100"],  # exact duplicate
    ["1", "10", "3.0", "200"],  # later rating of (1, 10): supersedes the 4.0
    ["2", "10", "5.0", "50"],
    ["2", "10", "4.0", "50"],  # same pair, same time, lower rating: superseded by the 5.0
    ["2", "11", "abc", "5"],  # non_numeric_rating
    ["3", "", "4", "5"],  # missing_item
    ["", "12", "4", "5"],  # missing_user
    ["4", "12", "9", "5"],  # rating_out_of_range
    ["5", "12", "4", "notatime"],  # unparsable_timestamp
    ["5", "13", "4", "1e300"],  # unparsable_timestamp: beyond year 10000
    ["6", "13", "4"],  # malformed_line (too few fields)
    ["7", "13", "4", "5", "extra"],  # malformed_line (too many fields)
    ["8", "13", "", "5"],  # missing_rating
    ["8", "14", "2", ""],  # missing_timestamp
    ["9", "14", "3.5", "2020-01-02T03:04:05Z"],  # ISO timestamps are fine
]


def _index(tmp_path, path, **kw):
    cfg = pipeline_config(tmp_path, input_path=str(path), columns=kw.pop("columns", ML_COLUMNS), **kw)
    return run(cfg.index, StoreLayout(tmp_path / "store"))


def test_each_quarantine_reason_and_the_count_identity(spark, tmp_path):
    path = write_csv(tmp_path / "ratings.csv", ["userId", "movieId", "rating", "timestamp"], MESSY_ROWS)
    result = _index(tmp_path, path)
    counts = result.manifest.counts
    assert counts.read == 16
    assert (counts.kept, counts.duplicates, counts.superseded) == (3, 1, 2)
    assert counts.quarantine_reasons == {
        Reason.MALFORMED_LINE: 2, Reason.MISSING_ITEM: 1, Reason.MISSING_RATING: 1, Reason.MISSING_TIMESTAMP: 1,
        Reason.MISSING_USER: 1, Reason.NON_NUMERIC_RATING: 1, Reason.RATING_OUT_OF_RANGE: 1,
        Reason.UNPARSABLE_TIMESTAMP: 2,
    }
    assert counts.read == counts.kept + counts.quarantined + counts.duplicates + counts.superseded
    assert counts.balanced()

    quarantine = read_parquet_dir(result.path / "quarantine")
    assert len(quarantine) == counts.quarantined
    malformed = set(quarantine.loc[quarantine.reason == "malformed_line", "raw_record"])
    assert malformed == {"6,13,4", "7,13,4,5,extra"}
    assert set(quarantine.source_file.str.endswith("ratings.csv")) == {True}

    kept = read_parquet_dir(result.path / "interactions").sort_values(["user", "item"])
    users = read_parquet_dir(result.path / vocab_dir("user")).set_index("key")["index"].to_dict()
    # the latest rating of (1, 10) wins, with its timestamp
    row = kept[kept.user == users["1"]]
    assert row.rating.tolist() == [3.0] and row.timestamp.tolist() == [200]
    assert kept[kept.user == users["2"]].rating.tolist() == [5.0]  # the higher rating at a tied time
    assert kept[kept.user == users["9"]].timestamp.tolist() == [1577934245]


def test_rerun_reuses_the_snapshot_and_new_data_appends_keys(spark, tmp_path):
    path = write_csv(tmp_path / "in" / "ratings.csv", ["userId", "movieId", "rating", "timestamp"],
                     [["a", "x", 4, 1], ["b", "x", 3, 2], ["b", "y", 5, 3]])
    first = _index(tmp_path, path)
    again = _index(tmp_path, path)
    assert again.reused and again.snapshot_id == first.snapshot_id
    assert first.manifest.parent is None

    write_csv(path, ["userId", "movieId", "rating", "timestamp"],
              [["c", "z", 4, 1], ["c", "z2", 4, 1], ["d", "z", 2, 2], ["b", "x", 3, 2]])
    second = _index(tmp_path, path)
    assert not second.reused and second.manifest.parent == first.snapshot_id
    before = read_parquet_dir(first.path / vocab_dir("item")).set_index("key")["index"].to_dict()
    after = read_parquet_dir(second.path / vocab_dir("item")).set_index("key")["index"].to_dict()
    assert before == {"x": 1, "y": 2}
    # existing keys keep their index (y is absent now, still kept); z (count 2) then z2 appended
    assert after == {"x": 1, "y": 2, "z": 3, "z2": 4}
    assert second.manifest.vocab["item"].new_keys == 2


@pytest.mark.parametrize(
    "name, fmt, text",
    [
        ("u.data", "movielens-udata", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n"),
        ("ratings.dat", "movielens-dat", "1::1193::5::978300760\n1::661::3::978302109\n"),
    ],
)
def test_original_grouplens_formats(spark, tmp_path, name, fmt, text):
    path = tmp_path / name
    path.write_text(text)
    result = _index(tmp_path, path, columns={})
    assert result.manifest.input_format == fmt
    assert result.manifest.counts.kept == 2 and result.manifest.counts.quarantined == 0


def test_parquet_and_json_lines(spark, tmp_path):
    table = pa.table({"u": [1, 2, 2], "i": ["p", "q", "p"], "r": [4.5, 1.0, 7.0], "t": [10, 20, 30]})
    pq.write_table(table, tmp_path / "r.parquet")
    mapping = {"user": "u", "item": "i", "rating": "r", "timestamp": "t"}
    parquet = _index(tmp_path, tmp_path / "r.parquet", columns=mapping)
    assert parquet.manifest.counts.kept == 2
    assert parquet.manifest.counts.quarantine_reasons == {"rating_out_of_range": 1}

    lines = [json.dumps({"u": 1, "i": "p", "r": 4, "t": 1}), "{not json", json.dumps({"u": 3, "i": "q", "r": 2})]
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "r.jsonl").write_text("\n".join(lines) + "\n")
    jsonl = _index(tmp_path, tmp_path / "j" / "r.jsonl", columns=mapping)
    assert jsonl.manifest.counts.kept == 1
    assert jsonl.manifest.counts.quarantine_reasons == {"malformed_line": 1, "missing_timestamp": 1}


def test_time_split_holds_out_the_latest_ratings(spark, tmp_path):
    rows = [[u, i, 3, u * 100 + i] for u in range(1, 5) for i in range(1, 6)]
    path = write_csv(tmp_path / "r.csv", ["userId", "movieId", "rating", "timestamp"], rows)
    result = _index(tmp_path, path, index={"split": {"kind": "time", "fraction": 0.25}})
    cutoff = result.manifest.split["cutoff_unix_seconds"]
    valid = read_parquet_dir(result.path / interactions_dir("valid"))
    train = read_parquet_dir(result.path / interactions_dir("train"))
    assert len(valid) == 5 and valid.timestamp.min() > cutoff >= train.timestamp.max()


def test_all_rows_invalid_is_a_clear_error_and_leaves_no_snapshot(spark, tmp_path):
    path = write_csv(tmp_path / "r.csv", ["userId", "movieId", "rating", "timestamp"], [["1", "2", "x", "3"]])
    with pytest.raises(InputError, match=r"no valid rows in .*r\.csv: all 1 rows were quarantined \(non_numeric_rating: 1\)"):
        _index(tmp_path, path)
    assert not (tmp_path / "store" / "snapshots").exists()
    assert list((tmp_path / "store" / "tmp").iterdir()) == []  # staging cleaned up


@pytest.mark.slow
def test_runs_under_spark_submit(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    write_csv(tmp_path / "r.csv", ["userId", "movieId", "rating", "timestamp"], [["a", "x", 4, 1], ["b", "x", 2, 2]])
    config = tmp_path / "c.toml"
    config.write_text('name = "submitted"\n[index.input]\npath = "r.csv"\n'
                      'columns = { user = "userId", item = "movieId" }\n')
    bin_dir = Path(sys.executable).parent
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    result = subprocess.run(
        [str(bin_dir / "spark-submit"), "--master", "local[1]", "--driver-memory", "1g",
         str(root / "jobs" / "index" / "__main__.py"), str(config), "--store", str(tmp_path / "store")],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    summary, _ = json.JSONDecoder().raw_decode(result.stdout[result.stdout.index("{"):])
    assert summary["counts"]["kept"] == 2 and not summary["reused"]
    manifest = json.loads((Path(summary["path"]) / "manifest.json").read_text())
    assert manifest["spark"]["master"] == "local[1]"  # spark-submit's master, not the config's


def _kept(result):
    return pd.concat([read_parquet_dir(result.path / interactions_dir(part)) for part in ("train", "valid")])


def _source(path, **settings) -> dict:
    return {"input": {"path": str(path), "columns": ML_COLUMNS, **settings}}


def test_tsv_a_custom_delimiter_and_millisecond_timestamps(spark, tmp_path):
    header = ["userId", "movieId", "rating", "timestamp"]
    rows = [["1", "a,b", "4.0", "1700000000999"], ["2", "c", "3.5", "1700000100001"]]
    tsv = write_csv(tmp_path / "tsv" / "r.tsv", header, rows, delimiter="\t")
    by_tab = run(pipeline_config(tmp_path, index={**_source(tsv, timestamp_unit="ms")}).index,
                 StoreLayout(tmp_path / "tab"))
    assert by_tab.manifest.input_format == "tsv" and by_tab.manifest.counts.kept == 2
    assert sorted(_kept(by_tab).timestamp) == [1_700_000_000, 1_700_000_100]  # milliseconds floored to seconds
    items = pq.read_table(by_tab.path / vocab_dir("item")).column("key").to_pylist()
    assert "a,b" in items  # a comma is data in a tab-separated file

    in_seconds = [[user, item, rating, ms[:-3]] for user, item, rating, ms in rows]
    semicolons = write_csv(tmp_path / "semi" / "r.csv", header, [*in_seconds, ["3", "d", "2"]], delimiter=";")
    by_semicolon = run(pipeline_config(tmp_path, index={**_source(semicolons, delimiter=";")}).index,
                       StoreLayout(tmp_path / "semi-store"))
    counts = by_semicolon.manifest.counts
    assert counts.kept == 2 and counts.quarantine_reasons == {"malformed_line": 1}
    assert sorted(_kept(by_semicolon).timestamp) == [1_700_000_000, 1_700_000_100]  # the default unit: seconds


def test_a_metadata_fingerprint_follows_size_and_mtime_and_a_content_one_follows_the_bytes(tmp_path):
    path = write_csv(tmp_path / "in" / "r.csv", ["userId", "movieId", "rating", "timestamp"], [["1", "a", "4", "5"]])

    def planned(mode: str):
        return plan(pipeline_config(tmp_path, index=_source(path, fingerprint=mode)).index)

    content, metadata = planned("content"), planned("metadata")
    stat = path.stat()
    assert content.files[0].sha256 == hashlib.sha256(path.read_bytes()).hexdigest() and content.files[0].mtime_ns is None
    assert metadata.files[0].sha256 is None and metadata.files[0].mtime_ns == stat.st_mtime_ns
    assert content.content_key != metadata.content_key

    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: the same bytes
    assert planned("content").content_key == content.content_key
    assert planned("metadata").content_key != metadata.content_key

    path.write_bytes(path.read_bytes().replace(b"a,4", b"b,3"))  # other bytes of the same size, the old mtime back
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert planned("content").content_key != content.content_key
    assert planned("metadata").content_key == metadata.content_key  # the trade-off docs/config.md states
