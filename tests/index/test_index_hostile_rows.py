"""Hostile rows (issue 12): each input record counts once in ``read`` and ends kept or quarantined
with its own reason; gzip and byte-order-mark inputs just work. Real local Spark on real files."""

from __future__ import annotations

import gzip

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.index.job import run
from jobs.index.probe import probe
from schemas.errors import ConfigError, InputError
from schemas.snapshot import vocab_dir
from schemas.store import StoreLayout
from tests.helpers import events_config, pipeline_config, read_parquet_dir

# Reasons are spelled as text (schemas.ratings.Reason and schemas.events.Reason are StrEnums).
ML_COLUMNS = {"user": "userId", "item": "movieId", "rating": "rating", "timestamp": "timestamp"}
ML_HEADER = b"userId,movieId,rating,timestamp\n"


def _write(path, data: bytes):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _index(tmp_path, path, columns=ML_COLUMNS, **index):
    cfg = pipeline_config(tmp_path, input_path=str(path), columns=columns, index=index or None)
    return run(cfg.index, StoreLayout(tmp_path / "store"))


def _assert_accounted(counts, records: int):
    """``read`` is the number of records in the file, and every one has exactly one outcome."""
    assert counts.read == records
    assert counts.read == counts.kept + counts.quarantined + counts.duplicates + counts.superseded
    assert counts.balanced()


def _keys(result, column: str) -> set[str]:
    return set(read_parquet_dir(result.path / vocab_dir(column)).key)


# -- field counts --------------------------------------------------------------------------------

def test_rows_with_one_extra_field_count_once_each(spark, tmp_path):
    extra = b"".join(b"%d,%d,4,%d,EXTRA\n" % (u, u % 7, 100 + u) for u in range(50))
    path = _write(tmp_path / "r.csv", ML_HEADER + extra + b"a,x,4,1\nb,x,3,2\nb,y,5,3\n")
    counts = _index(tmp_path, path).manifest.counts
    _assert_accounted(counts, 53)
    assert (counts.kept, counts.quarantine_reasons) == (3, {"malformed_line": 50})


def test_a_wrong_field_count_is_caught_when_a_column_is_not_mapped(spark, tmp_path):
    """Line by line, Spark checks the field count only when a query reads every column: with the
    tag column unmapped, a row with a field too many or too few passed as valid."""
    rows = b"1,10,4,100,t\n2,10,4,100,t,EXTRA\n3,10,4,100\n"
    path = _write(tmp_path / "r.csv", b"userId,movieId,rating,timestamp,tag\n" + rows)
    result = _index(tmp_path, path)
    counts = result.manifest.counts
    _assert_accounted(counts, 3)
    assert (counts.kept, counts.quarantine_reasons) == (1, {"malformed_line": 2})
    quarantine = read_parquet_dir(result.path / "quarantine")
    assert set(quarantine.raw_record) == {"2,10,4,100,t,EXTRA", "3,10,4,100"}
    assert _keys(result, "user") == {"1"}


# -- quoted fields spanning lines ----------------------------------------------------------------

@pytest.mark.parametrize("newline", [b"\n", b"\r\n"])
def test_a_quoted_field_spanning_lines_is_one_quarantined_record(spark, tmp_path, newline):
    lines = [b"userId,movieId,rating,timestamp", b"1,10,4,100", b'"1', b'2",3000,4,881250949', b"3,10,4,100", b""]
    path = _write(tmp_path / "r.csv", newline.join(lines))
    result = _index(tmp_path, path)
    counts = result.manifest.counts
    _assert_accounted(counts, 3)  # the quoted record counts once
    assert (counts.kept, counts.quarantine_reasons) == (2, {"embedded_newline": 1})
    quarantine = read_parquet_dir(result.path / "quarantine")
    assert quarantine.user.tolist() == ["1\n2"] and quarantine.item.tolist() == ["3000"]
    # nothing of it is kept: neither the fragment's user 2" nor its item
    assert _keys(result, "user") == {"1", "3"} and _keys(result, "item") == {"10"}


# -- bytes that are not UTF-8 --------------------------------------------------------------------

def test_bytes_that_are_not_utf8_are_quarantined(spark, tmp_path):
    rows = b"caf\xe9,10,4,100\n1,caf\xc3,4,100\n2,10,4,100\n" + "3,x\ufffd,4,100\n".encode()
    result = _index(tmp_path, _write(tmp_path / "r.csv", ML_HEADER + rows))
    counts = result.manifest.counts
    _assert_accounted(counts, 4)
    # a literal U+FFFD cannot be told from a replaced byte: it is quarantined too
    assert (counts.kept, counts.quarantine_reasons) == (1, {"invalid_utf8": 3})
    assert _keys(result, "user") == {"2"} and _keys(result, "item") == {"10"}


def test_parquet_strings_that_are_not_utf8_are_quarantined(spark, tmp_path):
    table = pa.table({"u": pa.array([b"ok", b"caf\xe9"], pa.binary()), "i": ["p", "q"], "r": [4.0, 3.0],
                      "t": [10, 20]})
    pq.write_table(table, tmp_path / "r.parquet")
    mapping = {"user": "u", "item": "i", "rating": "r", "timestamp": "t"}
    result = _index(tmp_path, tmp_path / "r.parquet", columns=mapping)
    _assert_accounted(result.manifest.counts, 2)
    assert result.manifest.counts.quarantine_reasons == {"invalid_utf8": 1}
    assert _keys(result, "user") == {"ok"}


# -- over-long keys ------------------------------------------------------------------------------

