"""The workspace: one directory holding every stage output and the MLflow store.

Default ``./workspace``; overridden by ``--workspace`` or ``$BERTFLOW_WORKSPACE``.
Stage outputs live at fixed names inside it, so each stage finds its inputs
without being told, and a lock file keeps two runs from writing it at once.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock, Timeout

from bert_core.errors import InputError

ENV_VAR = "BERTFLOW_WORKSPACE"
DEFAULT = "workspace"


def resolve(path: str | Path | None = None) -> Path:
    """Absolute workspace path from the argument, the environment, or the default."""
    chosen = path or os.environ.get(ENV_VAR) or DEFAULT
    return Path(chosen).expanduser().resolve()


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def corpus(self) -> Path:
        return self.root / "corpus"

    @property
    def tokenizer(self) -> Path:
        return self.root / "tokenizer"

    @property
    def masked(self) -> Path:
        return self.root / "masked"

    @property
    def pretrain(self) -> Path:
        return self.root / "pretrain"

    @property
    def finetune(self) -> Path:
        return self.root / "finetune"

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    def ensure(self) -> "Workspace":
        """Create the workspace; an unwritable location is a clear InputError."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"cannot create workspace {self.root}: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise InputError(f"workspace {self.root} is not writable (choose another with --workspace)")
        return self

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
            yield
        finally:
            lock.release()
