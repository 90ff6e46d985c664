"""The parity gate: a backend other than torch fp32 (``torch-bf16``, ``onnx``, ``onnx-int8``) scores nothing
until it has matched torch fp32 on a validation slice.

The slice is the fine-tune's labelled validation set when ``predictions.parquet`` sits beside
the model (sequence models), else the first ``score.parity_rows`` rows of the input. Both
models score it through the head's own encoding and forward, and the gate records:

- ``agreement``: the share of predictions that are equal (sequence: a row's label; token: a
  token's tag; qa: a window's answer start and end);
- ``max_abs_delta`` / ``mean_abs_delta``: |probability difference| over those predictions;
- with labels, both models' accuracy and the backend's drop in points.

It refuses (:class:`ParityError`, with the figures) when the drop exceeds
``score.max_metric_drop`` or agreement falls below ``score.min_agreement``. Flips near the
decision boundary are normal for int8 and mostly cancel in the metric, so agreement alone
must not be set near 1.0. The figures are cached beside the ONNX file they were measured on
(bound to its digest; for ``torch-bf16``, in the model's cache folder, bound to torch's version), so a
rerun does not measure again; the thresholds are applied anew.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from bertflow.bert_core.configtools import evolve
from bertflow.bert_core.errors import ParityError
from bertflow.bert_core.score.config import ONNX_BACKENDS, ScoreConfig
from bertflow.bert_core.score.results import FileJob
from bertflow.bert_core.stageio import atomic_write_bytes, file_digest, model_dir_digest


@dataclass(frozen=True)
class Slice:
    """The rows the gate compares on: batches (one per input file, as each file's schema is) holding the head's
    input columns, and the gold labels of their rows when known."""

    batches: tuple[pa.RecordBatch, ...]
    inputs: tuple[str, ...]
    labels: list[str | None] | None
    source: str

    @property
    def rows(self) -> int:
        return sum(b.num_rows for b in self.batches)

    def digest(self) -> str:
        """sha256 of the rows as Arrow bytes (a text column may hold invalid UTF-8: never decoded here)."""
        h = hashlib.sha256(json.dumps([self.inputs, self.source, self.labels]).encode())
        for b in self.batches:
            h.update(b.select(list(self.inputs)).serialize())
        return h.hexdigest()


@dataclass(frozen=True)
class Parity:
    """What the gate measured (fractions for agreement, points for the metric)."""

    backend: str
    source: str
    rows: int  # slice rows both models scored
    units: int  # predictions compared (rows, tokens or answer windows)
    agreement: float
    max_abs_delta: float
    mean_abs_delta: float
    metric: str | None = None  # "accuracy" when the slice has labels
    metric_fp32: float | None = None
    metric_backend: float | None = None
    bound_to: str = ""  # what computed them: the ONNX file's digest, or torch's version for torch-bf16

    @property
    def metric_drop(self) -> float | None:
        """Points lost against torch fp32 (negative: the backend scored better)."""
        if self.metric_fp32 is None or self.metric_backend is None:
            return None
        return self.metric_fp32 - self.metric_backend

    def problems(self, cfg: ScoreConfig) -> list[str]:
        found = []
        drop = self.metric_drop
        if drop is not None and drop > cfg.max_metric_drop:
            found.append(f"{self.metric} {self.metric_backend:.2f} against {self.metric_fp32:.2f} with torch fp32, "
                         f"{drop:.2f} points lower (score.max_metric_drop is {cfg.max_metric_drop:g})")
        if self.agreement < cfg.min_agreement:
            found.append(f"agreement with torch fp32 {self.agreement:.2%} (score.min_agreement is "
                         f"{cfg.min_agreement:g})")
        return found

    def summary(self) -> str:
        text = f"agreement {self.agreement:.2%} over {self.units} predictions"
        if self.metric_drop is not None:
            text += (f", {self.metric} {self.metric_backend:.2f} against {self.metric_fp32:.2f} "
                     f"({-self.metric_drop:+.2f} points)")
        return (f"{text}, max |delta p| {self.max_abs_delta:.4f}, mean {self.mean_abs_delta:.5f}, "
                f"on {self.rows} rows of {self.source}")

    def metrics(self) -> dict[str, float]:
        """For the run's metrics (MLflow): the figures, prefixed ``parity_``."""
        out = {"parity_rows": float(self.rows), "parity_agreement": self.agreement,
               "parity_max_abs_delta": self.max_abs_delta, "parity_mean_abs_delta": self.mean_abs_delta}
        if self.metric_drop is not None:
            out.update(parity_metric_fp32=self.metric_fp32, parity_metric=self.metric_backend,
                       parity_metric_delta=-self.metric_drop)
        return out

    def to_dict(self) -> dict:
        return {**asdict(self), "metric_drop": self.metric_drop}


def gate(cfg: ScoreConfig, model_dir: str | Path, cache_dir: str | Path, jobs: list[FileJob]) -> Parity | None:
    """Measure (or read the cached figures of) ``cfg.backend`` against torch fp32; ParityError when it falls short.

    None when there is nothing to compare on (no validation set and no scorable input row):
    then there is nothing to score either.
    """
    from bertflow.bert_core.score.heads import head_name
    from bertflow.bert_core.score.onnx_export import model_folder

    head = head_name(cfg, model_dir)
    piece = validation_slice(cfg, model_dir, head) or input_slice(cfg, jobs, head)
    if piece is None:
        return None
    folder = model_folder(cache_dir, model_dir_digest(model_dir))
    settings = [cfg.backend, head, cfg.max_length, cfg.stride, cfg.max_windows, cfg.non_string_text, piece.digest()]
    key = hashlib.sha256(json.dumps(settings).encode()).hexdigest()
    verdict = folder / f"parity-{cfg.backend}-{key[:16]}.json"
    parity = _read(verdict, folder)
    if parity is None:
        parity = replace(measure(cfg, model_dir, cache_dir, piece, head), bound_to=_bound_to(cfg.backend, folder))
        folder.mkdir(parents=True, exist_ok=True)  # torch-bf16 exports nothing that would have made it
        atomic_write_bytes(verdict, json.dumps(asdict(parity), indent=2, sort_keys=True).encode())
    problems = parity.problems(cfg)
    if problems:
        error = ParityError(f"score.backend {cfg.backend} failed its parity gate: {'; '.join(problems)} "
                            f"[{parity.summary()}]. Score with score.backend=torch (or onnx for fp32), or "
                            f"loosen score.min_agreement / score.max_metric_drop if these figures are acceptable")
        error.figures = parity.metrics()  # for the caller's tracking: the refusal's numbers, not only its text
        raise error
    return parity


def validation_slice(cfg: ScoreConfig, model_dir: str | Path, head: str) -> Slice | None:
    """The first ``score.parity_rows`` rows of the fine-tune's labelled validation set, for a sequence model."""
    from bertflow.bert_core.finetune.evaluate import PREDICTIONS, labelled_validation

    if head != "sequence":
        return None
    table = labelled_validation(model_dir)
    if table is None or table.num_rows == 0:
        return None
    table = table.slice(0, cfg.parity_rows).combine_chunks()
    inputs = ("text", "text_pair") if "text_pair" in table.column_names else ("text",)
    where = Path(model_dir).parent / PREDICTIONS
    return Slice(tuple(table.to_batches()), inputs, table.column("label").to_pylist(), f"the validation set {where}")


def input_slice(cfg: ScoreConfig, jobs: list[FileJob], head: str) -> Slice | None:
    """The first ``score.parity_rows`` rows ``score.where`` selects, over the input files in plan order."""
    from bertflow.bert_core.score.heads import input_columns
    from bertflow.bert_core.score.one_file import selected_rows

    names = [col for _, col in input_columns(cfg, head)]
    batches, have = [], 0
    for job in jobs:
        if job.problem is not None or job.rows == 0:
            continue
        table = selected_rows(cfg, job, names, head=head, limit=cfg.parity_rows - have).combine_chunks()
        batches += table.to_batches()
        have += table.num_rows
        if have >= cfg.parity_rows:
            break
    if not have:
        return None
    return Slice(tuple(batches), tuple(names), None, f"the input {cfg.input} (first rows)")


def measure(cfg: ScoreConfig, model_dir: str | Path, cache_dir: str | Path, piece: Slice, head: str) -> Parity:
    """Score ``piece`` with torch fp32 on the CPU and with ``cfg.backend``; compare the head's outputs."""
    from bertflow.bert_core.score.heads import make_head
    from bertflow.bert_core.score.model import cpu_threads, forward, load_classifier, torch_threads
    from bertflow.bert_core.score.onnx_runtime import onnx_classifier

    torch_cfg = evolve(cfg, backend="torch", device="cpu")
    ref = load_classifier(model_dir, torch_cfg)
    if cfg.backend == "torch-bf16":
        cand = load_classifier(model_dir, cfg)
    else:
        cand = onnx_classifier(ref, cfg.backend, cache_dir, cpu_threads(cfg))
    ref_head, cand_head = make_head(torch_cfg, ref), make_head(cfg, cand)
    n = piece.rows
    row_pred = {"fp32": np.full(n, -1), "backend": np.full(n, -1)}
    scored = np.zeros(n, dtype=bool)
    agree, units, deltas = 0, 0, []
    window = cfg.batch_size * cfg.sort_window  # batched as scoring batches: int8 activation scales are per batch
    offset = 0
    with torch_threads(cpu_threads(cfg)), torch.inference_mode():
        for batch in piece.batches:
            for start in range(offset, offset + batch.num_rows, window):
                enc = ref_head.encode(batch.slice(start - offset, window), piece.inputs, False)
                scored[start:start + enc.n] = enc.scored
                for b in enc.batches:
                    args = (b.input_ids, b.attention_mask, b.token_type_ids, b.padded)
                    r_units, r_probs = _units(head, forward(ref, ref_head, *args).result(), b.attention_mask)
                    c_units, c_probs = _units(head, forward(cand, cand_head, *args).result(), b.attention_mask)
                    agree += int((r_units == c_units).sum())
                    units += len(r_units)
                    deltas.append(np.abs(r_probs - c_probs).ravel())
                    if head == "sequence":
                        row_pred["fp32"][start + b.rows], row_pred["backend"][start + b.rows] = r_units, c_units
            offset += batch.num_rows
    delta = np.concatenate(deltas) if deltas else np.zeros(1)
    metric = fp32 = ours = None
    if piece.labels is not None and head == "sequence":
        index = {name: i for i, name in enumerate(ref.labels)}
        gold = np.array([index.get(y, -2) if y is not None else -2 for y in piece.labels])
        keep = scored & (gold >= 0)
        if keep.any():
            metric = "accuracy"
            fp32 = float((row_pred["fp32"][keep] == gold[keep]).mean() * 100)
            ours = float((row_pred["backend"][keep] == gold[keep]).mean() * 100)
    return Parity(backend=cfg.backend, source=piece.source, rows=int(scored.sum()), units=units,
                  agreement=agree / units if units else 1.0, max_abs_delta=float(delta.max()),
                  mean_abs_delta=float(delta.mean()), metric=metric, metric_fp32=fp32, metric_backend=ours)


def _units(head: str, arrays: tuple[np.ndarray, ...], mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(predictions, their probabilities)`` of one batch: a row's label, a token's tag, a window's answer."""
    real = mask.numpy().astype(bool)
    if head == "sequence":
        probs = arrays[0]
        return probs.argmax(-1), probs
    if head == "token":
        probs = arrays[0][real]  # (real tokens, tags)
        return probs.argmax(-1), probs
    start, end = (_masked_softmax(a, real) for a in arrays[:2])  # qa: start and end over each window's tokens
    width = start.shape[1]
    return start.argmax(-1) * width + end.argmax(-1), np.concatenate([start[real], end[real]])


def _masked_softmax(logits: np.ndarray, real: np.ndarray) -> np.ndarray:
    x = np.where(real, logits.astype(np.float64), -np.inf)
    x = np.exp(x - x.max(axis=-1, keepdims=True))
    return x / x.sum(axis=-1, keepdims=True)


def _read(path: Path, folder: Path) -> Parity | None:
    """The cached figures, if what computed them is still what would run (:func:`_bound_to`)."""
    try:
        parity = Parity(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None
    return parity if parity.bound_to and parity.bound_to == _bound_to(parity.backend, folder) else None


def _bound_to(backend: str, folder: Path) -> str:
    """What computes ``backend``'s outputs for the model in ``folder``: its ONNX file (digest; "" when missing
    or built by other versions), or, for torch-bf16, torch's own kernels (its version)."""
    from bertflow.bert_core.score.onnx_export import FILES, is_current

    if backend not in ONNX_BACKENDS:
        return f"torch {torch.__version__}"
    onnx_file = folder / FILES[backend]
    return _digest(onnx_file) if onnx_file.is_file() and is_current(folder) else ""


_digests: dict[tuple, str] = {}


def _digest(path: Path) -> str:
    """sha256 of an ONNX file, once per (path, size, mtime) in a process (an fp32 export is hundreds of MB)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _digests:
        _digests[key] = file_digest(path)
    return _digests[key]
