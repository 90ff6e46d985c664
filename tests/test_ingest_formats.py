"""Ingestion of every input format (plain, .gz, .zst), hive-partitioned Parquet, txt modes, encodings."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from bertflow.bert_core.ingest.config import IngestConfig
from bertflow.bert_core.ingest.schema import CORPUS_SCHEMA
from bertflow.bert_core.ingest.stage import run
from bertflow.bert_core.stageio import read_manifest
from tests.helpers import corpus_column, corpus_texts

DOCS = [
    f"Document number {i} talks about topic {i}. It has a second sentence! And a third one?"
    for i in range(5)
]


def _cfg(*inputs, **kw) -> IngestConfig:
    kw.setdefault("workers", 1)
    return IngestConfig(inputs=tuple(str(p) for p in inputs), **kw)


def _compress(path: Path, data: bytes, compression: str | None) -> Path:
    if compression == "gz":
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(data))
    elif compression == "zst":
        path = path.with_name(path.name + ".zst")
        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    else:
        path.write_bytes(data)
    return path


def _jsonl_bytes(field: str = "text") -> bytes:
    return "".join(json.dumps({"id": i, field: d, "extra": [1, 2]}) + "\n" for i, d in enumerate(DOCS)).encode()


def _csv_bytes(delim: str = ",", column: str = "text") -> bytes:
    import io

    buf = io.StringIO()
    w = csv.writer(buf, delimiter=delim, lineterminator="\n")
    w.writerow(["id", column])
    for i, d in enumerate(DOCS):
        w.writerow([i, d.replace(". ", ".\n", 1)])  # a quoted newline inside the field
    return buf.getvalue().encode()


def _parquet_bytes(tmp: Path, column: str = "text") -> bytes:
    p = tmp / "_tmp.parquet"
    pq.write_table(pa.table({"id": list(range(len(DOCS))), column: DOCS}), p)
    data = p.read_bytes()
    p.unlink()
    return data


@pytest.mark.parametrize("compression", [None, "gz", "zst"])
@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "tsv", "parquet", "txt"])
def test_every_format_and_compression_round_trips(tmp_path, fmt, compression):
    if fmt == "jsonl":
        data = _jsonl_bytes()
    elif fmt == "json":
        data = json.dumps([{"text": d, "n": 1} for d in DOCS]).encode()
    elif fmt == "csv":
        data = _csv_bytes(",")
    elif fmt == "tsv":
        data = _csv_bytes("\t")
    elif fmt == "parquet":
        data = _parquet_bytes(tmp_path)
    else:
        data = "\n\n".join(DOCS).encode()
    src = _compress(tmp_path / f"input.{fmt}", data, compression)
    result = run(_cfg(src, txt_mode="blank_line", min_chars=1), tmp_path / "corpus")
    texts = corpus_texts(tmp_path / "corpus")
    expected = [d.replace(". ", ".\n", 1) for d in DOCS] if fmt in ("csv", "tsv") else DOCS
    assert texts == expected
    assert result.metrics["docs_in"] == len(DOCS) == result.metrics["docs_out"]
    assert result.metrics["files_rejected"] == 0
    schema = pq.read_schema(tmp_path / "corpus" / "shard-00000.parquet")
    assert schema.equals(CORPUS_SCHEMA)
    assert read_manifest(tmp_path / "corpus")["inputs"][0]["compression"] == compression


def test_hive_partitioned_parquet_directory(tmp_path):
    root = tmp_path / "lake"
    for year, docs in (("2023", DOCS[:2]), ("2024", DOCS[2:])):
        part = root / f"year={year}" / "lang=en"
        part.mkdir(parents=True)
        pq.write_table(pa.table({"body": docs}), part / "part-0.parquet")
    (root / "_SUCCESS").write_text("")  # writer markers are skipped, not rejected
    result = run(_cfg(root, text_field="body"), tmp_path / "corpus")
    assert corpus_texts(tmp_path / "corpus") == DOCS
    assert result.metrics["files_rejected"] == 0
    sources = corpus_column(tmp_path / "corpus", "source")
    assert sources[0].endswith("year=2023/lang=en/part-0.parquet")


def test_glob_and_directory_inputs_are_expanded_once(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    for i, doc in enumerate(DOCS):
        (d / f"{i}.txt").write_text(doc)
    result = run(_cfg(d, d / "*.txt", d / "0.txt"), tmp_path / "corpus")
    assert result.metrics["docs_in"] == len(DOCS)  # each file read once although named three ways
    assert corpus_texts(tmp_path / "corpus") == DOCS


def test_txt_file_mode_keeps_one_document_per_file(tmp_path):
    (tmp_path / "a.txt").write_text("\n\n".join(DOCS))
    run(_cfg(tmp_path / "a.txt", txt_mode="file"), tmp_path / "corpus")
    assert corpus_texts(tmp_path / "corpus") == ["\n\n".join(DOCS)]


def test_txt_blank_line_mode_splits_on_blank_lines_with_spaces_and_crlf(tmp_path):
    raw = "first doc line one\r\nline two of the first\r\n \r\n\r\nsecond document here\r\n\r\n\r\n\r\nthird document text\r\n"
    (tmp_path / "a.txt").write_bytes(raw.encode())
    run(_cfg(tmp_path / "a.txt", txt_mode="blank_line", min_chars=1), tmp_path / "corpus")
    assert corpus_texts(tmp_path / "corpus") == ["first doc line one\nline two of the first", "second document here", "third document text"]


def test_txt_blank_line_mode_splits_classic_mac_cr_only_files(tmp_path):
    raw = "first doc line one\rline two of the first\r\rsecond document here\r \r\rthird document text\r"
    (tmp_path / "mac.txt").write_bytes(raw.encode())
    run(_cfg(tmp_path / "mac.txt", txt_mode="blank_line", min_chars=1), tmp_path / "corpus")
    assert corpus_texts(tmp_path / "corpus") == ["first doc line one\nline two of the first", "second document here",
                                           "third document text"]


def test_big_blank_line_file_is_streamed(tmp_path, monkeypatch):
    """Files past the in-memory limit go through the two-pass streaming path, with the same result."""
    import bertflow.bert_core.ingest.readers as readers

    docs = [f"Streamed document {i} with caf\u00e9 and some words." for i in range(3000)]
    src = _compress(tmp_path / "big.txt", "\n\n".join(docs).encode("utf-8"), "gz")
    monkeypatch.setattr(readers, "IN_MEMORY_TXT", 1000)
    monkeypatch.setattr("bertflow.bert_core.ingest.decode.CHUNK", 4096)
    result = run(_cfg(src, txt_mode="blank_line"), tmp_path / "corpus")
    assert corpus_texts(tmp_path / "corpus") == docs
    assert read_manifest(tmp_path / "corpus")["inputs"][0]["encoding"] == "utf-8"
    assert result.metrics["text_bytes_in"] == len("\n\n".join(docs).encode())


def test_column_names_are_quoted_not_spliced_into_sql(tmp_path):
    nasty = 'te"xt; DROP TABLE x; --'
    (tmp_path / "a.csv").write_bytes(_csv_bytes(",", column=nasty))
    (tmp_path / "a.jsonl").write_bytes(_jsonl_bytes(field=nasty))
    result = run(_cfg(tmp_path / "a.csv", tmp_path / "a.jsonl", text_field=nasty, dedup=False), tmp_path / "corpus")
    assert result.metrics["docs_out"] == 2 * len(DOCS)
    assert result.metrics["files_rejected"] == 0


def test_non_string_json_values_and_nulls(tmp_path):
    lines = [{"text": DOCS[0]}, {"text": None}, {"other": "no text here"}, {"text": 12345678901234567890}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    result = run(_cfg(tmp_path / "a.jsonl", min_chars=1), tmp_path / "corpus")
    assert corpus_texts(tmp_path / "corpus") == [DOCS[0], "12345678901234567890"]
    assert read_manifest(tmp_path / "corpus")["dropped"]["null_text"] == 2
    assert result.metrics["docs_in"] == 4


def test_jsonl_with_bare_values_is_rejected_with_a_reason_that_says_so(tmp_path):
    (tmp_path / "good.jsonl").write_text(json.dumps({"text": DOCS[0]}) + "\n")
    (tmp_path / "mixed.jsonl").write_text(json.dumps({"text": DOCS[1]}) + "\n" + json.dumps(["a", "list"]) + "\n")
    result = run(_cfg(tmp_path / "good.jsonl", tmp_path / "mixed.jsonl", min_chars=1), tmp_path / "corpus")
    assert corpus_texts(tmp_path / "corpus") == [DOCS[0]]
    (rejected,) = result.details["rejected"]
    assert rejected["reason"].startswith("is not a file of JSON objects"), rejected


# ------------------------------------------------------------------ encodings


def _ingest_one(tmp_path: Path, data: bytes, **kw):
    (tmp_path / "in.txt").write_bytes(data)
    result = run(_cfg(tmp_path / "in.txt", min_chars=1, **kw), tmp_path / "corpus")
    manifest = read_manifest(tmp_path / "corpus")
    return corpus_texts(tmp_path / "corpus")[0], manifest["inputs"][0], result


def test_latin1_file_is_detected(tmp_path):
    text, record, _ = _ingest_one(tmp_path, "Café crème à la façon de Zoë.".encode("latin-1"))
    assert text == "Café crème à la façon de Zoë."
    assert record["encoding"] == "latin-1" and record["replaced_bytes"] == 0


def test_cp1252_smart_quotes_are_detected(tmp_path):
    text, record, _ = _ingest_one(tmp_path, "\u201cQuoted\u201d \u2014 it\u2019s fine.".encode("cp1252"))
    assert text == "\u201cQuoted\u201d \u2014 it\u2019s fine."
    assert record["encoding"] == "cp1252"


def test_utf8_sig_bom_is_removed(tmp_path):
    text, record, _ = _ingest_one(tmp_path, "\ufeffNaïve text with a BOM.".encode("utf-8"))
    assert text == "Naïve text with a BOM."
    assert record["encoding"] == "utf-8-sig"


def test_invalid_utf8_bytes_are_replaced_and_counted(tmp_path):
    data = "Grüße aus Köln, schöne Straße. ".encode() * 3 + b"broken \xff\xfe here and \xc3 there."
    text, record, result = _ingest_one(tmp_path, data)
    assert record["encoding"] == "utf-8"
    assert record["replaced_bytes"] == 3
    assert result.metrics["replaced_bytes"] == 3
    assert text.count("\ufffd") == 3 and "Grüße" in text


def test_declared_encoding_wins_and_counts_replacements(tmp_path):
    text, record, _ = _ingest_one(tmp_path, "plain ascii then \xe9 oops".encode("latin-1"), encoding="utf-8")
    assert record["encoding"] == "utf-8" and record["replaced_bytes"] == 1
    assert text == "plain ascii then \ufffd oops"


def test_parquet_dictionary_column_is_read_and_a_non_string_column_rejected(tmp_path):
    pq.write_table(pa.table({"text": pa.array(DOCS[:2]).dictionary_encode()}), tmp_path / "cat.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "ints.parquet")
    result = run(_cfg(tmp_path / "cat.parquet", tmp_path / "ints.parquet"), tmp_path / "corpus")
    assert corpus_texts(tmp_path / "corpus") == DOCS[:2]
    assert result.details["rejected"][0]["reason"] == "column 'text' has type int64, expected a string column"
