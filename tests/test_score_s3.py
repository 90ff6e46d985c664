"""Data lakes in an object store: a real S3-compatible server (moto's, on 127.0.0.1) reached by the same client
code a real bucket uses (pyarrow's S3FileSystem, pointed at it by AWS_ENDPOINT_URL). Nothing of ours is mocked."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from bertflow.bert_core.errors import ConfigError, InputError
from bertflow.bert_core.score.commit import read_commit
from bertflow.bert_core.score.lease import LeaseLock
from bertflow.bert_core.score.stage import output_dataset, read_run_manifest, run
from bertflow.bert_core.storage import locate
from tests.helpers import REPO, S3_ENV, S3_SECRET, make_hive_lake, make_lake, read_scored, score_cfg

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def visible(bucket, prefix: str) -> list[str]:
    """Output objects as a reader's ``*.parquet`` glob sees them."""
    return [k for k in bucket.keys(prefix) if k.endswith(".parquet")
            and not any(p.startswith((".", "_")) for p in k[len(prefix):].strip("/").split("/"))]


def test_a_hive_lake_is_scored_from_one_bucket_prefix_to_another(s3, tiny_model, tmp_path):
    local = tmp_path / "lake"
    make_hive_lake(local, days=3, rows=30, row_group_rows=10, seed=3)
    s3.upload(local, "lake")
    result = run(score_cfg(s3.uri("lake/")), tiny_model, s3.uri("scored/"))
    assert result.path == s3.uri("scored") and result.metrics["files_scored"] == 3
    assert visible(s3, "scored") == ["scored/dt=2026-11-01/part-0.parquet", "scored/dt=2026-11-02/part-0.parquet",
                                     "scored/dt=2026-11-03/part-0.parquet"]
    got = read_scored(s3.uri("scored/")).sort_by("id")  # read back through pyarrow.dataset on the bucket
    local_run = tmp_path / "local"
    run(score_cfg(local), tiny_model, local_run)  # the same lake from the local disk
    want = read_scored(local_run).sort_by("id")
    assert got["id"].to_pylist() == list(range(90))  # rows in = rows out
    assert got["label"].to_pylist() == want["label"].to_pylist()
    np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), atol=1e-6)
    manifest = read_run_manifest(s3.uri("scored"))
    assert manifest["input"] == s3.uri("lake") and manifest["metrics"]["bytes_read"] > 0
    local_manifest = json.loads((local_run / "manifest.json").read_text())
    assert manifest["metrics"]["bytes_read"] == local_manifest["metrics"]["bytes_read"]  # the same reads, counted alike
    for key in visible(s3, "scored"):
        assert read_commit(s3.uri(key))["rows_out"] == 30
    assert not [k for k in s3.keys() if ".tmp-" in k or "/.score.lock/" in k]  # no temp object, lock released
    again = run(score_cfg(s3.uri("lake/"), where="dt >= '2026-11-02' AND lang = 'en'"), tiny_model, s3.uri("en/"))
    assert again.metrics["files_pruned"] == 1 and again.metrics["files_scored"] == 2
    en = output_dataset(s3.uri("en")).to_table()
    src = pq.read_table(local / "dt=2026-11-02").to_pylist() + pq.read_table(local / "dt=2026-11-03").to_pylist()
    assert sorted(en["id"].to_pylist()) == sorted(r["id"] for r in src if r["lang"] == "en")
    assert run(score_cfg(s3.uri("lake/")), tiny_model, s3.uri("scored/")).metrics["files_skipped"] == 3


CHILD = textwrap.dedent("""
    import sys, time
    from bertflow.bert_core.score.config import ScoreConfig
    from bertflow.bert_core.score.stage import run
    lake, model, out = sys.argv[1:4]
    cfg = ScoreConfig(input=lake, batch_size=8, sort_window=2, max_length=32, device="cpu", cpu_threads=1)
    run(cfg, model, out, on_progress=lambda done, total: time.sleep(0.15))  # slow enough to be killed mid-run
""")


