"""Whether this CPU multiplies bf16 natively, for the settings that run in bf16 on a CPU.

On AVX-512 BF16 or AMX CPUs, oneDNN runs bf16 matmuls natively (about 1.4-2x fp32 for MiniLM,
benchmarks/RESULTS.md); elsewhere torch emulates them and bf16 is slower than fp32, so a setting
asking for it there is refused rather than quietly slowing the job down.
"""

from __future__ import annotations

import torch

from bertflow.bert_core.errors import ConfigError


def cpu_has_native_bf16() -> bool:
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def require_native_bf16(setting: str, instead: str) -> None:
    """ConfigError naming ``setting`` (and what to use ``instead``) when this CPU lacks native bf16."""
    if not cpu_has_native_bf16():
        raise ConfigError(f"{setting}: this CPU has no native bf16 (AVX-512 BF16 or AMX), where bf16 runs slower "
                          f"than fp32; {instead}")
