"""The ingest stage end to end: shards, dedup, rejected files, errors, manifest, workers, streaming."""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertflow.bert_core.errors import ConfigError, InputError
from bertflow.bert_core.ingest.config import IngestConfig
from bertflow.bert_core.ingest.documents import write_corpus
from bertflow.bert_core.ingest.reader import iter_rows, open_corpus, read_table, sentence_starts
from bertflow.bert_core.ingest.schema import CORPUS_SCHEMA
from bertflow.bert_core.ingest.stage import run
from bertflow.bert_core.ingest.sentences import sentence_starts as sentence_starts_of
from bertflow.bert_core.stageio import read_manifest, write_manifest
from tests.helpers import BOOKS, REPO, SHARED_DATA



def _cfg(*inputs, **kw) -> IngestConfig:
    kw.setdefault("workers", 1)
    return IngestConfig(inputs=tuple(str(p) for p in inputs), **kw)


def _table(corpus: Path) -> pa.Table:
    return pa.Table.from_batches(open_corpus(corpus).iter_batches(CORPUS_SCHEMA.names), schema=CORPUS_SCHEMA)


def _doc(i: int) -> str:
    return f"Document {i} starts here. It says something about item {i}! Does it end? Yes."


def _write_docs(path: Path, docs: list[str]) -> Path:
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


# ------------------------------------------------------------------ the happy path on real books


@pytest.fixture(scope="module")
def books_corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("books") / "corpus"
    progress: list[tuple[int, int]] = []
    result = run(_cfg(BOOKS / "*.txt.gz"), out, on_progress=lambda d, t: progress.append((d, t)))
    return out, result, progress


def test_books_corpus_result_and_progress(books_corpus):
    out, result, progress = books_corpus
    assert result.stage == "ingest" and Path(result.path) == out
    m = result.metrics
    for key in ("docs_in", "docs_out", "bytes_in", "chars_out", "files_rejected", "duplicates_dropped", "shards"):
        assert key in m and isinstance(m[key], float)
    assert m["docs_in"] == m["docs_out"] == 6 and m["shards"] == 1 and m["files_rejected"] == 0
    assert m["bytes_in"] == sum(p.stat().st_size for p in BOOKS.glob("*.txt.gz"))
    assert progress == [(i, 6) for i in range(1, 7)]
    assert result.details["rejected"] == [] and Path(result.details["manifest"]).is_file()


def test_books_corpus_rows_follow_the_schema(books_corpus):
    out, result, _ = books_corpus
    assert pq.read_schema(out / "shard-00000.parquet").equals(CORPUS_SCHEMA)
    table = _table(out)
    for row in table.to_pylist():
        assert row["doc_id"] == hashlib.blake2b(row["text"].encode(), digest_size=16).hexdigest()
        assert row["n_chars"] == len(row["text"])
        assert row["sent_starts"][0] == 0 and row["sent_starts"] == sorted(row["sent_starts"])
        assert len(row["sent_starts"]) > 50  # books have many sentences
        assert "\r" not in row["text"] and "\n\n\n" not in row["text"]
        assert "PROJECT GUTENBERG" not in row["text"].upper()
        assert Path(row["source"]).parent == BOOKS
    assert sum(table.column("n_chars").to_pylist()) == result.metrics["chars_out"]


def test_books_manifest_contents(books_corpus):
    out, result, _ = books_corpus
    m = read_manifest(out, "ingest")
    assert m["stage"] == "ingest"
    assert m["schema"] == {f.name: str(f.type) for f in CORPUS_SCHEMA}
    assert m["config"]["inputs"] == [str(BOOKS / "*.txt.gz")]
    assert m["counts"]["docs_in"] == 6 and m["counts"]["files_rejected"] == 0 and m["counts"]["gutenberg_stripped"] == 6
    assert set(m["dropped"]) == {"null_text", "empty", "too_short", "duplicate"}
    assert len(m["corpus_fingerprint"]) == 64 and m["corpus_fingerprint"] == result.details["corpus_fingerprint"]
    encodings = {Path(r["path"]).name: r["encoding"] for r in m["inputs"]}
    assert encodings["11-0.txt.gz"] == "utf-8-sig" and encodings["1080.txt.gz"] == "utf-8"
    from bertflow.bert_core.stageio import file_digest

    for record in m["inputs"]:
        assert record["sha256"] == file_digest(record["path"])
        assert record["replaced_bytes"] == 0 and record["docs_out"] == 1
    assert [s["name"] for s in m["shards"]] == ["shard-00000.parquet"]


