"""Bulk scoring end to end on CPU with a tiny BERT classifier: rows in = rows out, exactly once, equivalence."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.score.stage import FileJob, output_lock, plan, run, score_file
from bertflow.bert_core.stageio import read_manifest
from tests.helpers import LABELS, REPO, make_lake, read_scored, score_cfg, sentence, write_parquet


def hf_reference(model_dir: Path, texts: list[str], max_length: int, pairs: list[str] | None = None):
    """A plain transformers forward: probabilities, CLS and mean-pooled last hidden states."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    enc = tok(texts, pairs, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.inference_mode():
        out = model(**enc, output_hidden_states=True)
    probs = out.logits.float().softmax(-1).numpy()
    hidden = out.hidden_states[-1]
    mask = enc["attention_mask"].unsqueeze(-1).float()
    mean = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    return probs, hidden[:, 0].numpy(), mean


# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "onnx-int8"])
def test_rows_in_equal_rows_out_with_bad_rows(tiny_model, tmp_path, backend):
    gate = {"backend": backend, "min_agreement": 0.0}  # the tiny random model's int8 fidelity: test_score_onnx.py
    rng = random.Random(1)
    huge = "good " * 200_000  # 1 MB of text: truncated, still scored
    texts = [sentence(rng), None, "", "  \t\n ", huge, "éàü !", sentence(rng, 40, 60)] * 7 + [None]
    lake = tmp_path / "lake"
    write_parquet(lake / "a.parquet", {"id": list(range(len(texts))), "text": texts})
    write_parquet(lake / "b.parquet", {"id": [100, 101, 102], "text": pa.array([1, None, 3], pa.int64())})
    raw = pa.array([b"good film", b"\xff\xfe not utf-8", None], pa.binary()).view(pa.string())  # a broken writer
    write_parquet(lake / "c.parquet", pa.table({"id": [200, 201, 202], "text": raw}))
    result = run(score_cfg(lake, max_length=16, **gate), tiny_model, tmp_path / "out")
    out = read_scored(tmp_path / "out").sort_by("id")
    a = out.filter(pc.less(out["id"], 100)).to_pylist()
    assert [r["id"] for r in a] == list(range(len(texts)))  # rows in = rows out, in order, no duplicates
    for text, row in zip(texts, a):
        if text is None:
            assert row["error"] == "null_text" and row["label"] is None and row["score"] is None
        elif not text.strip():
            assert row["error"] == "empty_text" and row["label"] is None
        else:
            assert row["label"] in LABELS.values() and 0 < row["score"] <= 1
            long = len(text.split()) > 14 or text is huge
            assert row["error"] == ("truncated" if long else None)
    b = out.filter(pc.and_(pc.greater_equal(out["id"], 100), pc.less(out["id"], 200))).to_pylist()
    assert [r["error"] for r in b] == ["not_text:int64"] * 3 and all(r["label"] is None for r in b)
    c = out.filter(pc.greater_equal(out["id"], 200)).to_pylist()
    assert [r["error"] for r in c] == [None, "invalid_utf8", "null_text"] and c[0]["label"] is not None
    m = result.metrics
    assert m["rows_in"] == len(texts) + 6 == m["rows_scored"] + m["rows_error"]
    truncated = sum(1 for t in texts if t is not None and t.strip() and (t is huge or len(t.split()) > 14))
    assert m["rows_error"] == 3 * 7 + 1 + 3 + 2 and m["rows_truncated"] == truncated >= 14

    # The cast policy scores numbers as text instead.
    cast = run(score_cfg(lake / "b.parquet", non_string_text="cast", **gate), tiny_model, tmp_path / "out-cast")
    rows = read_scored(tmp_path / "out-cast").sort_by("id").to_pylist()
    assert [r["error"] for r in rows] == [None, "null_text", None] and rows[0]["label"] is not None
    assert cast.metrics["rows_scored"] == 2


