"""Bulk scoring without a model: the filter grammar, partition sanitising, discovery, config checks."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertflow.bert_core.errors import ConfigError, InputError
from bertflow.bert_core.score.config import ScoreConfig
from bertflow.bert_core.score.filters import bind_filter, parse_filter
from bertflow.bert_core.score.lake import discover, output_path, output_relpath, partition_of, sanitize_partition_value

SCHEMA = pa.schema([("id", pa.int64()), ("lang", pa.string()), ("n", pa.int32()), ("x", pa.float64()),
                    ("ok", pa.bool_()), ("ts", pa.timestamp("us")), ("text", pa.string())])
BATCH = pa.record_batch({
    "id": [0, 1, 2, 3, 4],
    "lang": ["en", "fr", None, "en", "de"],
    "n": pa.array([1, 5, 3, None, 10], pa.int32()),
    "x": [0.5, 1.5, 2.5, 3.5, None],
    "ok": [True, False, True, None, True],
    "ts": pa.array([1_700_000_000_000_000, 1_600_000_000_000_000, None, 1_700_000_000_000_000, 1_500_000_000_000_000],
                   pa.timestamp("us")),
    "text": ["a", "b", "c", "d", "e"],
}, schema=SCHEMA)


def selected(text: str, partition: dict[str, str] | None = None) -> list[int]:
    bound = bind_filter(parse_filter(text), SCHEMA, partition or {}, "test.parquet")
    if not bound.partition_pass:
        return []
    return BATCH.filter(bound.mask(BATCH)).column("id").to_pylist()


@pytest.mark.parametrize("text, expected", [
    ("lang = 'en'", [0, 3]),
    ("lang != 'en'", [1, 4]),  # null lang is neither equal nor unequal (SQL semantics)
    ("n >= 3 AND lang = 'en'", []),
    ("n >= 3", [1, 2, 4]),
    ("n < 3.5", [0, 2]),  # a float literal is not truncated against an int column
    ("x <= 1.5", [0, 1]),
    ("lang IN ('en', 'de')", [0, 3, 4]),
    ("lang NOT IN ('en')", [1, 4]),
    ("lang IS NULL", [2]),
    ("n IS NOT NULL and ok = TRUE", [0, 2, 4]),
    ("ts >= '2023-01-01'", [0, 3]),
    ('"lang" = \'en\' AND "id" <> 0', [3]),
    ("lang = 'it''s'", []),
])
def test_valid_filters_select_the_right_rows(text, expected):
    assert selected(text) == expected


@pytest.mark.parametrize("text, message", [
    ("1=1; DROP TABLE x", "unexpected ';'"),
    ("1 = 1", "must start with a column name"),
    ("lang = 'en'; DROP TABLE x", "unexpected ';'"),
    ("lang = 'en' OR 1=1", "OR is not supported"),
    ("lang = 'en' -- comment", "unexpected '-'"),
    ("lang = en", "expected a literal"),
    ("lang = 'en", "unexpected"),
    ("lang IN ()", "expected a literal"),
    ("lang", "expected an operator"),
    ("lang = 'en' AND", "ends too early"),
    ("id = 1 UNION SELECT name FROM secrets", "expected AND"),
    ("id = 1 UNION SELECT * FROM secrets", "unexpected '\*'"),
])
def test_bad_filter_syntax_is_an_input_error(text, message):
    with pytest.raises(InputError, match=message) as err:
        parse_filter(text)
    assert text in str(err.value)  # the message quotes the user's filter


@pytest.mark.parametrize("text, message", [
    ("nope = 1", "unknown column 'nope'"),
    ("n = 'abc'", "does not fit column 'n'"),
    ("lang = 3", "does not fit column 'lang'"),
    ("ok = 1", "does not fit column 'ok'"),
    ("ts = 'yesterday'", "cannot be read as timestamp"),
    ('"id; DROP TABLE x" = 1', "unknown column"),
])
def test_filter_columns_and_literals_are_checked_against_the_schema(text, message):
    with pytest.raises(InputError, match=message):
        bind_filter(parse_filter(text), SCHEMA, {}, "test.parquet")


def test_filters_on_hive_partition_keys_decide_per_file():
    assert selected("dt = '2024-01-02'", {"dt": "2024-01-02"}) == [0, 1, 2, 3, 4]
    assert selected("dt = '2024-01-02'", {"dt": "2024-01-01"}) == []
    assert selected("dt >= '2024-01-01' AND n >= 5", {"dt": "2024-01-02"}) == [1, 4]
    assert selected("year IN (2023, 2024)", {"year": "2024"}) == [0, 1, 2, 3, 4]
    with pytest.raises(InputError, match="not a number"):
        selected("year = 2024", {"year": "abc"})


def test_blank_filter_means_no_filter():
    assert parse_filter(None) is None and parse_filter("   ") is None


@pytest.mark.parametrize("value", ["../../etc", "..", ".", "a/b", "/abs", "a\\b", "x\x00y", "c:\\w", "", "%2F", "é ok"])
def test_partition_values_become_one_safe_component(value):
    safe = sanitize_partition_value(value)
    assert "/" not in safe and "\\" not in safe and "\x00" not in safe
    assert safe not in ("", ".", "..")
    assert len(safe.encode()) <= 200


def test_sanitising_keeps_ordinary_values_and_round_trips_through_hive_decoding():
    from urllib.parse import unquote

    assert sanitize_partition_value("2024-01-01") == "2024-01-01"
    for value in ["a/b", "50%", "x=y", "../up"]:
        assert unquote(sanitize_partition_value(value)) == value


def test_encoded_partition_values_cannot_escape_the_output_dir(tmp_path):
    rel = PurePosixPath("dt=..%2F..%2Fevil/region=%2Fetc/part-0.parquet")
    assert partition_of(rel) == (("dt", "../../evil"), ("region", "/etc"))
    out = output_path(tmp_path / "out", rel)
    assert (tmp_path / "out").resolve() in out.parents
    assert len(output_relpath(rel).parts) == 3
    plain = PurePosixPath("dt=2024-01-01/part-0.parquet")
    assert output_relpath(plain) == plain


def test_discover_files_dirs_globs_and_skips_hidden(tmp_path):
    lake = tmp_path / "lake"
    for rel in ["dt=1/part-0.parquet", "dt=2/part-0.parquet", "dt=2/.part-1.parquet.tmp-abcdef12",
                "_delta_log/x.parquet", "dt=2/notes.txt"]:
        p = lake / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"text": ["a"]}), p)
    root, files = discover(str(lake))
    assert root == lake.resolve()
    assert [f.rel.as_posix() for f in files] == ["dt=1/part-0.parquet", "dt=2/part-0.parquet"]
    assert files[1].partition == (("dt", "2"),)
    _, globbed = discover(str(lake / "dt=*" / "*.parquet"))
    assert [f.rel.as_posix() for f in globbed] == ["dt=1/part-0.parquet", "dt=2/part-0.parquet"]
    root, single = discover(str(lake / "dt=1" / "part-0.parquet"))
    assert [f.rel.as_posix() for f in single] == ["part-0.parquet"]
    _, excluded = discover(str(lake), exclude=lake / "dt=2")
    assert [f.rel.as_posix() for f in excluded] == ["dt=1/part-0.parquet"]
    with pytest.raises(InputError, match="does not exist"):
        discover(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no Parquet files"):
        discover(str(tmp_path / "empty"))


@pytest.mark.parametrize("kwargs, message", [
    ({"output_prefix": "a-b"}, "output_prefix"),
    ({"sort_window": 0}, "sort_window"),
    ({"device": "gpu"}, "device"),
    ({"text_pair_column": "text"}, "text_pair_column"),
    ({"key_columns": ("a", "a")}, "twice"),
])
def test_config_rejects_bad_values(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ScoreConfig(**kwargs)


def test_config_loads_from_yaml_style_dict():
    from bertflow.bert_core.configtools import from_dict

    cfg = from_dict(ScoreConfig, {"key_columns": ["id"], "sort_window": 8, "non_string_text": "cast"})
    assert cfg.key_columns == ("id",) and cfg.sort_window == 8
    with pytest.raises(ConfigError, match="non_string_text"):
        from_dict(ScoreConfig, {"non_string_text": "ignore"})


def test_config_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, bertflow.bert_core.score.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
