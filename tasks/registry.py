"""MLflow Model Registry helpers for fine-tuned classifiers: log, register, promote, resolve.

* :func:`log_model` logs a fine-tuned Hugging Face directory as an MLflow 3 ``LoggedModel``
  linked to a run: a self-contained pyfunc logged from code (``hf_pyfunc.py``), with a
  signature, an input example and pinned requirements.
* :func:`register` makes it a registry version and points alias ``candidate`` at it.
* :func:`promote` moves alias ``champion`` to a version only if it beats the current
  champion's score *on the same evaluation set* (same content digest); both scores and
  the decision are recorded as model-version tags.
* :func:`pin` turns ``models:/name@alias`` into the version it points at now (once per run:
  aliases move); :func:`resolve_model_dir` turns a local dir or a ``models:/``/``runs:/`` URI
  into the local HF directory that bulk scoring loads.

Everything goes through an explicit tracking URI or a client from ``tracking.client``: MLflow's active run
is thread-local and Prefect runs tasks in worker threads.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from bertflow.bert_core.errors import InputError
from bertflow.tasks import tracking

HF_ARTIFACT = "hf_model"  # the key of the HF directory among the pyfunc's artifacts
CANDIDATE = "candidate"
CHAMPION = "champion"
DIGEST_TAG = "eval_digest"  # model-version tag: content digest of the set the score was measured on
PROMOTION_PREFIX = "promotion."  # model-version tags recording a promotion decision


MODEL_CODE = Path(__file__).with_name("hf_pyfunc.py")  # the pyfunc MLflow logs as code inside every model
_EXAMPLE = "an example sentence to classify"
_QA_EXAMPLE = {"question": "where did alice live?", "context": "alice lived in paris."}


def model_signature(task: str = "sequence", text_pair: bool = False):
    """What a logged model takes and gives, per task.

    Sequence: ``text`` (and ``text_pair``) -> ``label``/``score``/``probabilities``; token: ``text`` ->
    ``entities`` spans (both with ``error``: a null or blank text gets no prediction, and its reason); qa: ``question``/``context`` -> ``answer``/``answer_start``/``answer_end``/``score``
    (null when there is no answer) and ``error`` (null, or why a row got no answer).
    """
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Object, Property, Schema

    if task == "qa":
        inputs = [ColSpec("string", "question"), ColSpec("string", "context")]
        outputs = [ColSpec("string", "answer", required=False), ColSpec("long", "answer_start", required=False),
                   ColSpec("long", "answer_end", required=False), ColSpec("double", "score", required=False),
                   ColSpec("string", "error", required=False)]
        return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))
    inputs = [ColSpec("string", "text")] + ([ColSpec("string", "text_pair")] if text_pair else [])
    if task == "token":
        span = Object([Property("label", "string"), Property("start", "long"), Property("end", "long"),
                       Property("text", "string"), Property("score", "double")])
        outputs = [ColSpec(Array(span), "entities", required=False)]
    else:
        outputs = [ColSpec("string", "label", required=False), ColSpec("double", "score", required=False),
                   ColSpec(Array("double"), "probabilities", required=False)]
    outputs.append(ColSpec("string", "error", required=False))  # null, or why a row got no prediction
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def input_example(text_pair: bool = False, task: str = "sequence") -> pd.DataFrame:
    if task == "qa":
        return pd.DataFrame({k: [v] for k, v in _QA_EXAMPLE.items()})
    return pd.DataFrame({"text": [_EXAMPLE], **({"text_pair": [_EXAMPLE]} if text_pair else {})})


def log_model(
    hf_dir: str | Path,
    run_id: str | None,
    name: str = "model",
    *,
    tracking_uri: str | None = None,
    experiment_id: str | None = None,
    tags: dict[str, str] | None = None,
    pip_requirements: list[str] | None = None,
) -> str:
    """Log ``hf_dir`` as a self-contained pyfunc LoggedModel linked to ``run_id``; returns its ``models:/<model_id>``.

    The model is logged *from code* (``hf_pyfunc.py``, which imports no bertflow) with the HF
    directory as its artifact ``hf_model``, a signature, an input example (MLflow checks at
    logging that it loads and predicts) and pinned requirements: it loads and serves wherever
    MLflow, torch and transformers run, and nothing in it is a pickle.
    The run need not be active (nor still running): the link is made by id, which is safe
    from any thread. The LoggedModel is created in the run's experiment (``experiment_id``
    when there is no run), so its artifacts land beside the run's. ``tracking_uri``
    (absolute) becomes the process's tracking and registry URI, because MLflow's model
    logging reads the global one.
    """
    from mlflow.models import Model

    from bertflow.bert_core.finetune.export import read_meta

    hf_dir = Path(hf_dir).resolve()
    if not (hf_dir / "config.json").is_file():
        raise InputError(f"{hf_dir} is not a Hugging Face model directory (no config.json); run finetune first")
    if tracking_uri:
        tracking.use_store(tracking_uri)  # mlflow.pyfunc.log_model logs to the process-wide store
    client = tracking.client(tracking_uri)
    if run_id:
        experiment_id = client.get_run(run_id).info.experiment_id
    if experiment_id is None:
        raise InputError("log_model needs a run_id or an experiment_id to log the model into")
    meta = read_meta(hf_dir)
    task, pair = str(meta.get("task", "sequence")), bool(meta.get("text_pair"))
    all_tags = {"bertflow.task": task, **(tags or {})}
    # Create the LoggedModel ourselves: left to itself MLflow puts it in the *default*
    # experiment (artifacts under ./mlruns of the current directory) when no run is active.
    logged = client.create_logged_model(experiment_id, name=name, source_run_id=run_id, tags=all_tags)
    with tempfile.TemporaryDirectory(prefix="bertflow-log-") as staging:
        staged = _stage_as(hf_dir, Path(staging) / HF_ARTIFACT)  # the artifact keeps this name inside the model
        info = Model.log(
            artifact_path=None,
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            python_model=str(MODEL_CODE),  # a file path: models from code, never a CloudPickle
            artifacts={HF_ARTIFACT: str(staged)},
            signature=model_signature(task, pair),
            input_example=input_example(pair, task),
            pip_requirements=pip_requirements or requirements(),  # explicit: skips MLflow's slow inference
        )
    return f"models:/{info.model_id}"


def register(
    model_uri: str,
    name: str,
    *,
    client: MlflowClient | None = None,
    alias: str = CANDIDATE,
    tags: dict[str, str] | None = None,
) -> int:
    """Create a new version of registered model ``name`` from ``model_uri``; point ``alias`` at it."""
    client = client or tracking.client()
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    model_id = _logged_model_id(model_uri)
    if model_id is not None:
        logged = client.get_logged_model(model_id)
        mv = client.create_model_version(
            name, source=model_uri, run_id=logged.source_run_id, tags=tags, model_id=model_id
        )
    else:  # runs:/ and other URIs: MLflow resolves them (against the global registry URI)
        mv = mlflow.register_model(model_uri, name, tags=tags)
    client.set_registered_model_alias(name, alias, str(mv.version))
    return int(mv.version)


def promote(
    name: str,
    version: int | str,
    metric_name: str,
    eval_digest: str,
    client: MlflowClient,
    *,
    score: float | None = None,
    higher_is_better: bool = True,
    alias: str = CHAMPION,
    force: bool = False,
) -> dict[str, Any]:
    """Move ``alias`` to ``version`` if it beats the current holder on the same evaluation set.

    The candidate's score is ``score`` if given, else its version tag ``metric_name``, else
    the metric of that name on its source run. The champion's score and digest come from
    its own version tags, which this function writes on every candidate it sees. A champion
    measured on a different evaluation set (other digest) is not comparable: the alias
    stays unless ``force``. Returns ``{"promoted", "candidate_score", "champion_score",
    "champion_version", "reason"}`` and records the same as ``promotion.*`` tags.
    """
    version = str(version)
    mv = client.get_model_version(name, version)
    cand = float(score) if score is not None else _score(client, mv, metric_name)
    if cand is None:
        raise InputError(
            f"no {metric_name!r} score for {name} version {version}: "
            "pass score=, tag the version or log the metric on its run"
        )
    client.set_model_version_tag(name, version, metric_name, repr(cand))
    client.set_model_version_tag(name, version, DIGEST_TAG, eval_digest)

    champion = version_by_alias(client, name, alias)
    champ_score = champ_version = None
    if champion is None:
        promoted, reason = True, f"no {alias} yet"
    elif str(champion.version) == version:
        promoted, reason = False, f"version {version} already is the {alias}"
        champ_score, champ_version = cand, version
    else:
        champ_version = str(champion.version)
        champ_score = _score(client, champion, metric_name)
        champ_digest = champion.tags.get(DIGEST_TAG)
        better = (
            champ_score is not None
            and (cand > champ_score if higher_is_better else cand < champ_score)
        )
        if champ_digest != eval_digest and not force:
            promoted = False
            reason = (
                f"{alias} version {champ_version} was evaluated on a different evaluation set "
                f"(digest {str(champ_digest)[:12]} vs {eval_digest[:12]}); scores are not comparable, "
                f"{alias} kept (re-evaluate it, or promote with force=True)"
            )
        elif champ_score is None:
            promoted = force
            reason = f"{alias} version {champ_version} has no {metric_name!r} score" + (
                "; promoted by force" if force else "; kept (promote with force=True)")
        else:
            promoted = better or force
            relation = "beats" if better else "does not beat"
            reason = f"{metric_name} {cand:.6g} {relation} {alias} version {champ_version}'s {champ_score:.6g}"
            if force and not better:
                reason += "; promoted by force"

    record = {
        "decision": "promoted" if promoted else "kept",
        "candidate_score": repr(cand),
        "champion_score": "" if champ_score is None else repr(champ_score),
        "champion_version": champ_version or "",
        "metric": metric_name,
        "reason": reason,
    }
    for key, value in record.items():
        client.set_model_version_tag(name, version, PROMOTION_PREFIX + key, str(value)[:5000])
    if promoted:
        client.set_registered_model_alias(name, alias, version)
    return {
        "promoted": promoted,
        "candidate_score": cand,
        "champion_score": champ_score,
        "champion_version": champ_version,
        "reason": reason,
    }


def resolve_model_dir(uri_or_path: str | Path, dst_dir: str | Path, *, tracking_uri: str | None = None) -> Path:
    """The local HF directory behind a local path or an MLflow model URI.

    * a local HF directory (has ``config.json``) is returned as is;
    * a local MLflow model directory (has ``MLmodel``) gives its ``hf_model`` artifact;
    * ``models:/name@alias``, ``models:/name/N``, ``models:/<model_id>`` and ``runs:/<run>/<name>``
      are downloaded under ``dst_dir`` (aliases resolved to their version first; a version
      already downloaded is reused) and the HF directory inside is returned.
    """
    text = str(uri_or_path)
    if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:/", text) or text.startswith("file:"):
        local = Path(text[len("file://"):] if text.startswith("file://") else text)
        if (local / "config.json").is_file():
            return local
        if (local / "MLmodel").is_file():
            return _hf_dir_in(local)
        raise InputError(f"model {text}: not a Hugging Face model directory (no config.json) nor an MLflow model")
    client = tracking.client(tracking_uri)
    uri = pin(client, text)[0]
    cache = Path(dst_dir) / _cache_name(uri)
    if (cache / "MLmodel").is_file():
        return _hf_dir_in(cache)
    tmp = Path(dst_dir) / f".{cache.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        try:
            local = Path(mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=str(tmp), tracking_uri=tracking_uri, registry_uri=tracking_uri
            ))
        except MlflowException as exc:
            raise InputError(f"cannot download model {text}: {exc.message}") from None
        if not (local / "MLmodel").is_file():
            raise InputError(f"{text} is not an MLflow model (no MLmodel file in it)")
        if not cache.exists():  # else another process got there first: use theirs
            os.replace(local, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _hf_dir_in(cache)


# ---- helpers ---------------------------------------------------------------------------------------


LOAD_REQUIREMENTS = ("mlflow", "torch", "transformers", "tokenizers", "safetensors", "pandas", "numpy")


def requirements() -> list[str]:
    """What loading a logged model needs (``hf_pyfunc.py``'s imports and the weights' format), pinned as logged.

    Not bertflow: the model does not import it. torch is pinned without its local build tag
    (``+cpu``, ``+cu124``), so a GPU machine installs its own build of the same version.
    """
    from importlib.metadata import version

    return [f"{name}=={version(name).split('+')[0]}" for name in LOAD_REQUIREMENTS]


def _stage_as(src: Path, dst: Path) -> Path:
    """A copy of ``src`` named ``dst``: hard links where the filesystem allows (no bytes copied).

    MLflow refuses symlinks that leave the directory it copies from.
    """
    try:
        shutil.copytree(src, dst, copy_function=os.link)
    except OSError:
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst)
    return dst


def _logged_model_id(model_uri: str) -> str | None:
    """``models:/<model_id>`` (MLflow 3 LoggedModel) -> id; registry URIs (name/N, name@alias) -> None."""
    if not model_uri.startswith("models:/"):
        return None
    rest = model_uri[len("models:/"):].strip("/")
    return rest if rest and "/" not in rest and "@" not in rest else None


def version_by_alias(client: MlflowClient, name: str, alias: str):
    """The model version ``alias`` points at, or None when the model or the alias does not exist."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def pin(client: MlflowClient, uri: str) -> tuple[str, str | None]:
    """``(uri pinned to a version, "name/version")`` for a registry URI; ``(uri, None)`` for anything else.

    ``models:/name@alias`` becomes ``models:/name/<the version it points at now>``: resolve an
    alias once per run and use the pinned URI from then on, so one run scores one version.
    """
    m = re.match(r"^models:/([^/@]+)(?:@([^/]+)|/(\d+))/?$", uri)
    if not m:
        return uri, None
    name, alias, number = m.groups()
    if alias is not None:
        mv = version_by_alias(client, name, alias)
        if mv is None:
            raise InputError(f"model {uri}: registered model {name!r} has no alias {alias!r}")
        number = str(int(mv.version))
    return f"models:/{name}/{int(number)}", f"{name}/{int(number)}"