def test_rerun_is_deterministic_and_fingerprint_tracks_content(books_corpus, tmp_path):
    out, result, _ = books_corpus
    again = run(_cfg(BOOKS / "*.txt.gz", shard_max_mb=0.1), tmp_path / "again")
    assert again.details["corpus_fingerprint"] == result.details["corpus_fingerprint"]  # sharding is not content
    assert _table(tmp_path / "again").equals(_table(out))
    fewer = run(_cfg(BOOKS / "1*.txt.gz"), tmp_path / "fewer")
    assert fewer.details["corpus_fingerprint"] != result.details["corpus_fingerprint"]


# ------------------------------------------------------------------ shards, dedup, length


def test_shards_respect_the_size_bound(tmp_path):
    docs = [_doc(i) * 20 for i in range(400)]  # ~1.6 KB each, ~650 KB in all
    result = run(_cfg(_write_docs(tmp_path / "a.jsonl", docs), shard_max_mb=0.1), tmp_path / "corpus")
    bound = int(0.1 * (1 << 20))
    shards = open_corpus(tmp_path / "corpus").shards
    assert result.metrics["shards"] == len(shards) == len(list((tmp_path / "corpus").glob("shard-*.parquet"))) >= 6
    assert [s.path.name for s in shards] == [f"shard-{i:05d}.parquet" for i in range(len(shards))]
    for shard in shards:
        size = sum(len(t.encode()) for t in read_table(shard.path, ["text"]).column("text").to_pylist())
        assert bound * 0.8 < size <= bound or shard == shards[-1]
    assert _table(tmp_path / "corpus").column("text").to_pylist() == docs


def test_a_document_bigger_than_the_bound_gets_its_own_shard(tmp_path):
    docs = [_doc(0), "x" * 200_000, _doc(1)]
    run(_cfg(_write_docs(tmp_path / "a.jsonl", docs), shard_max_mb=0.1), tmp_path / "corpus")
    rows = [s.rows for s in open_corpus(tmp_path / "corpus").shards]
    assert rows == [1, 1, 1]


def test_exact_duplicates_are_dropped_across_files_and_formats(tmp_path):
    _write_docs(tmp_path / "a.jsonl", [_doc(1), _doc(2), _doc(1)])
    (tmp_path / "b.txt").write_text("  " + _doc(2).replace(" ", "  ") + "\r\n")  # equal after cleaning
    (tmp_path / "c.txt").write_text(_doc(3))
    result = run(_cfg(tmp_path / "a.jsonl", tmp_path / "b.txt", tmp_path / "c.txt"), tmp_path / "corpus")
    assert _table(tmp_path / "corpus").column("text").to_pylist() == [_doc(1), _doc(2), _doc(3)]
    assert result.metrics["duplicates_dropped"] == 2
    no_dedup = run(_cfg(tmp_path / "a.jsonl", tmp_path / "b.txt", tmp_path / "c.txt", dedup=False), tmp_path / "all")
    assert no_dedup.metrics["docs_out"] == 5


def test_min_chars_and_empty_documents(tmp_path):
    _write_docs(tmp_path / "a.jsonl", ["short", "   \n\t  ", "x" * 19, "y" * 20, _doc(1)])
    result = run(_cfg(tmp_path / "a.jsonl", min_chars=20), tmp_path / "corpus")
    assert _table(tmp_path / "corpus").column("text").to_pylist() == ["y" * 20, _doc(1)]
    dropped = read_manifest(tmp_path / "corpus")["dropped"]
    assert dropped["too_short"] == 2 and dropped["empty"] == 1
    assert result.metrics["docs_in"] == 5 == result.metrics["docs_out"] + sum(dropped.values())


