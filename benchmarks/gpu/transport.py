"""A pretraining checkpoint slim enough to travel through the device tool, and back into a full one.

A bertflow checkpoint (``bert_core/pretrain/checkpoint.py``) holds fp32 weights, AdamW's two
fp32 moments, RNG states and the trainer state: 12 bytes per parameter, 250+ MB for a
BERT-small. What comes back from ``$OUT`` is capped at 8 files x 16 MiB (64 MiB together), and
the next call's carry at 64 MiB *including* the pretraining corpus. So between chunks we move:

- the weights in bf16 (2 bytes/parameter; one rounding per chunk boundary, ~0.4% relative,
  far below a training step's update early on, and only 2 boundaries in a 3-chunk run);
- AdamW's second moment ``exp_avg_sq`` factored as in Adafactor (Shazeer & Stern 2018):
  for a matrix, its row means and column means, rebuilt as ``outer(row, col) / mean``; vectors
  kept whole. This keeps each parameter's step size close to what it was, so no re-warmup is
  needed. Zero rows (e.g. never-used position embeddings) stay exactly zero;
- the first moment ``exp_avg`` is dropped and restarts at zero. The per-parameter ``step``
  counter is kept, so bias correction stays ~1 and momentum rebuilds within ~1/(1-beta1) = 10 steps;
- ``rng.pt``, ``trainer_state.json`` and the run dir's ``run.json`` byte for byte (the data
  position, schedule state and elapsed minutes resume exactly).

Everything goes into one safetensors blob (raw files as uint8 tensors), zstd-compressed with
pyarrow's codec, split into parts of at most 15 MiB, with ``ckpt.json`` listing sizes and sha256s.
:func:`unpack` rebuilds ``run_dir/run.json`` + ``run_dir/checkpoints/step-N/`` with
``bert_core.pretrain.checkpoint.save_checkpoint``, so the stage resumes it like any checkpoint
(the approximation is in the optimizer moments and the bf16 rounding, nothing else).

No bert_core change is needed; if a slim save ever moves into bert_core it should be a separate
``export_slim``/``import_slim`` pair, not a change to the checkpoint's meaning.
"""

from __future__ import annotations

import hashlib
import json
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

FORMAT = "bertflow-slim-checkpoint/1"
INDEX = "ckpt.json"
PART_BYTES = 15 * (1 << 20)
RAW_FILES = ("rng.pt", "trainer_state.json")


def _sha(data: bytes | memoryview) -> str:
    return hashlib.sha256(data).hexdigest()


def _codec(level: int | None = None):
    import pyarrow as pa

    return pa.Codec("zstd", compression_level=level) if level is not None else pa.Codec("zstd")


