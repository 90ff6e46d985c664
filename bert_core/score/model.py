"""Load a local Hugging Face model of any head (sequence, token, qa) once and run it on padded batches.

The head (:mod:`bert_core.score.heads`) decides which Auto class loads the directory
and what of each forward comes back. On CUDA the weights are bf16 (``cfg.bf16``) with
SDPA attention; what comes back is computed in fp32. A forward returns a
:class:`Pending` whose device→host copy is asynchronous (pinned memory + an event), so
the caller can queue the next batches before waiting: the GPU never idles on Python. On
CPU everything is fp32 and synchronous (exact enough to match a plain HF forward within 1e-4).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bertflow.bert_core.cpu_bf16 import require_native_bf16
from bertflow.bert_core.errors import InputError
from bertflow.bert_core.safeload import hf_model_kwargs, load_error, load_errors, require_safe_weights
from bertflow.bert_core.score.config import ONNX_BACKENDS, ScoreConfig
from bertflow.bert_core.score.heads import Head, auto_class, head_name, make_head
from bertflow.bert_core.stageio import model_dir_digest

_CHARS_PER_TOKEN_CAP = 64  # text beyond max_length * this many characters is cut before tokenizing
_cache: dict[tuple, Classifier] = {}


@dataclass
class Classifier:
    """A loaded model, its head and its fast tokenizer (truncating to ``max_length``, no padding)."""

    model: torch.nn.Module  # or, for score.backend onnx / onnx-int8, an onnx_runtime.OrtModel called the same way
    tokenizer: object  # tokenizers.Tokenizer
    device: torch.device
    dtype: torch.dtype
    labels: list[str]
    activation: str  # "softmax" or "sigmoid" (one label or multi-label), as transformers' pipeline does
    max_length: int
    max_chars: int
    pad_id: int
    pad_multiple: int
    hidden_size: int
    uses_token_types: bool
    fingerprint: str
    mask_4d: bool = False  # pass a prepared boolean 4-D mask: transformers then skips its per-batch host sync
    head: str = "sequence"  # which head (heads.HEADS); each run builds its Head from it (make_head)
    meta: dict = field(default_factory=dict)  # bertflow's export marker (task, thresholds), or what config.json says
    unk_id: int | None = None
    derived: dict = field(default_factory=dict)  # what heads build from the model once (tokenizer copies), by key
    backend: str = "torch"  # score.backend: torch, torch-bf16, onnx or onnx-int8

    @property
    def precision(self) -> str:
        """What the arithmetic runs in, for results and manifests: float32, bfloat16 or int8."""
        return "int8" if self.backend == "onnx-int8" else str(self.dtype).replace("torch.", "")

    def reuse(self, key: tuple, build):
        """``build()`` once per ``key`` for this loaded model (copying a 30k-word tokenizer costs ~0.1 s)."""
        if key not in self.derived:
            self.derived[key] = build()
        return self.derived[key]


def resolve_device(spec: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for a missing CUDA device is a ConfigError-style InputError."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"score.device is {spec!r} but CUDA is not available here (use auto or cpu)")
    return dev


def cpu_threads(cfg: ScoreConfig) -> int:
    """Threads for CPU scoring (torch and ONNX Runtime alike): ``cfg.cpu_threads``, or every core this process may use.

    The tokenizer thread spends most of its time in Rust with the GIL released and needs no
    core of its own: on an idle 2-core machine MiniLM-L6 scored 351 rows/s with 2 torch
    threads against 194 with the old "all cores but one" rule (issue 21). On a box shared
    with other busy processes, ``score.cpu_threads`` sets fewer.
    """
    if cfg.cpu_threads > 0:
        return cfg.cpu_threads
    return usable_cores()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's count."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Set torch's intra-op thread count for a block and restore it (it is process-wide)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def load_classifier(model_dir: str | Path, cfg: ScoreConfig, cache_dir: str | Path | None = None) -> Classifier:
    """Load (or reuse) the model in ``model_dir`` (any head) for ``cfg``'s device, precision, settings and backend.

    The ONNX backends (``score.backend`` onnx, onnx-int8) run on the CPU from a file exported
    (and quantized) into ``cache_dir`` on first use. The parity gate is the caller's
    (``stage.run`` runs it before any file): this only loads.
    """
    model_dir = _checked_dir(model_dir, cfg)
    onnx = cfg.backend in ONNX_BACKENDS
    if onnx and cache_dir is None:
        raise ValueError(f"score.backend {cfg.backend} needs a cache folder for its ONNX files (cache_dir)")
    device = torch.device("cpu") if cfg.backend != "torch" else resolve_device(cfg.device)
    dtype = torch.bfloat16 if (device.type == "cuda" and cfg.bf16 and torch.cuda.is_bf16_supported()) else torch.float32
    if cfg.backend == "torch-bf16":
        require_native_bf16("score.backend torch-bf16", "use score.backend torch, or onnx-int8")
        dtype = torch.bfloat16
    fingerprint = model_dir_digest(model_dir)
    base = (str(model_dir.resolve()), fingerprint, str(device), dtype, cfg.max_length, cfg.head)
    key = (*base, cfg.backend, (cpu_threads(cfg), str(Path(cache_dir).resolve())) if onnx else None)
    if key not in _cache:
        loaded = _cache.get((*base, "torch", None)) if onnx else None  # the parity gate's fp32 reference
        _cache.clear()  # one model at a time: scoring runs hold one, and GPU memory is not free
        clf = loaded or _load(model_dir, cfg, device, dtype, fingerprint)
        if onnx:
            from bertflow.bert_core.score.onnx_runtime import onnx_classifier

            clf = onnx_classifier(clf, cfg.backend, cache_dir, cpu_threads(cfg))
        _cache[key] = clf
    make_head(cfg, _cache[key])  # a cached model too: settings its head cannot honour fail here, before any file
    return _cache[key]


def check_model(model_dir: str | Path, cfg: ScoreConfig) -> None:
    """Load the model once on the CPU and drop it: a damaged model fails a run once, before any file.

    For runners whose workers load their own copy, maybe on a device (a GPU) that this process lacks.
    """
    model_dir = _checked_dir(model_dir, cfg)
    _load(model_dir, cfg, torch.device("cpu"), torch.float32, model_dir_digest(model_dir))


def _checked_dir(model_dir: str | Path, cfg: ScoreConfig) -> Path:
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise InputError(f"model directory {model_dir} has no config.json: give a local Hugging Face model dir")
    require_safe_weights(model_dir, cfg.allow_pickle_weights, "--set score.allow_pickle_weights=true")
    return model_dir


def _load(model_dir: Path, cfg: ScoreConfig, device: torch.device, dtype: torch.dtype, fingerprint: str) -> Classifier:
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from bertflow.bert_core.finetune.export import read_meta

    head = head_name(cfg, model_dir)
    auto = getattr(transformers, auto_class(head))
    try:
        hf_tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=False)
        safe = hf_model_kwargs(cfg.allow_pickle_weights)
        try:
            model, info = auto.from_pretrained(model_dir, attn_implementation="sdpa", output_loading_info=True, **safe)
        except (ValueError, ImportError):  # an architecture without SDPA support
            model, info = auto.from_pretrained(model_dir, output_loading_info=True, **safe)
    except (*load_errors(), KeyError) as exc:  # a truncated model.safetensors too: named, not a raw traceback
        raise load_error(model_dir, f"cannot load a {head} model from {model_dir}", exc) from None
    untrained = [k for k in info.get("missing_keys", ()) if not k.endswith("position_ids")]
    if untrained:
        raise InputError(f"{model_dir} has no trained {head} head (no weights for {untrained[0]}"
                         f"{f' and {len(untrained) - 1} more' if len(untrained) > 1 else ''}): fine-tune it first, "
                         f"or set score.head to what it was trained for")
    if not getattr(hf_tok, "is_fast", False):
        raise InputError(f"{model_dir}: scoring needs a fast tokenizer (tokenizer.json); "
                         f"save it with transformers' fast tokenizer first")
    if device.type == "cuda" and dtype == torch.float32:
        torch.backends.cuda.matmul.allow_tf32 = True
    model.to(device=device, dtype=dtype).eval()
    config = model.config
    max_length = cfg.max_length
    positions = getattr(config, "max_position_embeddings", None)
    if positions:
        offset = 2 if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert") else 0
        max_length = min(max_length, positions - offset)
    if 0 < getattr(hf_tok, "model_max_length", 0) < 1_000_000:
        max_length = min(max_length, hf_tok.model_max_length)
    tok = Tokenizer.from_str(hf_tok.backend_tokenizer.to_str())  # our own copy: HF calls mutate its settings
    tok.no_padding()
    tok.enable_truncation(max_length=max_length, strategy="longest_first")
    id2label = getattr(config, "id2label", None) or {}
    labels = [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(config.num_labels)]
    multi = config.num_labels == 1 or getattr(config, "problem_type", None) == "multi_label_classification"
    pad_id = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else 0
    forward_args = inspect.signature(model.forward).parameters
    uses_types = "token_type_ids" in forward_args and "token_type_ids" in getattr(hf_tok, "model_input_names", [])
    clf = Classifier(
        model=model, tokenizer=tok, device=device, dtype=dtype, labels=labels,
        activation="sigmoid" if multi else "softmax", max_length=max_length,
        max_chars=max_length * _CHARS_PER_TOKEN_CAP, pad_id=pad_id,
        pad_multiple=8 if device.type == "cuda" else 1, hidden_size=int(config.hidden_size),
        uses_token_types=uses_types, fingerprint=fingerprint, head=head, meta=read_meta(model_dir),
        unk_id=hf_tok.unk_token_id, backend="torch-bf16" if cfg.backend == "torch-bf16" else "torch",
    )
    make_head(cfg, clf)  # settings this head cannot honour fail here, once, before any file
    clf.mask_4d = _accepts_4d_mask(clf, int(getattr(config, "vocab_size", 100)))
    return clf


def _mask_4d(mask: torch.Tensor) -> torch.Tensor:
    """``(batch, 1, q, kv)`` boolean mask (True: attend) from a 2-D padding mask, as SDPA takes it."""
    b, n = mask.shape
    return mask.bool()[:, None, None, :].expand(b, 1, n, n)


def _accepts_4d_mask(clf: Classifier, vocab: int) -> bool:
    """Does this model (and transformers version) give the same logits with a prepared 4-D mask?

    transformers 5 checks ``padding_mask.all()`` on every forward with a 2-D mask: a
    device-to-host sync that drains the GPU queue each batch. A prepared mask is used
    as-is. Probed once, on the real model, so another version or architecture simply
    keeps the 2-D mask.
    """
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, max(2, vocab), (2, 6), generator=gen).to(clf.device)
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], device=clf.device)
    try:
        with torch.inference_mode():  # out[0]: the first output of any head (logits, start_logits)
            ref = clf.model(input_ids=ids, attention_mask=mask)[0].float()
            got = clf.model(input_ids=ids, attention_mask=_mask_4d(mask))[0].float()
    except Exception:  # noqa: BLE001 - any refusal means "keep the 2-D mask"
        return False
    tol = 1e-4 if clf.dtype == torch.float32 else 3e-2
    return bool(torch.allclose(ref, got, atol=tol, rtol=tol))


class Pending:
    """A batch's results on their way to the host; ``result()`` waits for them."""

    def __init__(self, arrays: tuple[torch.Tensor, ...], event: object | None):
        self._arrays, self._event = arrays, event

    def result(self) -> tuple[np.ndarray, ...]:
        if self._event is not None:
            self._event.synchronize()
        return tuple(a.numpy() for a in self._arrays)