def test_two_workers_give_the_identical_corpus(tmp_path):
    docs = [_doc(i) for i in range(3000)] + [_doc(5)]
    src = _write_docs(tmp_path / "a.jsonl", docs)
    broken = tmp_path / "broken.txt.gz"
    broken.write_bytes(gzip.compress(b"x" * 100)[:-6])
    one = run(_cfg(src, BOOKS / "*.txt.gz", broken, workers=1), tmp_path / "one")
    two = run(_cfg(src, BOOKS / "*.txt.gz", broken, workers=2), tmp_path / "two")
    assert _table(tmp_path / "two").equals(_table(tmp_path / "one"))
    assert one.details["corpus_fingerprint"] == two.details["corpus_fingerprint"]
    assert two.metrics["duplicates_dropped"] == 1
    assert one.details["rejected"][0]["reason"] == two.details["rejected"][0]["reason"]
    assert two.metrics["files_rejected"] == 1
    assert read_manifest(tmp_path / "two")["workers"] == 2


# ------------------------------------------------------------------ reading the corpus back (ingest/reader.py)


@pytest.fixture(scope="module")
def small_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("small")
    docs = [_doc(i) * (1 + i % 7) for i in range(300)]
    result = run(_cfg(_write_docs(root / "a.jsonl", docs), shard_max_mb=0.01), root / "corpus")
    return root / "corpus", docs, result


def test_reader_reads_back_what_ingest_wrote(small_corpus):
    out, docs, result = small_corpus
    corpus = open_corpus(out)
    listed = read_manifest(out, "ingest")["shards"]
    assert [(s.index, s.path.name, s.rows) for s in corpus.shards] == [(i, e["name"], e["rows"]) for i, e in enumerate(listed)]
    assert len(corpus.shards) >= 3 and corpus.docs == len(docs) == result.metrics["docs_out"]
    assert corpus.fingerprint == result.details["corpus_fingerprint"]
    assert corpus.text_bytes == sum(len(d.encode()) for d in docs)
    rows = [r for batch in corpus.iter_batches(CORPUS_SCHEMA.names, batch_rows=7) for r in batch.to_pylist()]
    assert [r["text"] for r in rows] == docs
    for r in rows:
        assert r["doc_id"] == hashlib.blake2b(r["text"].encode(), digest_size=16).hexdigest()
        assert r["n_chars"] == len(r["text"]) and r["sent_starts"] == sentence_starts_of(r["text"])
    ids = [i for s in corpus.shards for i in read_table(s.path, ["doc_id"]).column("doc_id").to_pylist()]
    assert ids == [r["doc_id"] for r in rows]


def test_ready_documents_are_written_as_ingest_writes_them(small_corpus, tmp_path):
    out, docs, result = small_corpus  # clean, unique documents: ingestion keeps them as they are
    source = _table(out)["source"][0].as_py()
    ours = write_corpus(tmp_path / "corpus", docs, source=source, shard_max_bytes=int(0.01 * (1 << 20)))
    theirs = read_manifest(out, "ingest")
    mine = read_manifest(ours, "ingest")
    assert mine["corpus_fingerprint"] == theirs["corpus_fingerprint"] == result.details["corpus_fingerprint"]
    assert mine["shards"] == theirs["shards"] and mine["schema"] == theirs["schema"] and len(mine["shards"]) >= 3
    for key in ("docs_out", "chars_out", "text_bytes_out"):
        assert mine["counts"][key] == theirs["counts"][key]
    for shard in theirs["shards"]:  # one writer: the same bytes
        assert (ours / shard["name"]).read_bytes() == (out / shard["name"]).read_bytes()
    given = write_corpus(tmp_path / "given", ["Ab. Cd.", "Ef"], [[0], [0]])
    assert [r["sent_starts"] for r in _table(given).to_pylist()] == [[0], [0]]  # as given, not split again
    with pytest.raises(InputError, match="no documents"):
        write_corpus(tmp_path / "empty", [])
    assert not (tmp_path / "empty").exists()