def pack(checkpoint_dir: Path, run_dir: Path, out: Path, prefix: str = "ckpt", level: int = 6,
         part_bytes: int = PART_BYTES, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``out/<prefix>.partNN`` + ``out/<prefix>.json`` from a checkpoint dir; return the index."""
    from safetensors.torch import save

    from bert_core.pretrain.checkpoint import MODEL_FILE, OPTIMIZER_FILE, load_safetensors, load_torch

    t0 = time.perf_counter()
    model = load_safetensors(checkpoint_dir / MODEL_FILE)
    opt = load_torch(checkpoint_dir / OPTIMIZER_FILE)
    tensors: dict[str, torch.Tensor] = {f"model/{k}": v.to(torch.bfloat16).contiguous() for k, v in model.items()}
    state_meta: dict[str, dict[str, Any]] = {}
    for idx, entry in opt["state"].items():
        meta: dict[str, Any] = {}
        for key, value in entry.items():
            if not torch.is_tensor(value):
                meta[key] = {"kind": "value", "value": value}
            elif key == "step":
                meta[key] = {"kind": "step", "value": float(value.item()), "dtype": str(value.dtype)}
            elif key == "exp_avg_sq" and value.ndim == 2:
                v = value.float()
                tensors[f"opt/{idx}/{key}/row"] = v.mean(dim=1).contiguous()
                tensors[f"opt/{idx}/{key}/col"] = v.mean(dim=0).contiguous()
                meta[key] = {"kind": "factored", "shape": list(value.shape), "dtype": str(value.dtype)}
            elif key == "exp_avg_sq":
                tensors[f"opt/{idx}/{key}/full"] = value.float().contiguous()
                meta[key] = {"kind": "full", "shape": list(value.shape), "dtype": str(value.dtype)}
            else:  # exp_avg and anything else: restarts at zero
                meta[key] = {"kind": "zeros", "shape": list(value.shape), "dtype": str(value.dtype)}
        state_meta[str(idx)] = meta
    for name in RAW_FILES:
        tensors[f"raw/{name}"] = torch.frombuffer(bytearray((checkpoint_dir / name).read_bytes()), dtype=torch.uint8)
    tensors["raw/run.json"] = torch.frombuffer(bytearray((run_dir / "run.json").read_bytes()), dtype=torch.uint8)
    trainer_state = json.loads((checkpoint_dir / "trainer_state.json").read_text(encoding="utf-8"))
    meta = {"format": FORMAT, "checkpoint": checkpoint_dir.name, "step": trainer_state.get("step"),
            "param_groups": opt["param_groups"], "state": state_meta}
    blob = save(tensors, metadata={"bertflow_slim": json.dumps(meta)})
    packed = _codec(level).compress(blob, asbytes=True)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{prefix}.part*"):
        old.unlink()
    parts = []
    for i in range(0, max(len(packed), 1), part_bytes):
        name = f"{prefix}.part{i // part_bytes:02d}"
        piece = packed[i:i + part_bytes]
        (out / name).write_bytes(piece)
        parts.append({"file": name, "bytes": len(piece), "sha256": _sha(piece)})
    index = {
        "format": FORMAT, "step": trainer_state.get("step"), "elapsed_minutes": trainer_state.get("elapsed_minutes"),
        "finished": trainer_state.get("finished"), "tokens": trainer_state.get("tokens"),
        "blob_bytes": len(blob), "blob_sha256": _sha(blob), "packed_bytes": len(packed), "codec": "zstd",
        "parts": parts, "params": int(sum(v.numel() for v in model.values())),
        "full_checkpoint_bytes": int(sum(p.stat().st_size for p in checkpoint_dir.iterdir() if p.is_file())),
        "seconds": round(time.perf_counter() - t0, 2), **(extra or {}),
    }
    (out / f"{prefix}.json").write_text(json.dumps(index, indent=2), encoding="utf-8")
    return index


def read_index(state_dir: Path, prefix: str = "ckpt") -> dict[str, Any] | None:
    path = state_dir / f"{prefix}.json"
    if not path.is_file():
        return None
    index = json.loads(path.read_text(encoding="utf-8"))
    if index.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} index")
    return index


def verify(state_dir: Path, prefix: str = "ckpt") -> dict[str, Any]:
    """The index, after checking every part's size and sha256 (a truncated copy fails here, not mid-run)."""
    index = read_index(state_dir, prefix)
    if index is None:
        raise FileNotFoundError(f"{state_dir}/{prefix}.json not found")
    for part in index["parts"]:
        data = (state_dir / part["file"]).read_bytes()
        if len(data) != part["bytes"] or _sha(data) != part["sha256"]:
            raise ValueError(f"{state_dir / part['file']}: size or sha256 differs from {prefix}.json (copy it again)")
    return index


def _read_blob(state_dir: Path, index: dict[str, Any]) -> bytes:
    packed = b"".join((state_dir / p["file"]).read_bytes() for p in index["parts"])
    blob = _codec().decompress(packed, decompressed_size=index["blob_bytes"], asbytes=True)
    if _sha(blob) != index["blob_sha256"]:
        raise ValueError(f"{state_dir}: the decompressed checkpoint does not match its sha256")
    return blob


def _blob_metadata(blob: bytes) -> dict[str, Any]:
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    return json.loads(header["__metadata__"]["bertflow_slim"])


def load(state_dir: Path, prefix: str = "ckpt", v_mode: str = "factored"
         ) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, bytes], dict[str, Any], dict[str, Any]]:
    """(index, fp32 model state, raw files, rebuilt optimizer state dict, metadata)."""
    from safetensors.torch import load as st_load

    index = verify(state_dir, prefix)
    blob = _read_blob(state_dir, index)
    meta = _blob_metadata(blob)
    tensors = st_load(blob)
    model = {k[len("model/"):]: v.to(torch.float32) for k, v in tensors.items() if k.startswith("model/")}
    raw = {k[len("raw/"):]: bytes(v.numpy().tobytes()) for k, v in tensors.items() if k.startswith("raw/")}
    state: dict[int, dict[str, Any]] = {}
    for idx, entries in meta["state"].items():
        rebuilt: dict[str, Any] = {}
        for key, m in entries.items():
            kind = m["kind"]
            if kind == "value":
                rebuilt[key] = m["value"]
            elif kind == "step":
                rebuilt[key] = torch.tensor(m["value"], dtype=_dtype(m["dtype"]))
            elif v_mode == "zeros" and key == "exp_avg_sq":  # experiments only: what dropping v would do
                rebuilt[key] = torch.zeros(m["shape"], dtype=_dtype(m["dtype"]))
            elif kind == "factored":
                row = tensors[f"opt/{idx}/{key}/row"]
                col = tensors[f"opt/{idx}/{key}/col"]
                mean = row.mean()
                v = torch.outer(row, col) / mean if float(mean) > 0 else torch.zeros(m["shape"])
                rebuilt[key] = v.to(_dtype(m["dtype"])).reshape(m["shape"])
            elif kind == "full":
                rebuilt[key] = tensors[f"opt/{idx}/{key}/full"].to(_dtype(m["dtype"])).reshape(m["shape"])
            else:
                rebuilt[key] = torch.zeros(m["shape"], dtype=_dtype(m["dtype"]))
        state[int(idx)] = rebuilt
    groups = [{**g, "betas": tuple(g["betas"])} if isinstance(g.get("betas"), list) else g for g in meta["param_groups"]]
    optimizer = {"state": state, "param_groups": groups}
    return index, model, raw, optimizer, meta