def forward(clf: Classifier, head: Head, input_ids: torch.Tensor, attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None, padded: bool = True) -> Pending:
    """Run one padded batch (``padded=False``: no row has padding); call under ``torch.inference_mode()``.

    What comes back is the head's choice (:meth:`Head.outputs`), as float32 host arrays.
    """
    dev = clf.device
    non_blocking = dev.type == "cuda"
    ids = input_ids.to(dev, non_blocking=non_blocking)
    mask = attention_mask.to(dev, non_blocking=non_blocking)
    if not padded:
        model_mask = None  # lets SDPA pick its fastest (flash) kernel
    else:
        model_mask = _mask_4d(mask) if clf.mask_4d else mask
    kwargs = {"input_ids": ids, "attention_mask": model_mask}
    if clf.uses_token_types and token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids.to(dev, non_blocking=non_blocking)
    hidden = head.needs_hidden_states()
    out = clf.model(**kwargs, output_hidden_states=hidden) if hidden else clf.model(**kwargs)
    arrays = head.outputs(out, mask)
    if dev.type != "cuda":
        return Pending(arrays, None)
    host = []
    for a in arrays:
        h = torch.empty(a.shape, dtype=torch.float32, pin_memory=True)
        h.copy_(a, non_blocking=True)
        host.append(h)
    event = torch.cuda.Event()
    event.record()
    return Pending(tuple(host), event)
