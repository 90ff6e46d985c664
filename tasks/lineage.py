"""Stage inputs and outputs as MLflow datasets with content digests, so lineage reads raw corpus -> scores.

A stage's output directory is described with the same digest the next stage computes
for it as an input (``tasks.reuse.fingerprint``), so the MLflow UI links them.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from mlflow.data.meta_dataset import MetaDataset
from mlflow.data.sources import LocalArtifactDatasetSource
from mlflow.entities import DatasetInput, InputTag

from bertflow.tasks import tracking

_DIGEST_LEN = 32  # MLflow stores dataset digests in a 36-character column


def _dataset_input(name: str, value: str, fingerprint: str, context: str) -> DatasetInput:
    path = Path(value)
    uri = value if "://" in value or value.startswith("models:") else path.resolve().as_uri()
    digest = hashlib.sha256(fingerprint.encode()).hexdigest()[:_DIGEST_LEN]
    ds = MetaDataset(LocalArtifactDatasetSource(uri), name=f"{name}:{path.name or value}", digest=digest)
    return DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])


def log_datasets(tracking_uri: str, run_id: str, fingerprints: dict[str, list[tuple[str, str]]],
                 output: tuple[str, str] | None = None) -> None:
    """Log a stage's inputs (context ``input``) and its output (context ``output``) as datasets."""
    items = [_dataset_input(name, v, f, "input") for name, pairs in fingerprints.items() for v, f in pairs]
    if output is not None:
        items.append(_dataset_input("output", output[0], output[1], "output"))
    if items:
        tracking.client(tracking_uri).log_inputs(run_id, datasets=items)