def test_kill_9_on_s3_then_rerun_is_exactly_once_and_a_concurrent_run_refuses(s3, tiny_model, tmp_path):
    local = tmp_path / "lake"
    make_lake(local, files=12, rows=24, seed=5)
    lake, out = s3.upload(local, "lake"), s3.uri("scored")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), lake, str(tiny_model), out], cwd=REPO, env=os.environ.copy(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not visible(s3, "scored"):
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        with pytest.raises(InputError, match="another scoring run holds the lock on .*scored"):
            run(score_cfg(lake, sort_window=2), tiny_model, out)  # a second run on the same bucket prefix
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    committed = visible(s3, "scored")
    assert 1 <= len(committed) < 12  # killed mid-run: some files done, others not
    for key in committed:  # whatever is visible is whole and committed
        record = read_commit(s3.uri(key))
        assert record is not None and pq.read_metadata(s3.uri(key).removeprefix("s3://"),
                                                       filesystem=s3.fs).num_rows == record["rows_out"] == 24
    with s3.fs.open_output_stream(f"{s3.name}/scored/.part-011.parquet.tmp-0123456789ab") as fh:
        fh.write(b"half a file")  # a stale temporary object, as a crash leaves
    again = run(score_cfg(lake, sort_window=2), tiny_model, out)  # the dead run's lease does not block
    assert again.metrics["files_skipped"] == len(committed) and again.metrics["files_scored"] == 12 - len(committed)
    assert ".part-011.parquet.tmp-0123456789ab" in again.details["stale_temps_removed"]
    assert not [k for k in s3.keys() if ".tmp-" in k or "/.score.lock/" in k]
    run(score_cfg(local, sort_window=2), tiny_model, tmp_path / "ref")  # an uninterrupted run
    got, want = read_scored(out).sort_by("id"), read_scored(tmp_path / "ref").sort_by("id")
    ids = got["id"].to_pylist()
    assert ids == list(range(12 * 24)) and len(set(ids)) == len(ids)  # no duplicate, no missing key
    assert got["label"].to_pylist() == want["label"].to_pylist()
    np.testing.assert_allclose(got["score"].to_numpy(), want["score"].to_numpy(), atol=1e-6)


def test_the_lease_refuses_a_live_holder_and_takes_over_a_dead_or_expired_one(s3):
    prefix = locate(s3.uri("out/.score.lock"))

    def claim(name: str, **body) -> None:
        prefix.child(name).write_bytes(json.dumps(body).encode())

    claim("0-live.json", host="elsewhere", pid=1, lease_s=60)
    with pytest.raises(InputError, match=r"another scoring run holds the lock .*host elsewhere"):
        with LeaseLock(prefix):
            pass
    assert s3.keys("out") == ["out/.score.lock/0-live.json"]  # the refused run took its own claim back
    prefix.child("0-live.json").delete()
    gone = subprocess.Popen(["true"])
    gone.wait()
    claim("1-dead.json", host=socket.gethostname(), pid=gone.pid, started=1.0, lease_s=60)  # a kill -9'd run here
    claim("2-old.json", host="elsewhere", pid=1, lease_s=1)  # a crashed run elsewhere whose lease ran out
    time.sleep(2.5)  # by the store's clock: claims are judged by their modification times, not ours
    with LeaseLock(prefix) as lock:
        assert s3.keys("out") == [f"out/.score.lock/{lock.id}.json"]  # both dead claims taken over
        lock.check()
    assert s3.keys("out") == []
    with LeaseLock(prefix, lease_s=0.4) as lock:  # a stalled holder whose claim a successor removed
        prefix.child(f"{lock.id}.json").delete()
        deadline = time.time() + 10
        while lock._lost is None and time.time() < deadline:
            time.sleep(0.05)
        with pytest.raises(InputError, match="was taken over"):
            lock.check()


def test_ingest_reads_a_corpus_from_the_bucket(s3, tmp_path):
    from bertflow.bert_core.ingest.config import IngestConfig
    from bertflow.bert_core.ingest.stage import run as ingest
    from tests.helpers import corpus_column, synthetic_documents

    docs = synthetic_documents(30, seed=4)
    local = tmp_path / "corpus"
    (local / "part").mkdir(parents=True)
    (local / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:20]))
    (local / "part" / "b.txt").write_text("\n\n".join(docs[20:]))
    (local / "_SUCCESS").write_text("")  # side files are skipped as they are locally
    s3.upload(local, "corpus")
    cfg = dict(workers=1, txt_mode="blank_line")
    from_s3 = ingest(IngestConfig(inputs=(s3.uri("corpus/"),), **cfg), tmp_path / "from-s3")
    from_disk = ingest(IngestConfig(inputs=(str(local),), **cfg), tmp_path / "from-disk")
    assert from_s3.metrics["docs_out"] == from_disk.metrics["docs_out"] >= 25
    assert corpus_column(tmp_path / "from-s3", "text") == corpus_column(tmp_path / "from-disk", "text")
    assert corpus_column(tmp_path / "from-s3", "doc_id") == corpus_column(tmp_path / "from-disk", "doc_id")
    assert set(corpus_column(tmp_path / "from-s3", "source")) == {s3.uri("corpus/a.jsonl"), s3.uri("corpus/part/b.txt")}
    manifest = json.loads((tmp_path / "from-s3" / "manifest.json").read_text())
    assert sorted(f["path"] for f in manifest["inputs"]) == [s3.uri("corpus/a.jsonl"), s3.uri("corpus/part/b.txt")]
    assert manifest["skipped"] == [] and all(f["sha256"] for f in manifest["inputs"])


