"""The workspace: one directory holding every stage output and the MLflow store.

Default ``./workspace``; overridden by ``--workspace`` or ``$BERTFLOW_WORKSPACE``.
Each stage writes the folder named after it (``ingest/``, ``vocab/``, ``mask/``,
``pretrain/``, ``finetune/``, ``distill/``, ``score/``), so a stage finds its inputs without
being told; sweeps keep their studies under ``sweep/<name>/``. A lock file keeps two
runs from writing it at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from bertflow.bert_core.config import ALL_STAGES
from bertflow.bert_core.errors import InputError

ENV_VAR = "BERTFLOW_WORKSPACE"
DEFAULT = "workspace"
# Folder names an earlier bertflow used; such a workspace is renamed in place, so each folder is named after its stage.
LEGACY_NAMES = {"corpus": "ingest", "tokenizer": "vocab", "masked": "mask", "scores": "score"}

log = logging.getLogger(__name__)


def resolve(path: str | Path | None = None) -> Path:
    """Absolute workspace path from the argument, the environment, or the default."""
    chosen = path or os.environ.get(ENV_VAR) or DEFAULT
    return Path(chosen).expanduser().resolve()


@dataclass(frozen=True)
class Workspace:
    root: Path

    def stage_dir(self, stage: str) -> Path:
        """The folder stage ``stage`` writes (named after the stage)."""
        if stage not in ALL_STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        return self.root / stage

    @property
    def ingest(self) -> Path:
        return self.stage_dir("ingest")

    @property
    def vocab(self) -> Path:
        return self.stage_dir("vocab")

    @property
    def mask(self) -> Path:
        return self.stage_dir("mask")

    @property
    def pretrain(self) -> Path:
        return self.stage_dir("pretrain")

    @property
    def finetune(self) -> Path:
        return self.stage_dir("finetune")

    @property
    def distill(self) -> Path:
        return self.stage_dir("distill")

    @property
    def score(self) -> Path:
        return self.stage_dir("score")

    def sweep_dir(self, name: str) -> Path:
        """The folder of the sweep ``name`` (its Optuna study and trial outputs): ``sweep/<name>``."""
        return self.root / "sweep" / (re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip(".") or "sweep")

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def last_run(self) -> Path:
        return self.root / "last_run.json"

    def ensure(self) -> "Workspace":
        """Create the workspace; an unwritable location is a clear InputError."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create workspace {self.root}: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise InputError(f"workspace {self.root} is not writable (choose another with --workspace)")
        return self

    def migrate_legacy_names(self) -> list[str]:
        """Rename folders an older bertflow wrote (``corpus/`` -> ``ingest/``, ...); returns what moved.

        Called under the lock. A folder whose new name is already taken is left alone.
        """
        moved = []
        for old, stage in LEGACY_NAMES.items():
            src, dst = self.root / old, self.stage_dir(stage)
            if src.is_dir() and not dst.exists():
                src.rename(dst)
                moved.append(f"{old}/ -> {stage}/")
        if moved:
            log.warning("workspace %s: renamed %s (folders are now named after their stage)", self.root, ", ".join(moved))
        return moved

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the workspace lock; a second run refuses at once instead of corrupting outputs."""
        lock = FileLock(str(self.root / ".bertflow.lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise InputError(
                f"another bertflow run is using workspace {self.root} (lock {lock.lock_file}); "
                "wait for it to finish or use another --workspace"
            ) from None
        try:
            self.migrate_legacy_names()
            yield
        finally:
            lock.release()
