"""Model directories are data, not code: weights come from safetensors, a model dir's Python never runs.

A pickle checkpoint (``pytorch_model.bin``, ``*.pt``, ``*.pth``) can run arbitrary code when it is
unpickled, and ``auto_map`` in a ``config.json`` points transformers at Python files beside the
weights. So every loader of a model directory:

* refuses a directory whose only weights are a pickle checkpoint (:func:`require_safe_weights`),
  unless the stage's ``allow_pickle_weights`` key opts in; even then transformers and
  :func:`bert_core.pretrain.checkpoint.load_torch` unpickle with ``torch.load(weights_only=True)``,
  which rebuilds tensors and plain containers only;
* passes :func:`hf_model_kwargs` to ``from_pretrained``: ``use_safetensors=True`` and
  ``trust_remote_code=False``. Left at transformers' default (None), a directory with custom code
  makes transformers *ask on stdin* whether to run it, and an answer of "y" runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bertflow.bert_core.errors import InputError

SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")  # what transformers loads with use_safetensors
PICKLE_WEIGHTS = ("pytorch_model*.bin", "*.pt", "*.pth")


def has_safe_weights(model_dir: str | Path) -> bool:
    return any((Path(model_dir) / name).is_file() for name in SAFE_WEIGHTS)


def pickle_weight_files(model_dir: str | Path) -> list[Path]:
    d = Path(model_dir)
    return sorted({p for pattern in PICKLE_WEIGHTS for p in d.glob(pattern) if p.is_file()})


def require_safe_weights(model_dir: str | Path, allow_pickle: bool, opt_in: str) -> None:
    """InputError when ``model_dir``'s only weights are a pickle checkpoint and the user did not opt in.

    ``opt_in`` says how to opt in, e.g. ``--set finetune.allow_pickle_weights=true``.
    """
    if allow_pickle or has_safe_weights(model_dir):
        return
    pickled = pickle_weight_files(model_dir)
    if pickled:
        raise InputError(
            f"{pickled[0]} is a pickle checkpoint; bertflow loads model weights from safetensors only "
            f"(unpickling a file can run arbitrary code). Convert it once where you trust it "
            f"(transformers: from_pretrained(dir).save_pretrained(dir) writes model.safetensors), "
            f"or, if you trust this file, opt in with {opt_in} (it is then read with torch.load(weights_only=True))"
        )


def load_errors() -> tuple[type[Exception], ...]:
    """What ``from_pretrained`` raises for a missing, unreadable or damaged model directory.

    A truncated ``model.safetensors`` (interrupted copy, full disk) raises safetensors' own
    ``SafetensorError``, which is neither an OSError nor a ValueError.
    """
    from safetensors import SafetensorError

    return (OSError, ValueError, SafetensorError)


def load_error(model_dir: str | Path, what: str, exc: Exception) -> InputError:
    """The InputError for a failed model load: ``what: exc``, naming the damaged weights file if one is."""
    from safetensors import safe_open

    for path in sorted(Path(model_dir).glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as bad:  # noqa: BLE001 - any failure to open its header means the file is damaged
            return InputError(f"{what}: weights file {path} is truncated or corrupt ({bad}); copy or export it again")
    return InputError(f"{what}: {exc}")


def hf_model_kwargs(allow_pickle: bool) -> dict[str, Any]:
    """Keyword arguments for every transformers model ``from_pretrained`` call."""
    return {
        "use_safetensors": None if allow_pickle else True,  # None: safetensors first, else pytorch_model.bin
        "weights_only": True,  # transformers' default, stated: a .bin is unpickled with torch.load(weights_only=True)
        "trust_remote_code": False,  # never run Python from the model directory (auto_map), never ask on stdin
    }