def test_reader_reads_row_ranges_across_row_groups(tmp_path):
    docs = [_doc(i) * (1 + i % 5) for i in range(200)]
    half = sum(len(d.encode()) for d in docs) // 2
    corpus = open_corpus(write_corpus(tmp_path / "corpus", docs, shard_max_bytes=half + 100, row_group_bytes=2000))
    shard, first = corpus.shards[1], corpus.shards[0].rows
    assert len(corpus.shards) == 2 and shard.rows >= 90 and shard.row_groups >= 5
    for start, end in [(0, shard.rows), (13, 57), (shard.rows - 1, shard.rows), (40, 40)]:
        want = docs[first + start:first + end]
        batches = list(iter_rows(shard.path, start, end, ["doc_id", "text", "sent_starts"], batch_rows=6))
        assert [t for b in batches for t in b.column("text").to_pylist()] == want
        starts = [s for b in batches for s in sentence_starts(b.column("sent_starts"), b.column("text").to_pylist(),
                                                               b.column("doc_id").to_pylist(), shard.path)]
        assert [s.tolist() for s in starts] == [sentence_starts_of(d) for d in want]


def _set_manifest(d: Path, **changes) -> None:
    manifest = read_manifest(d)
    manifest.update(changes)
    write_manifest(d, {k: v for k, v in manifest.items() if v is not None})


def _rewrite_shard(path: Path, change) -> None:
    pq.write_table(change(pq.read_table(path)), path)


BAD_CORPORA = {
    "no directory": (lambda d, shard: shutil.rmtree(d), r"corpus directory {dir} does not exist"),
    "no manifest": (lambda d, shard: (d / "manifest.json").unlink(), r"{dir} is not .*: manifest.json is missing"),
    "another stage": (lambda d, shard: _set_manifest(d, stage="vocab"), r"{dir} is not an ingest output .*stage='vocab'"),
    "no fingerprint": (lambda d, shard: _set_manifest(d, corpus_fingerprint=None), r"{dir}/manifest.json has no corpus_fingerprint"),
    "no shards listed": (lambda d, shard: _set_manifest(d, shards=[]), r"{dir}/manifest.json lists no shards"),
    "shard missing": (lambda d, shard: shard.unlink(), r"corpus shard {shard} is listed in {dir}/manifest.json but missing"),
    "shard truncated": (lambda d, shard: shard.write_bytes(shard.read_bytes()[:-100]),
                        r"corpus shard {shard} is not a readable Parquet file"),
    "shard short of rows": (lambda d, shard: _rewrite_shard(shard, lambda t: t.slice(1)),
                            r"corpus shard {shard} holds \d+ rows but {dir}/manifest.json says"),
    "column missing": (lambda d, shard: _rewrite_shard(shard, lambda t: t.drop_columns(["source"])),
                       r"corpus shard {shard} has no 'source' column"),
    "column of another type": (lambda d, shard: _rewrite_shard(shard, lambda t: t.set_column(3, "n_chars", t.column(3).cast(pa.int64()))),
                               r"corpus shard {shard}: column 'n_chars' is int64, expected int32"),
    "extra column": (lambda d, shard: _rewrite_shard(shard, lambda t: t.append_column("lang", pa.array(["en"] * len(t)))),
                     r"corpus shard {shard} has columns \['lang'\]"),
}


@pytest.mark.parametrize("case", list(BAD_CORPORA))
def test_reader_names_what_is_wrong_with_a_corpus_dir(small_corpus, tmp_path, case):
    d = tmp_path / "corpus"
    shutil.copytree(small_corpus[0], d)
    shard = d / "shard-00001.parquet"
    damage, message = BAD_CORPORA[case]
    damage(d, shard)
    with pytest.raises(InputError, match=message.format(dir=re.escape(str(d)), shard=re.escape(str(shard)))):
        open_corpus(d)