@pytest.mark.parametrize("pair", [False, True])
def test_output_equals_a_plain_hf_forward(tiny_model, tmp_path, pair):
    rng = random.Random(2)
    texts = [sentence(rng, 1, 40) for _ in range(120)]
    seconds = [sentence(rng, 1, 10) for _ in range(120)] if pair else None
    data = {"id": list(range(120)), "text": texts, **({"hyp": seconds} if pair else {})}
    write_parquet(tmp_path / "in.parquet", data)
    c = score_cfg(tmp_path / "in.parquet", probabilities=True, embeddings="mean", text_pair_column="hyp" if pair else None,
            max_length=24, batch_size=16)
    run(c, tiny_model, tmp_path / "out")
    out = read_scored(tmp_path / "out").sort_by("id")
    probs, _, mean = hf_reference(tiny_model, texts, 24, seconds)
    assert out["label"].to_pylist() == [LABELS[i] for i in probs.argmax(1)]
    np.testing.assert_allclose(out["score"].to_numpy(), probs.max(1), atol=1e-4)
    np.testing.assert_allclose(np.stack(out["probabilities"].to_numpy(zero_copy_only=False)), probs, atol=1e-4)
    np.testing.assert_allclose(np.stack(out["embedding"].to_numpy(zero_copy_only=False)), mean, atol=1e-4)
    assert len(set(out["label"].to_pylist())) > 1  # the model is not constant: the comparison means something
    if not pair:
        assert out.column_names == ["id", "label", "score", "probabilities", "embedding", "model_uri",
                                    "model_version", "error"]


def test_probabilities_and_cls_embedding_columns(tiny_model, tmp_path):
    rng = random.Random(3)
    texts = [sentence(rng) for _ in range(30)] + [None]
    write_parquet(tmp_path / "in.parquet", {"id": list(range(31)), "text": texts})
    run(score_cfg(tmp_path / "in.parquet", probabilities=True, embeddings="cls"), tiny_model, tmp_path / "out",
        model_uri="models:/tiny@champion", model_version="7")
    out = pq.read_table(tmp_path / "out" / "in.parquet")
    assert out.schema.field("probabilities").type == pa.list_(pa.float32())
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), 32)
    assert out.schema.field("score").type == pa.float32() and out.schema.field("label").type == pa.string()
    probs = out["probabilities"].to_pylist()
    assert all(len(p) == 3 and abs(sum(p) - 1) < 1e-5 for p in probs[:30]) and probs[30] is None
    emb = out["embedding"].to_pylist()
    assert np.isnan(emb[30]).all() and not np.isnan(emb[:30]).any()  # unscored rows: NaN vector (see output.py)
    _, cls, _ = hf_reference(tiny_model, texts[:30], 32)
    np.testing.assert_allclose(np.array(emb[:30]), cls, atol=1e-4)
    assert set(out["model_uri"].to_pylist()) == {"models:/tiny@champion"}
    assert set(out["model_version"].to_pylist()) == {"7"}


def test_hive_partitions_are_mirrored_and_where_is_pushed_down(tiny_model, tmp_path):
    rng = random.Random(4)
    lake = tmp_path / "lake"
    for dt in ("2024-01-01", "2024-01-02"):
        for part in range(2):
            n = 20
            write_parquet(lake / f"dt={dt}" / f"part-{part}.parquet",
                  {"id": [f"{dt}/{part}/{i}" for i in range(n)], "text": [sentence(rng) for _ in range(n)],
                   "lang": [rng.choice(["en", "fr"]) for _ in range(n)], "n": list(range(n))})
    out = tmp_path / "out"
    result = run(score_cfg(lake, where="dt = '2024-01-02' AND lang = 'en' AND n >= 5", key_columns=("id", "lang")),
                 tiny_model, out)
    outputs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    assert outputs == ["dt=2024-01-02/part-0.parquet", "dt=2024-01-02/part-1.parquet"]  # the other day: pruned
    table = read_scored(out)
    assert table.column_names[:2] == ["id", "lang"]
    assert "n" not in table.column_names and "text" not in table.column_names
    src = pa.concat_tables(pq.read_table(p).append_column("dt", pa.array([p.parent.name[3:]] * 20))
                           for p in sorted(lake.rglob("*.parquet")))
    expected = sorted(r["id"] for r in src.to_pylist() if r["dt"] == "2024-01-02" and r["lang"] == "en" and r["n"] >= 5)
    assert sorted(table["id"].to_pylist()) == expected and expected
    assert set(table["dt"].to_pylist()) == {"2024-01-02"}  # hive partition read back from the mirrored path
    assert result.metrics["files_pruned"] == 2 and result.details["pruned"] == [
        "dt=2024-01-01/part-0.parquet", "dt=2024-01-01/part-1.parquet"]
    assert result.metrics["rows_in"] == 40 and result.metrics["rows_filtered"] == 40 - len(expected)
    manifest = read_manifest(out, "score")
    assert manifest["pruned"] == result.details["pruned"] and manifest["metrics"]["bytes_read"] > 0