def test_credentials_stay_out_of_configs_mlflow_prefect_and_manifests(s3, prefect_harness, tiny_model, tmp_path):
    import bertflow
    from prefect.settings import get_current_settings

    local = tmp_path / "lake"
    make_hive_lake(local, days=2, rows=10, seed=2)
    lake = s3.upload(local, "lake")
    with pytest.raises(ConfigError, match=r"score.input: s3://\*\*\*@.*credentials in a URI are refused"):
        bertflow.score(f"s3://AKIAEXAMPLE:{S3_SECRET}@{s3.name}/lake", tiny_model, workspace=tmp_path / "ws0")
    ws = tmp_path / "ws"
    first = bertflow.score(lake, tiny_model, output=s3.uri("scored"), workspace=ws, device="cpu", max_length=32)
    assert first.metrics["rows_scored"] == 20 and first.path == s3.uri("scored")
    again = bertflow.score(lake, tiny_model, output=s3.uri("scored"), workspace=ws, device="cpu", max_length=32)
    assert again.reused  # the stage's reuse record lives on the bucket too
    from bertflow.tasks import tracking

    run_ = tracking.client(f"sqlite:///{ws / 'mlflow.db'}").get_run(first.run_id)
    assert run_.data.params["input"] == lake and "manifest.json" in {
        a.path for a in tracking.client(f"sqlite:///{ws / 'mlflow.db'}").list_artifacts(first.run_id)}
    secrets = [S3_SECRET.encode(), S3_ENV["AWS_ACCESS_KEY_ID"].encode()]
    stores = [p for p in ws.rglob("*") if p.is_file()]
    db = get_current_settings().server.database.connection_url.get_secret_value()
    if db.startswith("sqlite"):
        stores += [p for p in Path(db.split("///", 1)[1]).parent.glob("*") if p.is_file()]
    stores += [p for p in Path(os.environ["PREFECT_HOME"]).rglob("*") if p.is_file()]
    assert len(stores) > 5 and any(p.name == "mlflow.db" for p in stores)
    leaked = [str(p) for p in stores if any(s in p.read_bytes() for s in secrets)]
    leaked += [k for k in s3.keys("scored") if any(s in locate(s3.uri(k)).read_bytes() for s in secrets)]
    assert not leaked, f"credentials found in {leaked}"


def test_stage_reuse_fingerprints_a_bucket_prefix_by_its_listing(s3, tmp_path):
    from bertflow.tasks import reuse

    make_lake(tmp_path / "lake", files=2, rows=4)
    lake = s3.upload(tmp_path / "lake", "lake")
    first = reuse.fingerprint(lake)
    assert first.startswith("listing:") and reuse.fingerprint(lake) == first
    one = reuse.fingerprint(s3.uri("lake/part-000*"))  # a glob: the objects it matches
    assert one.startswith("listing:") and one != first
    make_lake(tmp_path / "lake", files=2, rows=5)  # the same keys, rewritten
    s3.upload(tmp_path / "lake", "lake")
    assert reuse.fingerprint(lake) != first
    reuse.save(s3.uri("out"), "k1", {"stage": "score"})
    assert reuse.fingerprint(s3.uri("out")) == "stage:k1"  # a stage output is known by its reuse key