def unpack(state_dir: Path, run_dir: Path, keep: int = 2, prefix: str = "ckpt",
           v_mode: str = "factored") -> dict[str, Any]:
    """Rebuild ``run_dir/run.json`` and ``run_dir/checkpoints/step-N`` from a slim checkpoint; return the index."""
    from bert_core.pretrain.checkpoint import load_torch, save_checkpoint

    index, model, raw, optimizer, meta = load(state_dir, prefix, v_mode)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "run.json").write_bytes(raw["run.json"])
    with tempfile.TemporaryDirectory() as tmp:
        rng_path = Path(tmp) / "rng.pt"
        rng_path.write_bytes(raw["rng.pt"])
        rng = load_torch(rng_path)  # weights_only=True, as every checkpoint load
    trainer_state = json.loads(raw["trainer_state.json"].decode("utf-8"))
    trainer_state["restored_from_slim"] = {"step": index["step"], "note": "bf16 weights, factored exp_avg_sq, "
                                           "exp_avg restarted at zero (benchmarks/gpu/transport.py)"}
    save_checkpoint(run_dir, int(trainer_state["step"]), model, optimizer, rng, trainer_state, keep)
    return index


def slim_bytes_estimate(params: int, compress_ratio: float = 0.85, overhead: int = 600_000) -> int:
    """What :func:`pack` will write for ``params`` parameters: bf16 weights after zstd, plus factors and raw files."""
    return int(params * 2 * compress_ratio) + overhead


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name.replace("torch.", ""))