def test_corrupt_files_are_reported_and_the_others_scored(tiny_model, tmp_path):
    lake = tmp_path / "lake"
    make_lake(lake, files=3, rows=10)
    (lake / "part-bad.parquet").write_bytes(b"this is not parquet at all" * 10)
    good = (lake / "part-000.parquet").read_bytes()
    (lake / "part-cut.parquet").write_bytes(good[: len(good) // 2])
    out = tmp_path / "out"
    result = run(score_cfg(lake), tiny_model, out)
    assert result.metrics["files_failed"] == 2 and result.metrics["files_scored"] == 3
    failed = {f.input: f.reason for f in result.failed}
    assert set(failed) == {"part-bad.parquet", "part-cut.parquet"}
    assert all("part-" in reason and "Parquet" in reason for reason in failed.values())
    manifest = read_manifest(out, "score")
    assert {f["input"] for f in manifest["failed"]} == set(failed)
    assert manifest["metrics"]["rows_scored"] + manifest["metrics"]["rows_error"] == 30
    assert sorted(p.name for p in out.glob("*.parquet")) == ["part-000.parquet", "part-001.parquet", "part-002.parquet"]
    again = run(score_cfg(lake), tiny_model, out)  # failed files are retried, committed ones skipped
    assert again.metrics["files_skipped"] == 3 and again.metrics["files_failed"] == 2


def test_reruns_skip_committed_files_and_redo_changed_ones(tiny_model, tmp_path):
    lake, out = tmp_path / "lake", tmp_path / "out"
    make_lake(lake, files=3, rows=12)
    first = run(score_cfg(lake), tiny_model, out)
    assert first.metrics["files_scored"] == 3
    assert run(score_cfg(lake), tiny_model, out).metrics["files_skipped"] == 3
    write_parquet(lake / "part-001.parquet", {"id": [1, 2], "text": ["good film", "bad film"]})  # input changed
    jobs = {j.rel_path: j for j in plan(score_cfg(lake), out, model_dir=tiny_model)}
    assert not jobs["part-001.parquet"].committed and jobs["part-001.parquet"].reason == "input changed"
    assert jobs["part-000.parquet"].committed
    third = run(score_cfg(lake), tiny_model, out)
    assert third.metrics["files_scored"] == 1 and third.metrics["files_skipped"] == 2
    assert pq.read_metadata(out / "part-001.parquet").num_rows == 2
    assert [j.reason for j in plan(score_cfg(lake, probabilities=True), out)] == ["config changed"] * 3
    # score_file is idempotent: a committed file returns at once.
    job = plan(score_cfg(lake), out, model_dir=tiny_model)[0]
    assert score_file(score_cfg(lake), job, tiny_model).status == "skipped"
    # A different model makes every output stale.
    other = tmp_path / "other-model"
    other.mkdir()
    for p in tiny_model.iterdir():
        (other / p.name).write_bytes(p.read_bytes())
    (other / "config.json").write_text(json.dumps({**json.loads((tiny_model / "config.json").read_text()),
                                                   "id2label": {"0": "a", "1": "b", "2": "c"}}))
    assert [j.reason for j in plan(score_cfg(lake), out, model_dir=other)] == ["model changed"] * 3


def test_model_dir_digest_keeps_the_committed_format_and_ignores_provenance(tiny_model, tmp_path):
    """Score commit records hold this digest: its format is what outputs committed before it was shared hold."""
    import hashlib

    from bertflow.bert_core.stageio import file_digest, model_dir_digest

    model = tmp_path / "model"
    model.mkdir()
    for p in tiny_model.iterdir():
        (model / p.name).write_bytes(p.read_bytes())
    lines = "".join(f"{p.name}\0{file_digest(p)}\n" for p in sorted(model.iterdir()))
    assert model_dir_digest(model) == "sha256:" + hashlib.sha256(lines.encode()).hexdigest()
    before = model_dir_digest(model)
    (model / "manifest.json").write_text('{"created_utc": "now"}')  # provenance, re-written with each export
    (model / ".bertflow-stage.json").write_text("{}")
    assert model_dir_digest(model) == before
    tok = model_dir_digest(model, only=["tokenizer.json"])
    assert tok != before and tok == model_dir_digest(tiny_model, only=["tokenizer.json"])
    (model / "tokenizer.json").write_bytes((model / "tokenizer.json").read_bytes() + b"\n")
    assert model_dir_digest(model) != before and model_dir_digest(model, only=["tokenizer.json"]) != tok


def test_concurrent_run_refuses_via_the_lock(tiny_model, tmp_path):
    lake, out = tmp_path / "lake", tmp_path / "out"
    make_lake(lake, files=1, rows=5)
    with output_lock(out):
        with pytest.raises(InputError, match="another scoring run holds the lock on"):
            run(score_cfg(lake), tiny_model, out)
    assert run(score_cfg(lake), tiny_model, out).metrics["files_scored"] == 1  # released afterwards


def test_progress_and_manifest(tiny_model, tmp_path):
    lake, out = tmp_path / "lake", tmp_path / "out"
    make_lake(lake, files=2, rows=40)
    seen = []
    threads = torch.get_num_threads()
    result = run(score_cfg(lake, read_batch_rows=16, cpu_threads=threads + 1), tiny_model, out,
                 on_progress=lambda d, t: seen.append((d, t)))
    assert torch.get_num_threads() == threads  # scoring's thread setting does not leak into the process
    assert seen[-1] == (80, 80) and all(t == 80 for _, t in seen) and len(seen) > 2
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    manifest = read_manifest(out, "score")
    assert manifest["stage"] == "score" and len(manifest["files"]) == 2 and manifest["input_fingerprint"]
    assert manifest["metrics"]["rows_per_s"] > 0 and result.metrics["rows_scored"] == 80
    assert list((out / "_runs").glob("*.json"))


def test_cpu_threads_default_to_every_usable_core_and_the_key_overrides():
    from bertflow.bert_core.score.config import ScoreConfig
    from bertflow.bert_core.score.model import cpu_threads

    assert cpu_threads(ScoreConfig()) == len(os.sched_getaffinity(0))  # the tokenizer thread needs no core of its own
    assert cpu_threads(ScoreConfig(cpu_threads=3)) == 3


def test_input_column_clash_and_missing_column_are_clear_errors(tiny_model, tmp_path):
    write_parquet(tmp_path / "in.parquet", {"label": [1, 0], "text": ["good", "bad"]})
    with pytest.raises(InputError, match="'label' clashes with an output column.*output_prefix"):
        run(score_cfg(tmp_path / "in.parquet"), tiny_model, tmp_path / "out")
    run(score_cfg(tmp_path / "in.parquet", output_prefix="pred_"), tiny_model, tmp_path / "out2")
    assert pq.read_schema(tmp_path / "out2" / "in.parquet").names[:3] == ["label", "pred_label", "pred_score"]
    with pytest.raises(InputError, match="no column 'body'"):
        run(score_cfg(tmp_path / "in.parquet", text_column="body"), tiny_model, tmp_path / "out3")
    with pytest.raises(InputError, match="unknown column 'nope'"):
        run(score_cfg(tmp_path / "in.parquet", where="nope = 1", output_prefix="pred_"), tiny_model, tmp_path / "out4")


def test_filejob_round_trips_through_pickle(tiny_model, tmp_path):
    import pickle

    make_lake(tmp_path / "lake", files=1, rows=3)
    job = plan(score_cfg(tmp_path / "lake"), tmp_path / "out")[0]
    assert isinstance(job, FileJob) and pickle.loads(pickle.dumps(job)) == job
    assert job.rows == 3 and not job.committed and job.reason == "new"


def test_a_file_scorer_decides_only_where_files_are_scored(tiny_model, tmp_path):
    """Plan, model check, commit and manifest are run()'s whatever the scorer; results come back in any order."""
    import pickle
    from concurrent.futures import ThreadPoolExecutor

    lake = tmp_path / "lake"
    make_lake(lake, files=3, rows=10)
    (lake / "part-bad.parquet").write_bytes(b"not parquet" * 10)
    ran = []

    def last_first_in_a_thread(jobs, work, on_rows):  # reports finished files only, no rows within a file
        with ThreadPoolExecutor(1) as pool:
            for job in reversed(jobs):
                ran.append(job.rel_path)
                yield pool.submit(work, job).result()

    seen = []
    custom = run(score_cfg(lake), tiny_model, tmp_path / "custom", score_files=last_first_in_a_thread,
                 on_progress=lambda done, total: seen.append((done, total)))
    default = run(score_cfg(lake), tiny_model, tmp_path / "default")
    assert ran == ["part-bad.parquet", "part-002.parquet", "part-001.parquet", "part-000.parquet"]
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and seen[-1] == (30, 30)

    def same(f):
        return {k: v for k, v in f.to_dict().items() if k not in ("output", "seconds")}

    assert [same(f) for f in custom.files] == [same(f) for f in default.files]  # plan order, same fields and counts
    assert [f.status for f in custom.files] == ["scored"] * 3 + ["failed"] and "part-bad" in custom.failed[0].reason
    assert custom.metrics.keys() == default.metrics.keys() and custom.metrics["files_failed"] == 1
    assert read_scored(tmp_path / "custom").sort_by("id").equals(read_scored(tmp_path / "default").sort_by("id"))
    assert all(pickle.loads(pickle.dumps(f)) == f for f in custom.files)  # Prefect and Ray ship them
    assert custom.files[0].tokens > 0 and custom.files[-1].reason and not custom.files[0].reason
    with pytest.raises(RuntimeError, match="returned no result for .*part-000.parquet"):
        run(score_cfg(lake), tiny_model, tmp_path / "lost", score_files=lambda jobs, work, on_rows: [])


CHILD = textwrap.dedent("""
    import sys, time
    from bertflow.bert_core.score.config import ScoreConfig
    from bertflow.bert_core.score.stage import run
    lake, model, out, backend, cache = sys.argv[1:6]
    cfg = ScoreConfig(input=lake, batch_size=8, sort_window=2, max_length=32, device="cpu", cpu_threads=1,
                      backend=backend, min_agreement=0.0)
    run(cfg, model, out, on_progress=lambda done, total: time.sleep(0.15), cache_dir=cache)  # killed mid-run
""")


@pytest.mark.parametrize("backend", ["torch", "onnx-int8"])
def test_kill_during_run_then_rerun_is_exactly_once(tiny_model, tmp_path, backend):
    lake = tmp_path / "lake"
    make_lake(lake, files=12, rows=24, seed=5)
    out, ref, cache = tmp_path / "out", tmp_path / "ref", tmp_path / "onnx"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), str(lake), str(tiny_model), str(out), backend, str(cache)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if any(not p.name.startswith(".") for p in out.glob("*.parquet")):
            break
        time.sleep(0.01)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    committed = [p for p in out.glob("*.parquet") if not p.name.startswith(".")]
    assert 1 <= len(committed) < 12  # killed mid-run: some files done, others not
    (out / ".part-011.parquet.tmp-0123456789ab").write_bytes(b"half a file")  # a stale temp, as a crash leaves
    gate = {"backend": backend, "min_agreement": 0.0}  # the tiny random model's int8 fidelity: test_score_onnx.py
    again = run(score_cfg(lake, sort_window=2, **gate), tiny_model, out, cache_dir=cache)
    assert again.metrics["files_skipped"] == len(committed) and again.metrics["files_scored"] == 12 - len(committed)
    assert ".part-011.parquet.tmp-0123456789ab" in again.details["stale_temps_removed"]
    assert not [p for p in out.rglob(".*") if ".tmp-" in p.name]
    run(score_cfg(lake, sort_window=2, **gate), tiny_model, ref, cache_dir=cache)  # an uninterrupted run
    got, want = read_scored(out).sort_by("id"), read_scored(ref).sort_by("id")
    ids = got["id"].to_pylist()
    assert ids == list(range(12 * 24)) and len(set(ids)) == len(ids)  # no duplicate, no missing key
    assert got["label"].to_pylist() == want["label"].to_pylist()
    np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), atol=1e-6)