def _score(client: MlflowClient, mv, metric_name: str) -> float | None:
    """A version's score: its tag, else its source run's metric, else its LoggedModel's metric."""
    tag = (mv.tags or {}).get(metric_name)
    if tag not in (None, ""):
        try:
            return float(tag)
        except ValueError:
            pass
    if mv.run_id:
        value = client.get_run(mv.run_id).data.metrics.get(metric_name)
        if value is not None:
            return float(value)
    model_id = getattr(mv, "model_id", None)
    if model_id:
        for m in client.get_logged_model(model_id).metrics or []:
            if m.key == metric_name:
                return float(m.value)
    return None


def _cache_name(uri: str) -> str:
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", uri)[:80]
    return f"{readable}-{hashlib.sha256(uri.encode()).hexdigest()[:10]}"


def _hf_dir_in(model_dir: Path) -> Path:
    """The ``hf_model`` artifact directory inside a downloaded pyfunc model (path read from MLmodel)."""
    import yaml

    spec = yaml.safe_load((model_dir / "MLmodel").read_text(encoding="utf-8")) or {}
    artifacts = (spec.get("flavors", {}).get("python_function", {}) or {}).get("artifacts", {}) or {}
    rel = (artifacts.get(HF_ARTIFACT) or {}).get("path")
    candidates = [model_dir / rel] if isinstance(rel, str) and rel else []
    candidates.append(model_dir / "artifacts" / HF_ARTIFACT)
    root = model_dir.resolve()
    for c in candidates:
        inside = root in c.resolve().parents  # MLmodel comes with the download: it may not point outside it
        if inside and (c / "config.json").is_file():
            return c
    raise InputError(f"MLflow model at {model_dir} holds no {HF_ARTIFACT!r} Hugging Face directory")
