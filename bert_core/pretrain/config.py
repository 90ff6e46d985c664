"""Typed configuration of pretraining: model shape, optimisation, budgets, checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bert_core.configtools import check


@dataclass(frozen=True)
class PretrainConfig:
    # model shape
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    pre_ln: bool = False
    dropout: float = 0.1
    # optimisation
    batch_size: int = 256
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 1000
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    optimizer: Literal["adamw", "lamb"] = "adamw"
    max_grad_norm: float = 1.0
    # budgets: whichever ends first; the LR schedule is fitted to it
    max_steps: int = 10000
    budget_minutes: float | None = None
    # runtime
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    bf16: bool = True  # bf16 autocast where the device supports it
    compile: bool = False  # torch.compile the model
    num_workers: int = 2  # data-loader worker processes
    seed: int = 42
    log_every: int = 10
    checkpoint_every: int = 500
    init_from: str | None = None  # a bertflow checkpoint or HF BERT directory to continue from

    def __post_init__(self) -> None:
        check(self.hidden_size % self.num_heads == 0, "pretrain.hidden_size must be divisible by pretrain.num_heads")
        check(self.num_layers >= 1, "pretrain.num_layers must be >= 1")
        check(self.batch_size >= 1 and self.grad_accum >= 1, "pretrain.batch_size and grad_accum must be >= 1")
        check(self.lr > 0, "pretrain.lr must be > 0")
        check(self.max_steps >= 1, "pretrain.max_steps must be >= 1")
        check(self.budget_minutes is None or self.budget_minutes > 0, "pretrain.budget_minutes must be > 0")
        check(0.0 <= self.dropout < 1.0, "pretrain.dropout must be in [0, 1)")
