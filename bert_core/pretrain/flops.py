"""Training FLOPs of a step and model FLOPs utilisation (MFU).

Per token, a matmul with ``N`` parameters costs ``2N`` FLOPs forward and ``4N``
backward: ``6N`` (Kaplan et al.; nanoGPT's ``estimate_mfu``). We count what the model
has to compute, with the sparse head in mind:

- encoder matmuls: ``6 * N_encoder`` per real token (embedding lookups are free);
- MLM head (transform + tied decoder): ``6 * N_head`` per masked token only;
- attention scores and weighted sums: ``2 * 2 * len^2 * hidden`` per layer and sequence
  forward, x3 with backward, i.e. ``12 * layers * hidden * sum(len^2)``.

A dense head (and the transformers peer) would count ``N_head`` on every token.
"""

from __future__ import annotations

import torch

# dense bf16 tensor-core peak, FLOP/s (vendor datasheets, no sparsity)
_PEAKS = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("L4", 121e12),
]


def step_flops(n_encoder: int, n_head: int, layers: int, hidden: int, tokens: int, masked: int, sum_sq_len: int,
               dense_head: bool = False) -> float:
    head_rows = tokens if dense_head else masked
    return 6.0 * n_encoder * tokens + 6.0 * n_head * head_rows + 12.0 * layers * hidden * sum_sq_len


def peak_flops(device: torch.device, override_tflops: float | None = None) -> float | None:
    """The accelerator's bf16 peak, or None where unknown (then no MFU is reported)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peak in _PEAKS:
        if key in name:
            return peak
    return None