def test_keys_longer_than_the_limit_are_quarantined(spark, tmp_path):
    huge = b"u" * 10_000_000  # a 10 MB key on one line
    rows = [huge + b",10,4,100", b"1," + b"i" * 257 + b",4,100", b"2," + b"i" * 256 + b",4,100", b"3,10,4,100"]
    path = _write(tmp_path / "r.csv", ML_HEADER + b"\n".join(rows) + b"\n")
    result = _index(tmp_path, path)
    counts = result.manifest.counts
    _assert_accounted(counts, 4)
    assert (counts.kept, counts.quarantine_reasons) == (2, {"key_too_long": 2})
    assert _keys(result, "user") == {"2", "3"}
    assert max(map(len, _keys(result, "item"))) == 256  # the default limit, inclusive


def test_the_key_length_limit_is_configured_and_checked(spark, tmp_path):
    path = _write(tmp_path / "r.csv", ML_HEADER + b"abcdef,10,4,100\nabc,10,4,100\n")
    counts = _index(tmp_path, path, max_key_length=5).manifest.counts
    assert (counts.kept, counts.quarantine_reasons) == (1, {"key_too_long": 1})
    for bad in (0, -1, "many"):
        with pytest.raises(ConfigError, match="index.max_key_length: Input should be"):
            pipeline_config(tmp_path, input_path=str(path), columns=ML_COLUMNS, index={"max_key_length": bad})


# -- negative timestamps -------------------------------------------------------------------------

def test_negative_timestamps_are_quarantined(spark, tmp_path):
    rows = b"1,10,4,-5\n2,10,4,1969-12-31T23:59:59Z\n3,10,4,0\n4,10,4,-0.5\n"
    result = _index(tmp_path, _write(tmp_path / "r.csv", ML_HEADER + rows))
    counts = result.manifest.counts
    _assert_accounted(counts, 4)
    assert (counts.kept, counts.quarantine_reasons) == (1, {"negative_timestamp": 3})
    assert _keys(result, "user") == {"3"}  # the epoch itself is a valid time


# -- gzip and a byte order mark ------------------------------------------------------------------

@pytest.mark.parametrize("name, bom, compress", [
    ("ratings.csv.gz", False, True),
    ("ratings.csv", True, False),
    ("ratings.csv.gz", True, True),
])
def test_gzip_and_byte_order_mark_inputs_just_work(spark, tmp_path, name, bom, compress):
    data = (b"\xef\xbb\xbf" if bom else b"") + ML_HEADER + b"1,10,4,100\n2,10,3,200\n2,11,5,300\n"
    path = _write(tmp_path / name, gzip.compress(data) if compress else data)
    cfg = pipeline_config(tmp_path, input_path=str(path), columns=ML_COLUMNS)
    probed = probe(cfg.index)
    assert (probed.format, probed.columns) == ("csv", ["userId", "movieId", "rating", "timestamp"])
    result = run(cfg.index, StoreLayout(tmp_path / "store"))
    _assert_accounted(result.manifest.counts, 3)
    assert result.manifest.counts.kept == 3
    assert _keys(result, "user") == {"1", "2"}  # no byte order mark in the first key


def test_a_gz_file_that_is_not_gzip_is_a_clear_error(tmp_path):
    path = _write(tmp_path / "ratings.csv.gz", ML_HEADER + b"1,10,4,100\n")
    cfg = pipeline_config(tmp_path, input_path=str(path), columns=ML_COLUMNS)
    with pytest.raises(InputError, match=r"cannot read .*ratings\.csv\.gz as csv: Not a gzipped file"):
        probe(cfg.index)


# -- the same rules for an event log -------------------------------------------------------------

def test_event_rows_are_quarantined_with_the_same_rules(spark, tmp_path):
    header = b"user_id,ts,event,page_type,portal,item,note\n"  # note: a column no template uses
    rows = [
        b"a,1704067200,page_view,home,de,,n",
        b"a,1704067260,purchase,,,sku1,n",
        b'b,1704067200,page_view,"ho\nme",de,,n',  # embedded_newline (page_type), one record
        b"caf\xe9,1704067200,purchase,,,sku1,n",  # invalid_utf8 (user)
        b"c,-5,purchase,,,sku1,n",  # negative_timestamp
        b"u" * 21 + b",1704067200,purchase,,,sku1,n",  # key_too_long (user)
        b"d,1704067200,purchase,,," + b"x" * 18 + b",n",  # key_too_long (token buy-xxx: 22 characters)
        b"d,1704067200,purchase,,,sku1,n,EXTRA",  # malformed_line: a field too many
        b"d,1704067200,purchase,,,sku1",  # malformed_line: a field too few
    ]
    path = _write(tmp_path / "events.csv", header + b"\n".join(rows) + b"\n")
    templates = {"page_view": "{type}:{page_type}:{portal}", "purchase": "buy-{item}"}
    cfg = events_config(tmp_path, str(path), templates=templates, events={"buckets": {}})
    index = cfg.index.model_copy(update={"max_key_length": 20})
    result = run(index, StoreLayout(tmp_path / "store"))
    counts = result.manifest.counts
    _assert_accounted(counts, 9)
    assert counts.kept == 2
    assert counts.quarantine_reasons == {
        "malformed_line": 2, "embedded_newline": 1, "invalid_utf8": 1,
        "negative_timestamp": 1, "key_too_long": 2,
    }
    quarantine = read_parquet_dir(result.path / "quarantine")
    details = {(r.reason, r.detail) for r in quarantine.itertuples() if r.reason != "malformed_line"}
    assert details == {("embedded_newline", "page_type"), ("invalid_utf8", "user"), ("negative_timestamp", "-5"),
                       ("key_too_long", "user"), ("key_too_long", "token")}
    assert _keys(result, "user") == {"a"} and _keys(result, "token") == {"page_view:home:de", "buy-sku1"}
