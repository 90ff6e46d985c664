"""Disk and file faults: full disk, unwritable output, missing or truncated files, two runs at once.

Each fault must end in a clear :class:`BertflowError` naming the file at fault (never a raw
OSError, KeyError or SafetensorError traceback) and must leave what was there before exactly
as it was: output digests are taken before the faulty run and compared after it.

Disk full is injected for real: ``RLIMIT_FSIZE`` in a forked child (with ``SIGXFSZ`` ignored,
every write past the limit fails with EFBIG, as a full disk fails with ENOSPC), and, where this
process may mount file systems (root with CAP_SYS_ADMIN), a 512 KiB tmpfs that really fills up
(ENOSPC). Without mount rights those tests skip with the reason.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import random
import re
import resource
import shutil
import signal
import subprocess
import time
import traceback
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertflow.bert_core.errors import BertflowError, InputError
from bertflow.bert_core.ingest.config import IngestConfig
from bertflow.bert_core.ingest.reader import open_corpus
from bertflow.bert_core.ingest.stage import run as ingest
from bertflow.bert_core.mask.config import MaskConfig
from bertflow.bert_core.mask.stage import run as mask
from bertflow.bert_core.pretrain import checkpoint as ckpt
from bertflow.bert_core.pretrain.config import PretrainConfig
from bertflow.bert_core.pretrain.stage import run as pretrain
from bertflow.bert_core.pretrain.synthetic import write_masked_data, write_tokenizer
from bertflow.bert_core.score.commit import LOCK_NAME, output_lock
from bertflow.bert_core.score.config import ScoreConfig
from bertflow.bert_core.score.stage import plan, run as score, score_file
from bertflow.bert_core.stageio import dir_digest, file_digest
from tests.helpers import hidden_leftovers, make_lake, read_scored, synthetic_documents, train_wordpiece

_FORK = multiprocessing.get_context("fork")
LIMIT = 256 << 10  # the file-size limit of the "disk full" child: every output below is bigger than this


# one intra-op thread: cheaper here, and OpenMP is not fork-safe once it runs several
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --------------------------------------------------------------------------------------------- helpers


def _child(fn, conn, fsize: int | None) -> None:
    try:
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
        fn()
        conn.send(("ok", "", False, ""))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        conn.send(("raised", type(exc).__name__, isinstance(exc, BertflowError), f"{exc}\n{traceback.format_exc()}"))
    finally:
        os._exit(0)


def start_forked(fn, fsize: int | None = None):
    """Start ``fn`` in a forked child (with a file-size limit); returns the process and its result pipe."""
    recv, send = _FORK.Pipe(duplex=False)
    proc = _FORK.Process(target=_child, args=(fn, send, fsize), daemon=True)
    proc.start()
    send.close()
    return proc, recv


def run_forked(fn, fsize: int | None = None, timeout: float = 120) -> tuple[str, str, bool, str]:
    """Run ``fn`` in a forked child (with a file-size limit); ``(status, exc type, is BertflowError, message)``."""
    proc, recv = start_forked(fn, fsize)
    try:
        if not recv.poll(timeout):
            raise AssertionError(f"the child ran for more than {timeout} s (a hang?)")
        return recv.recv()
    finally:
        proc.kill()
        proc.join()


def _hold(enter, ready: Path) -> None:
    with enter():
        ready.write_text(str(os.getpid()))
        time.sleep(600)


@contextlib.contextmanager
def held_by_another_process(enter, ready: Path):
    """A forked child that enters ``enter()`` (a lock) and sleeps; yields it, SIGKILLs it afterwards."""
    proc = _FORK.Process(target=_hold, args=(enter, ready), daemon=True)
    proc.start()
    try:
        deadline = time.time() + 60
        while not ready.exists():
            assert proc.is_alive() and time.time() < deadline, "the lock holder did not start"
            time.sleep(0.01)
        yield proc
    finally:
        proc.kill()
        proc.join()


def write_jsonl(path: Path, n_docs: int, words: int = 60, seed: int = 0) -> Path:
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for _ in range(n_docs):
            fh.write(json.dumps({"text": " ".join(f"w{rng.randrange(10**6)}" for _ in range(words))}) + "\n")
    return path


def rx(path) -> str:
    """A path as a regular expression that matches just it (for ``pytest.raises(match=...)``)."""
    return re.escape(str(path))


def mount_tmpfs(target: Path, options: str) -> None:
    """Mount a tmpfs at ``target`` or skip: it needs root and CAP_SYS_ADMIN (a container may not have it)."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (and CAP_SYS_ADMIN)")
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def umount(target: Path) -> None:
    if subprocess.run(["umount", str(target)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def small_fs(tmp_path):
    """A 512 KiB tmpfs that fills up for real (ENOSPC)."""
    mnt = tmp_path / "small-fs"
    mount_tmpfs(mnt, "size=512k")
    try:
        yield mnt
    finally:
        umount(mnt)


def scfg(lake: Path, **kw) -> ScoreConfig:
    # One thread: scoring's own default (every core) would start OpenMP's pool in this process, and a forked
    # child that then runs several threads hangs (OpenMP is not fork-safe once its pool exists).
    return ScoreConfig(input=str(lake), device="cpu", max_length=16, batch_size=8, cpu_threads=1, **kw)


def big_lake_file(path: Path, rows: int = 40, blob_kb: int = 16) -> Path:
    """Few rows (cheap to score) with incompressible bytes carried along: an output bigger than LIMIT."""
    rng = random.Random(1)
    blobs = [rng.randbytes(blob_kb << 10) for _ in range(rows)]
    pq.write_table(pa.table({"id": list(range(10_000, 10_000 + rows)), "text": ["good film"] * rows,
                             "blob": pa.array(blobs, pa.binary())}), path)
    return path


# ============================================================================================ disk full


def test_disk_full_during_ingest_is_one_clear_error_and_keeps_the_old_corpus(tmp_path):
    out = tmp_path / "corpus"
    ingest(IngestConfig(inputs=(str(write_jsonl(tmp_path / "small.jsonl", 5)),), workers=1), out)
    before = dir_digest(out)
    big = write_jsonl(tmp_path / "big.jsonl", 3000)
    cfg = IngestConfig(inputs=(str(big),), workers=1, compression="none")
    status, kind, clear, msg = run_forked(lambda: ingest(cfg, out), fsize=LIMIT)
    assert status == "raised" and clear and kind == "InputError", msg
    assert msg.startswith(f"no space left writing {out}"), msg
    assert dir_digest(out) == before and hidden_leftovers(tmp_path) == []
    ingest(cfg, out)  # with room again the same run works
    assert dir_digest(out) != before


def test_disk_full_while_decompressing_an_input_is_not_blamed_on_the_input(tmp_path):
    """A .parquet.gz is decompressed to a temp file first; a full temp disk must not mark the input corrupt."""
    import gzip

    table = pa.table({"text": ["a long enough document number %d " % i * 20 for i in range(2000)]})
    pq.write_table(table, tmp_path / "plain.parquet", compression="none")
    packed = tmp_path / "in.parquet.gz"
    packed.write_bytes(gzip.compress((tmp_path / "plain.parquet").read_bytes()))
    assert packed.stat().st_size < LIMIT < (tmp_path / "plain.parquet").stat().st_size
    out = tmp_path / "corpus"
    cfg = IngestConfig(inputs=(str(packed),), workers=1)
    status, kind, clear, msg = run_forked(lambda: ingest(cfg, out), fsize=LIMIT)
    assert status == "raised" and clear, msg
    assert msg.startswith("no space left writing") and f"decompressed copy of {packed}" in msg, msg
    assert not out.exists()


def test_disk_full_during_scoring_keeps_committed_files_and_leaves_no_temp(tiny_model, tmp_path):
    lake, out = tmp_path / "lake", tmp_path / "scores"
    make_lake(lake, files=1, rows=20)
    score(scfg(lake), tiny_model, out)
    committed = {p.name: file_digest(p) for p in [*out.glob("*.parquet"), out / "manifest.json"]}
    big_lake_file(lake / "part-900.parquet")
    status, kind, clear, msg = run_forked(lambda: score(scfg(lake), tiny_model, out), fsize=LIMIT)
    assert status == "raised" and clear, msg
    assert msg.startswith(f"no space left writing {out / 'part-900.parquet'}"), msg
    assert {p: file_digest(out / p) for p in committed} == committed
    assert not (out / "part-900.parquet").exists() and hidden_leftovers(out) == []
    again = score(scfg(lake), tiny_model, out)  # with room again: the new file scored, the old one skipped
    assert again.metrics["files_scored"] == 1 and again.metrics["files_skipped"] == 1
    assert read_scored(out).num_rows == 20 + 40


def test_real_enospc_on_a_full_filesystem(small_fs, tiny_model, tmp_path):
    free_before = shutil.disk_usage(small_fs).free
    out = small_fs / "corpus"
    ingest(IngestConfig(inputs=(str(write_jsonl(tmp_path / "small.jsonl", 5)),), workers=1), out)
    before = dir_digest(out)
    cfg = IngestConfig(inputs=(str(write_jsonl(tmp_path / "big.jsonl", 3000)),), workers=1, compression="none")
    with pytest.raises(InputError, match=f"^no space left writing {rx(out)} .*No space left on device"):
        ingest(cfg, out)
    assert dir_digest(out) == before and hidden_leftovers(small_fs) == []

    lake, scores = tmp_path / "lake", small_fs / "scores"
    make_lake(lake, files=1, rows=10)
    score(scfg(lake), tiny_model, scores)
    committed = dir_digest(scores, "*.parquet")
    big_lake_file(lake / "part-900.parquet")
    with pytest.raises(InputError, match=f"^no space left writing {rx(scores / 'part-900.parquet')}"):
        score(scfg(lake), tiny_model, scores)
    assert dir_digest(scores, "*.parquet") == committed and hidden_leftovers(small_fs) == []
    shutil.rmtree(out)
    shutil.rmtree(scores)
    assert shutil.disk_usage(small_fs).free == free_before  # nothing hidden left taking space


# =================================================================================== unwritable output


def _ingest_cfg(tmp_path: Path) -> IngestConfig:
    return IngestConfig(inputs=(str(write_jsonl(tmp_path / "in.jsonl", 3)),), workers=1)


def test_output_under_a_regular_file_is_a_clear_error(tiny_model, tmp_path):
    """Works for root too: no permission bits involved, a file sits where a directory must be."""
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    with pytest.raises(InputError, match=f"cannot create output directory {rx(blocker)}"):
        ingest(_ingest_cfg(tmp_path), blocker / "corpus")
    make_lake(tmp_path / "lake", files=1, rows=3)
    with pytest.raises(InputError, match=f"cannot create score output directory {rx(blocker / 'scores')}"):
        score(scfg(tmp_path / "lake"), tiny_model, blocker / "scores")
    assert blocker.read_text() == "not a directory"


def test_output_path_that_is_a_file_is_refused_not_moved_aside(tiny_model, tmp_path):
    """Bug: atomic_dir swapped its new directory with the user's file, which ended up hidden."""
    target = tmp_path / "notes.txt"
    target.write_text("my notes")
    with pytest.raises(InputError, match=f"output {rx(target)} exists and is not a directory"):
        ingest(_ingest_cfg(tmp_path), target)
    make_lake(tmp_path / "lake", files=1, rows=3)
    with pytest.raises(InputError, match=f"score output directory {rx(target)}"):
        score(scfg(tmp_path / "lake"), tiny_model, target)
    assert target.read_text() == "my notes" and hidden_leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permission bits; the read-only mount test covers root")
def test_read_only_output_directory_is_a_clear_error(tiny_model, tmp_path):
    ro = tmp_path / "ro"
    (ro / "scores").mkdir(parents=True)
    ro.chmod(0o555)
    (ro / "scores").chmod(0o555)
    try:
        with pytest.raises(InputError, match=f"output directory {rx(ro)} is not writable"):
            ingest(_ingest_cfg(tmp_path), ro / "corpus")
        make_lake(tmp_path / "lake", files=1, rows=3)
        with pytest.raises(InputError, match=f"lock file {rx(ro / 'scores' / LOCK_NAME)}.*not writable"):
            score(scfg(tmp_path / "lake"), tiny_model, ro / "scores")
    finally:
        (ro / "scores").chmod(0o755)
        ro.chmod(0o755)


def test_read_only_mount_is_a_clear_error_even_for_root(tiny_model, tmp_path):
    """Bug: the score lock's file could not be created and a raw OSError escaped (EROFS / EACCES)."""
    mnt = tmp_path / "ro-fs"
    mount_tmpfs(mnt, "size=64k")
    try:
        (mnt / "scores").mkdir()
        (mnt / "scores" / "old.parquet").write_bytes(b"an earlier output")
        done = subprocess.run(["mount", "-o", "remount,ro", str(mnt)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot remount read-only: {done.stderr.strip()}")
        before = dir_digest(mnt)
        with pytest.raises(InputError, match=f"output directory {rx(mnt)} is not writable"):
            ingest(_ingest_cfg(tmp_path), mnt / "corpus")
        make_lake(tmp_path / "lake", files=1, rows=3)
        with pytest.raises(InputError, match=f"lock file {rx(mnt / 'scores' / LOCK_NAME)}.*not writable"):
            score(scfg(tmp_path / "lake"), tiny_model, mnt / "scores")
        with pytest.raises(InputError, match=f"cannot create score output directory {rx(mnt / 'new')}"):
            score(scfg(tmp_path / "lake"), tiny_model, mnt / "new")
        assert dir_digest(mnt) == before
    finally:
        umount(mnt)


# ================================================================================ missing / cut shards


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A real ingest output with several shards, its tokenizer, and a good masked-data output."""
    root = tmp_path_factory.mktemp("corpus")
    docs = synthetic_documents(120, seed=3)
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    ingest(IngestConfig(inputs=(str(root / "docs.jsonl"),), workers=1, shard_max_mb=0.01), root / "corpus")
    tok = train_wordpiece(root / "tok", docs, vocab_size=400)
    return root, tok


def _damage(path: Path, how: str) -> None:
    if how == "deleted":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_mask_names_a_missing_or_cut_corpus_shard_and_keeps_its_old_output(corpus, tmp_path, how):
    root, tok = corpus
    shards = [s.path for s in open_corpus(root / "corpus").shards]
    assert len(shards) >= 3
    damaged = tmp_path / "corpus"
    shutil.copytree(root / "corpus", damaged)
    out = tmp_path / "masked"
    cfg = MaskConfig(num_workers=1, max_seq_length=32, max_predictions_per_seq=5)
    mask(cfg, damaged, tok, out)
    before = dir_digest(out)
    victim = damaged / shards[len(shards) // 2].name
    _damage(victim, how)
    with pytest.raises(InputError, match=f"corpus shard {rx(victim)} (is listed in .* but missing|is not a readable)"):
        mask(cfg, damaged, tok, out)
    assert dir_digest(out) == before and hidden_leftovers(tmp_path) == []


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    root = tmp_path_factory.mktemp("masked")
    return write_masked_data(root / "data", 600, 32, 300, rows_per_shard=150), write_tokenizer(root / "tok", 300)


TINY = PretrainConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_position_embeddings=64,
                      batch_size=16, lr=2e-3, warmup_steps=5, max_steps=30, device="cpu", num_workers=0,
                      log_every=10, checkpoint_every=10, keep_checkpoints=3, seed=7)


@pytest.mark.parametrize("how", ["deleted", "truncated"])
def test_pretrain_names_a_missing_or_cut_masked_shard_before_training(masked, tmp_path, how):
    data, tok = masked
    damaged = tmp_path / "data"
    shutil.copytree(data, damaged)
    victim = damaged / "shard-00002.parquet"
    _damage(victim, how)
    with pytest.raises(InputError, match=f"masked-data shard {rx(victim)}"):
        pretrain(TINY, damaged, tok, tmp_path / "run")
    assert not (tmp_path / "run" / ckpt.CHECKPOINTS).exists()  # refused up front: no training, no checkpoint


def test_lake_file_vanishing_between_listing_and_reading_is_named(tiny_model, tmp_path):
    lake, out = tmp_path / "lake", tmp_path / "scores"
    make_lake(lake, files=3, rows=6)
    job = plan(scfg(lake), out)[1]
    Path(job.input_path).unlink()
    with pytest.raises(InputError, match=f"{rx(job.input_path)}: not a readable Parquet file"):
        score_file(scfg(lake), job, tiny_model)
    # The same race inside one run: the next file goes while the first is being scored.
    make_lake(lake, files=3, rows=6)
    doomed = lake / "part-002.parquet"
    result = score(scfg(lake), tiny_model, out, on_progress=lambda done, total: doomed.unlink(missing_ok=True))
    assert [f.input for f in result.failed] == ["part-002.parquet"]
    assert str(doomed) in result.failed[0].reason
    assert result.metrics["files_scored"] == 2 and read_scored(out).num_rows == 12 and hidden_leftovers(out) == []


# ======================================================================================= cut weights


@pytest.fixture(scope="module")
def trained(masked, tmp_path_factory):
    """A finished 30-step run with checkpoints at steps 10, 20 and 30."""
    data, tok = masked
    out = tmp_path_factory.mktemp("pretrain") / "run"
    pretrain(TINY, data, tok, out)
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-0000010", "step-0000020", "step-0000030"]
    return out


@pytest.mark.parametrize("name", [ckpt.MODEL_FILE, ckpt.OPTIMIZER_FILE, ckpt.RNG_FILE, ckpt.STATE_FILE])
def test_truncated_latest_checkpoint_is_named_and_never_a_silent_restart(masked, trained, tmp_path, name):
    data, tok = masked
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    older = {p.name: dir_digest(p) for p in ckpt.list_checkpoints(out)[:-1]}
    export = dir_digest(out / "export")
    latest = ckpt.list_checkpoints(out)[-1]
    victim = latest / name
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    cut = file_digest(victim)
    with pytest.raises(InputError, match=f"{rx(victim)} is (truncated or )?corrupt.*delete {rx(latest)} to resume"):
        pretrain(TINY, data, tok, out)
    assert {p.name: dir_digest(p) for p in ckpt.list_checkpoints(out)[:-1]} == older  # older checkpoints intact
    assert file_digest(victim) == cut and dir_digest(out / "export") == export  # nothing rewritten
    if name == ckpt.MODEL_FILE:  # following the message's advice resumes from the one before, not from scratch
        shutil.rmtree(latest)
        result = pretrain(TINY, data, tok, out)
        assert result.details["resumed_from_step"] == 20 and result.metrics["steps"] == 30
        assert dir_digest(out / ckpt.CHECKPOINTS / "step-0000010") == older["step-0000010"]


def test_disk_full_while_saving_a_checkpoint_keeps_the_older_ones(masked, trained, tmp_path):
    data, tok = masked
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    shutil.rmtree(out / ckpt.CHECKPOINTS / "step-0000030")  # resume from step 20; step 30 is saved again
    older = {p.name: dir_digest(p) for p in ckpt.list_checkpoints(out)}
    status, kind, clear, msg = run_forked(lambda: pretrain(TINY, data, tok, out), fsize=LIMIT)
    assert status == "raised" and clear, msg
    assert msg.startswith(f"no space left writing {out / ckpt.CHECKPOINTS / 'step-0000030'}"), msg
    assert {p.name: dir_digest(p) for p in ckpt.list_checkpoints(out)} == older and hidden_leftovers(out) == []
    assert pretrain(TINY, data, tok, out).details["resumed_from_step"] == 20  # with room again it goes on


def _cut_copy(model_dir: Path, dest: Path) -> Path:
    shutil.copytree(model_dir, dest)
    weights = dest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return weights


def test_truncated_model_weights_for_finetune_and_score_are_named(tiny_model, tmp_path):
    """Bug: both raised a raw safetensors SafetensorError; scoring also marked every input file failed."""
    from bertflow.bert_core.finetune.config import FinetuneConfig
    from bertflow.bert_core.finetune.stage import run as finetune

    weights = _cut_copy(tiny_model, tmp_path / "model")
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"good film {i},pos\nbad film {i},neg\n" for i in range(10)))
    cfg = FinetuneConfig(train_path=str(train), device="cpu", epochs=1, num_threads=1)
    with pytest.raises(InputError, match=f"weights file {rx(weights)} is truncated or corrupt"):
        finetune(cfg, weights.parent, tmp_path / "finetuned")
    assert not (tmp_path / "finetuned").exists()
    make_lake(tmp_path / "lake", files=2, rows=3)
    with pytest.raises(InputError, match=f"weights file {rx(weights)} is truncated or corrupt"):
        score(scfg(tmp_path / "lake"), weights.parent, tmp_path / "scores")
    assert not list((tmp_path / "scores").glob("*.parquet"))


# ======================================================================================= two at once

SLOW = 0.2  # seconds per progress callback of the first run: it holds the lock while the second one tries


def test_two_score_runs_at_once_one_refuses_naming_the_lock(tiny_model, tmp_path):
    lake, out, ref = tmp_path / "lake", tmp_path / "scores", tmp_path / "reference"
    make_lake(lake, files=4, rows=16, seed=2)
    started = tmp_path / "first-started"

    def first_run():
        def progress(done, total):
            started.touch()
            time.sleep(SLOW)
        score(scfg(lake, read_batch_rows=4), tiny_model, out, on_progress=progress)

    proc, recv = start_forked(first_run)
    try:
        deadline = time.time() + 60
        while not started.exists():
            assert proc.is_alive() and time.time() < deadline
            time.sleep(0.01)
        refused = f"another scoring run holds the lock on {rx(out)} \\({rx(out / LOCK_NAME)}\\)"
        with pytest.raises(InputError, match=refused):
            score(scfg(lake), tiny_model, out)
        assert recv.poll(120), "the first run did not finish"
        status, kind, _, msg = recv.recv()
        assert status == "ok", msg
    finally:
        proc.kill()
        proc.join()
    score(scfg(lake), tiny_model, ref)  # an undisturbed run: the first one's output must equal it
    got, want = read_scored(out).sort_by("id"), read_scored(ref).sort_by("id")
    assert got["id"].to_pylist() == list(range(64)) and got["label"].to_pylist() == want["label"].to_pylist()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["metrics"]["files_scored"] == 4 and not manifest["failed"] and hidden_leftovers(out) == []


def test_stale_score_lock_of_a_killed_run_does_not_block(tiny_model, tmp_path):
    lake, out = tmp_path / "lake", tmp_path / "scores"
    make_lake(lake, files=1, rows=4)
    with held_by_another_process(lambda: output_lock(out), tmp_path / "ready"):
        with pytest.raises(InputError, match="another scoring run holds the lock"):
            score(scfg(lake), tiny_model, out)
    assert (out / LOCK_NAME).exists()  # the dead holder's lock file is still there...
    assert score(scfg(lake), tiny_model, out).metrics["files_scored"] == 1  # ...and does not block (no wait: it
    # would refuse at once, as above, if the dead holder's lock still counted)


def test_workspace_lock_refuses_a_second_pipeline_before_mlflow_and_a_dead_holder_does_not_block(
        prefect_harness, tmp_path):
    """Two pipelines on one workspace: the second refuses naming the lock, the MLflow store is untouched."""
    from bertflow.api import run_pipeline
    from bertflow.flows.workspace import Workspace
    from bertflow.tasks import tracking

    ws = tmp_path / "ws"
    docs = write_jsonl(tmp_path / "docs.jsonl", 20)
    overrides = [f'ingest.inputs=["{docs}"]', "ingest.workers=1"]
    run_pipeline(overrides=overrides, workspace=ws, stages=["ingest"])
    store = {p.name: file_digest(p) for p in ws.glob("mlflow.db*")}
    corpus = dir_digest(ws / "ingest")
    assert store
    with held_by_another_process(lambda: Workspace(ws).locked(), tmp_path / "ready"):
        refused = f"another bertflow run is using workspace {rx(ws)} \\(lock {rx(ws / '.bertflow.lock')}\\)"
        with pytest.raises(InputError, match=refused):
            run_pipeline(overrides=overrides, workspace=ws, stages=["ingest"])
        assert {p.name: file_digest(p) for p in ws.glob("mlflow.db*")} == store
        assert dir_digest(ws / "ingest") == corpus
    run_pipeline(overrides=overrides, workspace=ws, stages=["ingest"])  # the killed holder's lock does not block
    client = tracking.client(f"sqlite:///{ws / 'mlflow.db'}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs and all(r.info.status == "FINISHED" for r in runs)
    assert len([r for r in runs if r.info.run_name == "ingest"]) == 2  # the refused attempt logged nothing


def test_disk_full_in_the_mapped_prefect_scoring_task_is_one_clear_error(tiny_model, tmp_path):
    """The Ray/Prefect path scores files in tasks: a full disk in the task's body becomes the same clear line.

    The body is called directly (``.fn``) in a forked child under a file-size limit; that Prefect does not
    retry such an error (an InputError) is shown with a real flow in ``test_orchestration``.
    """
    from bertflow.bert_core.score.stage import FileWork, plan
    from bertflow.tasks.score_files import score_file_task

    lake, out = tmp_path / "lake", tmp_path / "scores"
    lake.mkdir()
    big_lake_file(lake / "part-0.parquet")
    out.mkdir()
    (job,) = plan(scfg(lake), out, model_dir=tiny_model)
    status, kind, clear, msg = run_forked(lambda: score_file_task.fn(FileWork(scfg(lake), str(tiny_model)), job),
                                          fsize=LIMIT)
    assert status == "raised" and clear, msg
    assert msg.startswith(f"no space left writing {out / 'part-0.parquet'}"), msg
    assert hidden_leftovers(out) == []
