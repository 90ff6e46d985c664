"""The CLI as a user meets it: one clear error line and exit 2 for mistakes, outputs left intact."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port


def bertflow(args, cwd, env_extra=None, timeout=240):
    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "bertflow", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def api_env(prefect_harness):
    """Subprocesses share the harness's real Prefect API instead of each starting a server."""
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": PREFECT_API_URL.value()}


def assert_clean_error(proc, fragment):
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert fragment in errors[0], errors[0]


def test_help_for_every_command(repo_root):
    for cmd in ["--help", "pipeline --help", "ingest --help", "score --help"]:
        proc = bertflow(cmd.split(), repo_root)
        assert proc.returncode == 0, proc.stderr
        assert "Usage" in proc.stdout


def test_unknown_config_key_is_rejected_before_anything_runs(repo_root, tmp_path):
    proc = bertflow(["pipeline", "-c", "configs/tiny.yaml", "--set", "vocab.vocab_sise=10", "-w", str(tmp_path)], repo_root)
    assert_clean_error(proc, "vocab.vocab_sise")
    assert not (tmp_path / "mlflow.db").exists()


def test_missing_config_file(repo_root, tmp_path):
    assert_clean_error(bertflow(["ingest", "-c", "configs/nope.yaml", "-w", str(tmp_path)], repo_root), "configs/nope.yaml")


def test_unwritable_workspace(repo_root, tmp_path):
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        # root writes anywhere on an ordinary file system; /proc refuses even root.
        target = locked / "ws" if not os.access(locked, os.W_OK) else Path("/proc/bertflow-ws")
        proc = bertflow(["ingest", "-c", "configs/tiny.yaml", "-w", str(target)], repo_root)
        assert_clean_error(proc, "workspace")
    finally:
        locked.chmod(0o700)


def test_workspace_that_is_a_file(repo_root, tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    assert_clean_error(bertflow(["ingest", "-c", "configs/tiny.yaml", "-w", str(f)], repo_root), "workspace")


def test_stage_without_its_input_says_which_stage_to_run(repo_root, tmp_path, api_env):
    proc = bertflow(["vocab", "-c", "configs/tiny.yaml", "-w", str(tmp_path)], repo_root, api_env)
    assert_clean_error(proc, "run the 'ingest' stage first")


def test_bad_inputs_fail_cleanly_and_keep_earlier_outputs(repo_root, tmp_path, api_env):
    ws = tmp_path / "ws"
    ok = bertflow(["ingest", "-c", "configs/tiny.yaml", "-w", str(ws)], repo_root, api_env)
    assert ok.returncode == 0, ok.stderr
    assert "mlflow ui --backend-store-uri" in ok.stdout
    manifest = (ws / "ingest" / "manifest.json").read_text()

    missing = bertflow(["ingest", "-c", "configs/tiny.yaml", "--set", "ingest.inputs=[no/such/dir/*.txt]", "-w", str(ws)],
                       repo_root, api_env)
    assert_clean_error(missing, "no/such/dir")

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    proc = bertflow(["ingest", "-c", "configs/tiny.yaml", "--set", f"ingest.inputs=[{empty}]", "-w", str(ws)],
                    repo_root, api_env)
    assert_clean_error(proc, "no documents")

    assert (ws / "ingest" / "manifest.json").read_text() == manifest  # the good corpus survived both failures
    assert list((ws / "ingest").glob("shard-*.parquet"))


def test_tracking_server_down_fails_fast(repo_root, tmp_path, api_env):
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = bertflow(["ingest", "-c", "configs/tiny.yaml", "-w", str(tmp_path)], repo_root,
                    {**api_env, "MLFLOW_TRACKING_URI": down}, timeout=120)
    assert_clean_error(proc, f"MLflow tracking server {down} is not reachable")
    assert not (tmp_path / "ingest").exists()


def test_flow_parameter_of_the_wrong_type_is_rejected(prefect_harness, tmp_path):
    from prefect.exceptions import ParameterTypeError

    from bertflow.bert_core.config import load_config
    from bertflow.flows.pipeline import pipeline

    with pytest.raises(ParameterTypeError):
        pipeline(config=load_config("tiny"), workspace=str(tmp_path), stages="ingest,vocab,oops")  # not a list
    with pytest.raises(ParameterTypeError):
        pipeline(config=load_config("tiny"), workspace=str(tmp_path), stages=["ingest", "oops"])  # not a stage
    with pytest.raises(ParameterTypeError):
        pipeline(config={"mask": {"masked_lm_prob": 2}}, workspace=str(tmp_path))  # validated like the UI form
    assert not (tmp_path / "mlflow.db").exists()


def test_score_where_and_credentials_are_checked_before_anything_runs(repo_root, tmp_path):
    proc = bertflow(["score", "-c", "tiny", "-w", str(tmp_path), "--where", "upper(lang) = 'EN'"], repo_root)
    assert_clean_error(proc, "score.where: \"upper(lang) = 'EN'\": function UPPER")
    proc = bertflow(["score", "-c", "tiny", "-w", str(tmp_path), "--input", "s3://KEY:SECRET@bucket/lake/"], repo_root)
    assert_clean_error(proc, "credentials in a URI are refused")
    assert "SECRET" not in proc.stderr + proc.stdout
    assert not (tmp_path / "mlflow.db").exists()  # refused before MLflow (or Prefect) saw the config
