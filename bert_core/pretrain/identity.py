"""The one resume rule of a pretraining directory: it resumes unless its training identity changed.

The *training identity* is what shapes the trained weights' maths: every ``PretrainConfig``
key except the runtime knobs (``RUNTIME_KEYS``: device, workers, log and checkpoint
intervals, ...) and the ``init_from`` path (its weights' digest stands for it), the masked
data's fingerprint, the tokenizer files, the ``init_from`` weights and the number of
processes. It is stored in ``run.json`` (facts + digest). Runtime knobs and code upgrades
never throw training away.

Both entry points apply this rule; only what they do on a change differs: the pipeline
sets the old directory aside to ``<out>.previous``, ``python -m bertflow.bert_core.pretrain``
refuses unless told ``--restart``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bertflow.bert_core.configtools import to_dict
from bertflow.bert_core.errors import InputError
from bertflow.bert_core.pretrain.checkpoint import list_checkpoints
from bertflow.bert_core.pretrain.config import RUNTIME_KEYS
from bertflow.bert_core.pretrain.inputs import TOKENIZER_FILES, DataInfo
from bertflow.bert_core.stageio import atomic_write_bytes, file_digest, model_dir_digest

RUN_RECORD = "run.json"
EXPORT = "export"
NOT_IDENTITY = RUNTIME_KEYS | {"init_from"}
_FACTS = {"data": "the masked data", "tokenizer": "the tokenizer files", "init": "the init_from weights"}


@dataclass(frozen=True)
class TrainingIdentity:
    facts: dict[str, Any]  # {"config": {...}, "data", "tokenizer", "init", "world_size"}
    digest: str
    init_dir: Path | None  # where the init_from weights are (a bertflow export or HF BERT dir)
    defaults: dict[str, Any]  # the config's defaults: what a run made before a key existed used


def init_dir(init_from: str | None) -> Path | None:
    """The HF directory ``init_from`` names: itself, or the ``export/`` of a bertflow training dir."""
    if init_from is None:
        return None
    path = Path(init_from)
    if not (path / "config.json").is_file() and (path / EXPORT / "config.json").is_file():
        path = path / EXPORT
    if not path.is_dir():
        raise InputError(f"pretrain.init_from {init_from} is not a directory (need a bertflow export or HF BERT dir)")
    return path


def training_identity(cfg: Any, data: DataInfo, tokenizer_dir: str | Path, world_size: int) -> TrainingIdentity:
    """What ``cfg`` on ``data`` with ``world_size`` processes trains, as facts and one digest."""
    init = init_dir(cfg.init_from)
    facts = {
        "config": {k: v for k, v in to_dict(cfg).items() if k not in NOT_IDENTITY},
        "data": data.fingerprint,
        "tokenizer": model_dir_digest(tokenizer_dir, only=TOKENIZER_FILES),
        "init": model_dir_digest(init) if init is not None else None,
        "world_size": world_size,
    }
    digest = hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()
    return TrainingIdentity(facts, digest, init, to_dict(type(cfg)()))


def changes(out: str | Path, identity: TrainingIdentity) -> list[str]:
    """What differs between the run stored in ``out`` and ``identity`` (empty: resume, or start fresh)."""
    out = Path(out)
    path = out / RUN_RECORD
    if not path.is_file():
        return [f"no {RUN_RECORD} beside its checkpoints (not a bertflow pretraining dir)"] if list_checkpoints(out) else []
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return [f"{RUN_RECORD} is unreadable ({exc})"]
    if not isinstance(record, dict):
        return [f"{RUN_RECORD} is not a run record"]
    if record.get("identity_digest") == identity.digest:
        return []
    old = record["identity"] if "identity" in record else _from_legacy(record, identity.init_dir)
    found = []
    before, now = old.get("config", {}), identity.facts["config"]
    for key in sorted(now):
        was = before.get(key, identity.defaults.get(key))  # a key added since: its default is what that run used
        if was != now[key]:
            found.append(f"pretrain.{key} ({was!r} -> {now[key]!r})")
    for key, label in _FACTS.items():
        if key in old and old[key] != identity.facts[key]:  # a fact a legacy record lacks is unknown, not changed
            found.append(label)
    if old.get("world_size", identity.facts["world_size"]) != identity.facts["world_size"]:
        found.append(f"the number of processes (trained with {old['world_size']} processes, now "
                     f"{identity.facts['world_size']}: the global batch would change)")
    return found


def refusal(out: str | Path, changed: list[str]) -> InputError:
    """The standalone entry point's error: what changed and the ways out."""
    return InputError(
        f"{out} holds a pretraining run that cannot resume with these settings: {'; '.join(changed)} changed. "
        f"Runtime keys ({', '.join(sorted(RUNTIME_KEYS))}) may change on resume. Restore the old values, use a new "
        f"out dir, or rerun with --restart (restart=True) to move it to {_previous(out)} and start afresh"
    )


def set_aside(out: str | Path) -> Path:
    """Move ``out`` to ``<out>.previous`` (replacing an older one) so a new run starts from step 0."""
    previous = _previous(out)
    shutil.rmtree(previous, ignore_errors=True)
    Path(out).rename(previous)
    return previous


def write_record(out: Path, identity: TrainingIdentity, data_dir: str | Path, tokenizer_dir: str | Path) -> None:
    """Store ``identity`` in ``out/run.json`` (also upgrading a legacy or older record of the same run)."""
    path = out / RUN_RECORD
    try:
        if json.loads(path.read_text(encoding="utf-8")).get("identity_digest") == identity.digest:
            return
    except (OSError, json.JSONDecodeError):
        pass
    body = {"identity": identity.facts, "identity_digest": identity.digest, "data_dir": str(data_dir),
            "tokenizer_dir": str(tokenizer_dir)}
    # atomically: a kill -9 mid-write would leave a truncated run.json that blocks every rerun
    atomic_write_bytes(path, json.dumps(body, indent=2, sort_keys=True, default=str).encode())


def _previous(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".previous")


def _from_legacy(record: dict[str, Any], init: Path | None) -> dict[str, Any]:
    """A ``run.json`` written before identities (config minus runtime keys, data/init digests, world size)."""
    old_init = record.get("init_digest")
    if old_init is not None and init is not None:  # that digest's format: the weight files' names and sha256s
        weights = sorted(init.glob("*.safetensors")) + sorted(init.glob("pytorch_model*.bin"))
        same = old_init == "|".join(f"{p.name}:{file_digest(p)}" for p in weights)
        old_init = model_dir_digest(init) if same else old_init
    config = {k: v for k, v in record.get("config", {}).items() if k != "init_from"}
    return {"config": config, "data": record.get("data_fingerprint"), "init": old_init,
            "world_size": record.get("world_size")}
