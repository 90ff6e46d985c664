"""Process-group set-up under ``torchrun`` (DDP), and the few collectives training needs.

Without ``torchrun`` (no ``WORLD_SIZE`` in the environment) everything here is a no-op
on a world of one. Backend: NCCL when training on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from bertflow.bert_core.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we created the process group, so we destroy it

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"pretrain.device is {pref!r} but torch sees no CUDA device (use cpu or auto)")
        return torch.device(f"cuda:{local_rank}") if pref == "cuda" else torch.device(pref)
    return torch.device("cpu")


def world_size() -> int:
    """Processes ``torchrun`` started (1 without it), known before :func:`setup`."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup(device_pref: str) -> tuple[DistInfo, torch.device]:
    world = world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local)
    if world <= 1:
        return DistInfo(), device
    owns = False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, owns_group=owns), device


def teardown(info: DistInfo) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    if info.active:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.active:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_float(value: float, info: DistInfo, device: torch.device) -> float:
    """Rank 0's value everywhere (so every rank takes the same LR and stop decision)."""
    if not info.active:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.active:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out