def test_where_on_30_daily_partitions_reads_one_partition(tiny_model, tmp_path):
    from tests.helpers import make_hive_lake

    lake = tmp_path / "lake"
    days = make_hive_lake(lake, days=30, rows=40, row_group_rows=10, seed=6)
    day = days[14]
    one_day = (lake / f"dt={day}" / "part-0.parquet").stat().st_size
    everything = run(score_cfg(lake), tiny_model, tmp_path / "all")
    picked = run(score_cfg(lake, where=f"dt = '{day}'"), tiny_model, tmp_path / "one")
    m, whole = picked.metrics, everything.metrics
    assert m["files"] == 1 and m["files_pruned"] == 29 and m["rows_in"] == 40 and m["rows_scored"] == 40
    # Only that partition's file was opened: its data, and its footer once more to plan.
    assert one_day * 0.8 <= m["bytes_read"] <= one_day * 1.5, (m["bytes_read"], one_day)
    assert m["bytes_read"] * 25 <= whole["bytes_read"] and whole["files_pruned"] == 0
    assert read_manifest(tmp_path / "one", "score")["metrics"]["bytes_read"] == m["bytes_read"]
    assert set(read_scored(tmp_path / "one")["dt"].to_pylist()) == {day}
    # Row groups: a condition on a sorted column skips those whose statistics rule it out, unread.
    first_id = read_scored(tmp_path / "one")["id"].to_pylist()[0]
    tail = run(score_cfg(lake, where=f"dt = '{day}' AND id >= {first_id + 30}"), tiny_model, tmp_path / "tail")
    assert tail.metrics["row_groups_skipped"] == 3 and tail.metrics["row_groups_read"] == 1
    assert tail.metrics["rows_scored"] == 10 and tail.metrics["rows_filtered"] == 30  # rows in = out + filtered
    assert tail.metrics["bytes_read"] < m["bytes_read"]


