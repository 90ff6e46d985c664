"""Run an exported model on ONNX Runtime's CPU provider, behind the same call as the Hugging Face model.

:class:`OrtModel` takes the keyword arguments ``forward`` passes a transformers model and
returns an object with the attributes the heads read (``logits``, ``start_logits``,
``end_logits``, ``hidden_states``), as CPU tensors. So planning, batching, the heads, the
writer and the commit are the torch backend's code; only the arithmetic moves.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from bertflow.bert_core.score.model import Classifier
from bertflow.bert_core.score.onnx_export import OUTPUTS, ensure_onnx


class OrtModel:
    """An ``onnxruntime.InferenceSession`` of one exported head, called like its transformers model."""

    def __init__(self, path: str | Path, head: str, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads  # the calling thread included, as torch counts its threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path, self.head, self.threads = Path(path), head, threads
        self.inputs = {i.name for i in self.session.get_inputs()}

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None, output_hidden_states: bool = False) -> SimpleNamespace:
        ids = _int64(input_ids)
        feed = {"input_ids": ids,
                "attention_mask": _int64(attention_mask) if attention_mask is not None else np.ones_like(ids)}
        if "token_type_ids" in self.inputs:
            feed["token_type_ids"] = _int64(token_type_ids) if token_type_ids is not None else np.zeros_like(ids)
        names = list(OUTPUTS[self.head])
        if self.head == "sequence" and not output_hidden_states:
            names = names[:1]  # the hidden states are not copied out unless an embedding column needs them
        arrays = dict(zip(names, (torch.from_numpy(a) for a in self.session.run(names, feed))))
        if "last_hidden_state" in arrays:
            arrays["hidden_states"] = (arrays.pop("last_hidden_state"),)
        return SimpleNamespace(**arrays)


def onnx_classifier(clf: Classifier, backend: str, cache_dir: str | Path, threads: int) -> Classifier:
    """``clf`` (a torch fp32 model on the CPU) with its model replaced by ``backend``'s ONNX Runtime session.

    The ONNX file is exported (and quantized) into ``cache_dir`` on first use. The torch
    model is not kept: the returned classifier holds the tokenizer, labels and settings.
    """
    path = ensure_onnx(clf, backend, cache_dir)
    return dataclasses.replace(clf, model=OrtModel(path, clf.head, threads), mask_4d=False, derived={},
                               backend=backend)


def _int64(t: torch.Tensor) -> np.ndarray:
    a = t.numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return a if a.dtype == np.int64 else a.astype(np.int64)
