"""Nightly continuation: keep the champion's pretrained base so the next run can continue from it.

When a fine-tuned version becomes the registry's champion, the pretrained base it was
fine-tuned from (a Hugging Face BERT directory with its tokenizer) is copied to
``<workspace>/champions/<model>/v<version>`` and the version is tagged with that path.
The copy matters: the pipeline's own ``pretrain/`` directory is replaced by later runs.
A pipeline run with ``flow.continue_from_champion`` pretrains from that copy and keeps
its vocabulary (a new vocabulary would not match the embeddings it learned).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from bertflow.bert_core.stageio import atomic_dir
from bertflow.bert_core.vocab import frozen
from bertflow.tasks import registry, tracking

BASE_TAG = "bertflow.pretrain_base"  # model-version tag: the snapshot directory of its pretrained base


@dataclass(frozen=True)
class ChampionBase:
    """The current champion's pretrained base, ready to continue pretraining from."""

    name: str
    version: str
    path: str


def snapshot_base(tracking_uri: str, name: str, version: str, base_dir: str, workspace: str) -> str:
    """Copy ``base_dir`` to the workspace's champions folder (atomically) and tag ``version`` with it."""
    dst = Path(workspace) / "champions" / _dir_name(name) / f"v{version}"
    if not (dst / "config.json").is_file():
        with atomic_dir(dst) as tmp:
            for item in Path(base_dir).iterdir():
                if item.is_file():
                    shutil.copy2(item, tmp / item.name)
    tracking.client(tracking_uri).set_model_version_tag(name, version, BASE_TAG, str(dst))
    return str(dst)


def find_base(tracking_uri: str, name: str) -> tuple[ChampionBase | None, str]:
    """The champion's pretrained base and a reason, or ``(None, why not)`` when there is none to use."""
    client = tracking.client(tracking_uri)
    try:
        champion = registry.version_by_alias(client, name, registry.CHAMPION)
    except Exception as exc:  # a registry error is a real failure, but name it
        raise RuntimeError(f"cannot read the champion of {name!r} from the MLflow registry: {exc}") from exc
    if champion is None:
        return None, f"{name!r} has no {registry.CHAMPION} yet"
    path = (champion.tags or {}).get(BASE_TAG)
    if not path:
        return None, f"{registry.CHAMPION} version {champion.version} of {name!r} has no pretrained-base snapshot"
    base = Path(path)
    missing = [f for f in ("config.json", *frozen.REQUIRED_FILES) if not (base / f).is_file()]
    if missing:
        return None, f"the base snapshot {base} of {name!r} version {champion.version} lacks {', '.join(missing)}"
    return ChampionBase(name, str(champion.version), str(base)), f"continuing from {name!r} version {champion.version}"


def _dir_name(name: str) -> str:
    """A registered-model name as one safe directory name (no separators, no dot-dot)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip(".")
    return safe or "model"