def test_an_output_holding_another_inputs_results_is_refused_unless_overwrite(tiny_model, tmp_path):
    from bertflow.bert_core.score.destination import job_name

    a, b, out = tmp_path / "a" / "lake", tmp_path / "b" / "lake", tmp_path / "out"
    make_lake(a, files=2, rows=5)
    make_lake(b, files=1, rows=6, seed=1)
    assert job_name(score_cfg(a)) != job_name(score_cfg(b))  # two lakes of one name: two default outputs
    assert job_name(score_cfg(a)).startswith("lake-") and job_name(score_cfg(a, job="nightly")) == "nightly"
    run(score_cfg(a), tiny_model, out)
    assert run(score_cfg(a, where="id > 2"), tiny_model, out).metrics["files_scored"] == 2  # same input: fine
    with pytest.raises(InputError, match=r"holds the results of another input \(.*/a/lake\).*--overwrite"):
        run(score_cfg(b), tiny_model, out)
    assert sorted(p.name for p in out.glob("*.parquet")) == ["part-000.parquet", "part-001.parquet"]  # untouched
    (out / "notes.txt").write_text("not ours")
    replaced = run(score_cfg(b, overwrite=True), tiny_model, out)
    assert "part-001.parquet" in replaced.details["overwritten"] and "manifest.json" in replaced.details["overwritten"]
    assert sorted(p.name for p in out.glob("*.parquet")) == ["part-000.parquet"]
    assert read_scored(out)["id"].to_pylist() == list(range(6)) and (out / "notes.txt").read_text() == "not ours"
    assert read_manifest(out, "score")["input"] == str(b.resolve())


@pytest.mark.parametrize("sort", [True, False])
def test_batches_cut_by_rows_and_padded_tokens(sort):
    from bertflow.bert_core.score.encode import cut_batches

    rng = np.random.default_rng(3)
    lengths = rng.integers(3, 120, size=200)
    order = np.argsort(-lengths, kind="stable") if sort else np.arange(200)
    assert [len(b) for b in cut_batches(lengths, order, 64)] == [64, 64, 64, 8]  # no cap: rows only
    batches = cut_batches(lengths, order, 16, max_tokens=600, pad_multiple=8)
    assert np.array_equal(np.concatenate(batches), order)  # every row once, in order
    for b in batches:
        width = -(-int(lengths[b].max()) // 8) * 8
        assert len(b) <= 16 and (len(b) * width <= 600 or len(b) == 1)
    assert len(batches) > len(cut_batches(lengths, order, 16))  # the cap cut some batches short
    lone = cut_batches(np.array([700, 5, 5]), np.arange(3), 16, max_tokens=600)
    assert [list(b) for b in lone] == [[0], [1, 2]]  # longer than the cap: a batch of its own
