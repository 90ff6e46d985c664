"""Optimizer construction: AdamW (fused on CUDA) or LAMB, with BERT's weight-decay groups."""

from __future__ import annotations

import torch
from torch import nn

from bertflow.bert_core.pretrain.config import PretrainConfig
from bertflow.bert_core.pretrain.lamb import Lamb


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings; not biases or LayerNorm weights (as BERT does)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: PretrainConfig, device: torch.device) -> torch.optim.Optimizer:
    groups = param_groups(model, cfg.weight_decay)
    betas = (cfg.adam_beta1, cfg.adam_beta2)
    if cfg.optimizer == "lamb":
        return Lamb(groups, lr=cfg.lr, betas=betas, eps=cfg.adam_eps)
    # fused: one kernel for the whole update on CUDA; foreach elsewhere
    fused = device.type == "cuda"
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, eps=cfg.adam_eps, fused=fused or None,
                             foreach=None if fused else True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
