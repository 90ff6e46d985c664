"""The ONNX backends' files in MLflow: logged with the scoring run, reused from the registry version.

Scoring with ``score.backend`` onnx / onnx-int8 exports (and quantizes) the model into
``<workspace>/score/.onnx/<model digest>/`` (``bert_core.score.onnx_export``). A job that
built or found them there logs the backend's file, ``export.json`` and the parity figures
to its run under ``onnx/<backend>/`` and, for a registry model, tags the version
``bertflow.onnx.<backend>`` with that ``runs:/`` URI. A later job on another machine (an
empty workspace) scoring the same version downloads them instead of exporting again; files
built by other versions of torch, onnx or onnxruntime are not used (they are rebuilt).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from mlflow.exceptions import MlflowException

from bertflow.bert_core.score.onnx_export import FILES, is_current, model_folder
from bertflow.bert_core.stageio import model_dir_digest
from bertflow.tasks import tracking
from bertflow.tasks.models import ModelRef

ARTIFACT_DIR = "onnx"
TAG_PREFIX = "bertflow.onnx."  # model-version tag per backend: runs:/<run>/onnx/<backend>


def cache_dir(workspace: str | Path) -> Path:
    """Where the ONNX files live in a workspace (hidden in the score stage's folder: no job is named so)."""
    return Path(workspace) / "score" / ".onnx"


def fetch(ref: ModelRef, model_dir: str | Path, cache: str | Path, backend: str, tracking_uri: str) -> str | None:
    """Download ``backend``'s files of registry version ``ref`` into ``cache`` when it lacks usable ones.

    Returns the ``runs:/`` URI they came from, or None (not a registry model, no tag, files
    already here, or files built by other versions).
    """
    if ref.version is None:
        return None
    folder = model_folder(cache, model_dir_digest(model_dir))
    if (folder / FILES[backend]).is_file() and is_current(folder):
        return None
    name, number = ref.version.rsplit("/", 1)
    client = tracking.client(tracking_uri)
    uri = (client.get_model_version(name, number).tags or {}).get(TAG_PREFIX + backend)
    if not uri:
        return None
    import mlflow

    Path(cache).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        try:
            got = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp, tracking_uri=tracking_uri))
        except MlflowException:
            return None  # the run or its artifacts are gone: export again
        if not ((got / FILES[backend]).is_file() and is_current(got)):
            return None
        folder.mkdir(parents=True, exist_ok=True)
        for f in sorted(got.iterdir(), key=lambda p: p.name == "export.json"):  # export.json last: it marks "complete"
            os.replace(f, folder / f.name)
    return uri


def publish(ref: ModelRef, model_dir: str | Path, cache: str | Path, backend: str, run_id: str,
            tracking_uri: str) -> str | None:
    """Log ``backend``'s files to the scoring run; tag the registry version with where they are. Returns the URI."""
    folder = model_folder(cache, model_dir_digest(model_dir))
    files = [folder / FILES[backend], folder / "export.json", *sorted(folder.glob(f"parity-{backend}-*.json"))]
    if not files[0].is_file():
        return None
    with tempfile.TemporaryDirectory() as tmp:  # one upload of just this backend's files (not the fp32 export too)
        staged = Path(tmp) / backend
        staged.mkdir()
        for f in files:
            if f.is_file():
                try:
                    os.link(f, staged / f.name)
                except OSError:  # another filesystem
                    shutil.copy2(f, staged / f.name)
        tracking.client(tracking_uri).log_artifacts(run_id, str(staged), f"{ARTIFACT_DIR}/{backend}")
    uri = f"runs:/{run_id}/{ARTIFACT_DIR}/{backend}"
    if ref.version is not None:
        name, number = ref.version.rsplit("/", 1)
        tracking.client(tracking_uri).set_model_version_tag(name, number, TAG_PREFIX + backend, uri)
    return uri