def test_a_shard_cut_after_opening_is_named_when_read(small_corpus, tmp_path):
    d = tmp_path / "corpus"
    shutil.copytree(small_corpus[0], d)
    corpus = open_corpus(d)
    shard = corpus.shards[1].path
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    with pytest.raises(InputError, match=rf"corpus shard {re.escape(str(shard))} cannot be read"):
        list(corpus.iter_batches(["text"]))


# ------------------------------------------------------------------ bad input


@pytest.fixture
def bad_inputs(tmp_path):
    good = _write_docs(tmp_path / "good.jsonl", [_doc(i) for i in range(3)])
    truncated = tmp_path / "truncated.txt.gz"
    packed = gzip.compress(" ".join(f"Word{i * 7919 % 10007}." for i in range(20000)).encode())
    truncated.write_bytes(packed[: len(packed) // 2])
    garbage_parquet = tmp_path / "garbage.parquet"
    garbage_parquet.write_bytes(b"PAR1 this is not really parquet at all" * 10)
    no_column = tmp_path / "no_column.csv"
    no_column.write_text("id,body\n1,some text that is long enough\n")
    junk = tmp_path / "junk.txt"
    junk.write_bytes(bytes(range(256)) * 40)
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text('{"text": "fine document one here."}\n{"text": broken\n')
    unknown = tmp_path / "notes.docx"
    unknown.write_bytes(b"PK\x03\x04 zip")
    return {
        "good": good,
        "bad": {
            truncated: "truncated gzip",
            garbage_parquet: "Parquet",
            no_column: "has no column 'text' (found: 'id', 'body')",
            junk: "binary",
            bad_json: "Malformed JSON",
            unknown: "unsupported file type",
        },
    }


def test_unreadable_files_are_reported_and_the_run_continues(tmp_path, bad_inputs):
    bad = bad_inputs["bad"]
    result = run(_cfg(bad_inputs["good"], *bad), tmp_path / "corpus")
    assert result.metrics["docs_out"] == 3
    assert result.metrics["files_rejected"] == len(bad)
    rejected = {Path(r["path"]).name: r["reason"] for r in result.details["rejected"]}
    assert rejected == {Path(r["path"]).name: r["reason"] for r in read_manifest(tmp_path / "corpus")["rejected"]}
    for path, expected in bad.items():
        assert expected in rejected[path.name], (path.name, rejected[path.name])


def test_a_file_rejected_half_way_contributes_nothing(tmp_path, bad_inputs):
    """The malformed JSON file's first (good) record is not kept, and does not block a later copy via dedup."""
    bad_json = next(p for p in bad_inputs["bad"] if p.name == "bad.jsonl")
    later = _write_docs(tmp_path / "later.jsonl", ["fine document one here."])
    result = run(_cfg(bad_json, later), tmp_path / "corpus")
    assert result.metrics["files_rejected"] == 1 and result.metrics["docs_out"] == 1
    assert result.metrics["duplicates_dropped"] == 0
    assert _table(tmp_path / "corpus").column("source").to_pylist() == [str(later)]


def test_rejected_file_rolls_back_staged_rows_that_spilled_to_disk(tmp_path):
    lines = "".join(json.dumps({"text": _doc(i)}) + "\n" for i in range(2000)) + "{broken\n"
    (tmp_path / "spilled.jsonl").write_text(lines)
    good = _write_docs(tmp_path / "good.jsonl", [_doc(1)])
    result = run(_cfg(tmp_path / "spilled.jsonl", good, staging_mb=0.01, batch_rows=100), tmp_path / "corpus")
    assert result.metrics["docs_out"] == 1 and result.metrics["duplicates_dropped"] == 0
    assert not list((tmp_path / "corpus").glob(".staging*"))


def test_big_file_spills_and_commits_in_order(tmp_path):
    docs = [_doc(i) for i in range(2000)]
    result = run(_cfg(_write_docs(tmp_path / "a.jsonl", docs), staging_mb=0.01, batch_rows=100), tmp_path / "corpus")
    assert result.metrics["docs_out"] == 2000
    assert _table(tmp_path / "corpus").column("text").to_pylist() == docs


def test_strict_mode_fails_fast_with_the_same_message(tmp_path, bad_inputs):
    truncated = next(p for p in bad_inputs["bad"] if p.name == "truncated.txt.gz")
    with pytest.raises(InputError, match=r"truncated\.txt\.gz: truncated gzip") as info:
        run(_cfg(bad_inputs["good"], truncated, strict=True), tmp_path / "corpus")
    assert "strict" in str(info.value)
    assert not (tmp_path / "corpus").exists()


def test_missing_input_path_names_it(tmp_path):
    with pytest.raises(InputError, match="nowhere.jsonl"):
        run(_cfg(tmp_path / "nowhere.jsonl"), tmp_path / "corpus")
    with pytest.raises(InputError, match=r"\*\.csv.*matches no files"):
        run(_cfg(tmp_path / "*.csv"), tmp_path / "corpus")


def test_zero_documents_is_an_error_not_an_empty_corpus(tmp_path):
    _write_docs(tmp_path / "tiny.jsonl", ["short", "also short"])
    with pytest.raises(InputError, match=r"^no documents .*too_short"):
        run(_cfg(tmp_path / "tiny.jsonl"), tmp_path / "corpus")
    assert not (tmp_path / "corpus").exists()
    (tmp_path / "only.csv").write_text("id,body\n1,x\n")
    with pytest.raises(InputError, match="no documents.*1 rejected.*has no column 'text'"):
        run(_cfg(tmp_path / "only.csv"), tmp_path / "corpus")


def test_failed_run_keeps_the_previous_output(tmp_path):
    good = _write_docs(tmp_path / "a.jsonl", [_doc(1)])
    run(_cfg(good), tmp_path / "corpus")
    before = _table(tmp_path / "corpus")
    with pytest.raises(InputError):
        run(_cfg(tmp_path / "missing.jsonl"), tmp_path / "corpus")
    _write_docs(tmp_path / "empty.jsonl", ["x"])
    with pytest.raises(InputError):
        run(_cfg(tmp_path / "empty.jsonl"), tmp_path / "corpus")
    assert _table(tmp_path / "corpus").equals(before)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_config_validation():
    with pytest.raises(ConfigError, match="shard_max_mb"):
        IngestConfig(shard_max_mb=0)
    with pytest.raises(ConfigError, match="encoding"):
        IngestConfig(encoding="no-such-codec")
    with pytest.raises(ConfigError, match="inputs"):
        IngestConfig(inputs=())


# ------------------------------------------------------------------ memory on the real corpus


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.skipif(not (SHARED_DATA / "gutenberg").is_dir(), reason="needs ../shared/data/gutenberg")
def test_full_gutenberg_ingest_peak_rss_under_1gb(tmp_path):
    """Streaming: the whole shared Gutenberg corpus (150 MB of text) in a subprocess, peak RSS < 1 GB."""
    code = (
        "import json, resource, sys\n"
        "from bertflow.bert_core.ingest.config import IngestConfig\n"
        "from bertflow.bert_core.ingest.stage import run\n"
        "if __name__ == '__main__':\n"
        f"    r = run(IngestConfig(inputs=({str(SHARED_DATA / 'gutenberg' / '*.txt.gz')!r},), workers=2), {str(tmp_path / 'c')!r})\n"
        # VmHWM, not ru_maxrss: ru_maxrss survives exec, so it would count the forking pytest's RSS
        "    me = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "    print(json.dumps({'rss_mb': me / 1024, 'worker_rss_mb': kids / 1024, 'docs': r.metrics['docs_out']}))\n"
    )
    script = tmp_path / "ingest_rss.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, check=True)
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["docs"] == 201
    assert stats["rss_mb"] < 1024 and stats["worker_rss_mb"] < 1024
