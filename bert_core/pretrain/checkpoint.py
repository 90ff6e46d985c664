"""Training checkpoints: written atomically, loaded safely, named by step.

Layout of ``<out>/checkpoints/step-0000500/``:

- ``model.safetensors``: model weights (our names, fp32)
- ``optimizer.pt``: ``optimizer.state_dict()`` (tensors, numbers and lists only, so it
  loads with ``torch.load(weights_only=True)``)
- ``rng.pt``: per-rank RNG states (python, numpy, torch, cuda), as tensors/tuples
- ``trainer_state.json``: step, data position (global row offset), elapsed minutes,
  tokens, schedule state, fingerprints

The directory is built under a temporary name and renamed into place, so after a
``kill -9`` at any moment the newest ``step-*`` directory is complete; leftover
temporary directories are removed at the next start.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.stageio import atomic_dir

CHECKPOINTS = "checkpoints"
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
RNG_FILE = "rng.pt"
STATE_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d{7,})$")


@dataclass
class Checkpoint:
    path: Path
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: list[dict[str, Any]]
    state: dict[str, Any]


def step_dir_name(step: int) -> str:
    return f"step-{step:07d}"


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoint dirs under ``root/checkpoints``, oldest first."""
    base = Path(root) / CHECKPOINTS
    if not base.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in base.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def clean_partial(root: str | Path) -> None:
    """Remove temporary dirs left by a checkpoint write that was killed."""
    base = Path(root) / CHECKPOINTS
    if base.is_dir():
        for p in base.iterdir():
            if p.name.startswith(".step-"):
                shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(
    root: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    rng_states: list[dict[str, Any]],
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write ``root/checkpoints/step-XXXXXXX`` atomically; keep the newest ``keep`` ones."""
    from safetensors.torch import save_file

    final = Path(root) / CHECKPOINTS / step_dir_name(step)
    with atomic_dir(final) as tmp:
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model_state.items()}
        save_file(tensors, str(tmp / MODEL_FILE), metadata={"format": "pt", "bertflow": "pretrain-checkpoint"})
        os.chmod(tmp / MODEL_FILE, 0o644)  # safetensors writes 0600
        torch.save(optimizer_state, tmp / OPTIMIZER_FILE)
        torch.save(rng_states, tmp / RNG_FILE)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
        for f in tmp.iterdir():
            _fsync(f)
    for old in list_checkpoints(root)[:-keep]:
        # hide it first (one atomic rename): a kill -9 half-way through rmtree would otherwise leave a
        # step-* dir that lists as a checkpoint but lacks files; clean_partial removes hidden ones
        hidden = old.parent / f".{old.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(old, hidden)
        shutil.rmtree(hidden, ignore_errors=True)
    return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint dir; any missing, truncated or corrupt file is an InputError naming it."""
    path = Path(path)
    hint = f"delete {path} to resume from the checkpoint before it, or use a new out dir"
    for name in (MODEL_FILE, OPTIMIZER_FILE, RNG_FILE, STATE_FILE):
        if not (path / name).is_file():
            raise InputError(f"checkpoint {path} is incomplete: {name} is missing ({hint})")
    state_path = path / STATE_FILE
    try:
        state = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"checkpoint file {state_path} is corrupt ({exc}); {hint}") from None
    return Checkpoint(
        path=path,
        model=load_safetensors(path / MODEL_FILE, hint),
        optimizer=load_torch(path / OPTIMIZER_FILE, hint),
        rng=load_torch(path / RNG_FILE, hint),
        state=state,
    )


def load_safetensors(path: Path, hint: str = "") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # SafetensorError, OSError, ...: the file is damaged
        raise InputError(f"weights file {path} is truncated or corrupt ({exc}){'; ' + hint if hint else ''}") from None


def load_torch(path: Path, hint: str = "") -> Any:
    """A torch pickle of tensors, numbers and plain containers; anything else is refused, never run."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # EOFError, RuntimeError (zip), UnpicklingError
        text = str(exc)
        if "WeightsUnpickler error: Unsupported" in text:  # a pickled Python object: running it could run any code
            detail = text.split("WeightsUnpickler error: ", 1)[1].split(". ", 1)[0]
            raise InputError(f"file {path} holds pickled Python objects, not only tensors ({detail}); refused, "
                             f"since loading them could run arbitrary code{'; ' + hint if hint else ''}") from None
        raise InputError(f"file {path} is truncated or corrupt ({exc}){'; ' + hint if hint else ''}") from None


def capture_rng() -> dict[str, Any]:
    """This process's RNG states, in types ``torch.load(weights_only=True)`` accepts."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict[str, Any]) -> None:
    random.setstate(_as_tuple(states["python"]))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _as_tuple(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_as_tuple(v) for v in value)
    return value
