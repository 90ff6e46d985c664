"""The pretraining loop: budgets, gradient accumulation, metrics, checkpoints, resume.

One optimizer step: ``grad_accum`` micro-batches forward/backward (DDP gradient sync
on the last one only), clip, step, LR update. The step itself never waits for the GPU:
losses and accuracy counts accumulate in device tensors and are read (one sync) every
``log_every`` steps; the LR is a Python float computed from the step count and the
wall clock.
"""

from __future__ import annotations

import contextlib
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from bertflow.bert_core.errors import InputError
from bertflow.bert_core.optim import Schedule, build_optimizer, set_lr
from bertflow.bert_core.pretrain import checkpoint as ckpt
from bertflow.bert_core.pretrain.config import PretrainConfig
from bertflow.bert_core.pretrain.data import PretrainStream, make_loader
from bertflow.bert_core.pretrain.distributed import DistInfo, all_gather_objects, all_reduce_sum, barrier, broadcast_float
from bertflow.bert_core.pretrain.flops import peak_flops, step_flops
from bertflow.bert_core.pretrain.inputs import DataInfo
from bertflow.bert_core.pretrain.model import BertForPretraining, ModelConfig, count_parameters
from bertflow.bert_core.stageio import MetricsFn, ProgressFn, report

_SUMS = ("loss", "mlm_loss", "mlm_correct", "mlm_count", "nsp_loss", "nsp_correct", "nsp_count")
_SHOWN = ("loss", "mlm_accuracy", "tokens_per_s")  # what a progress display shows beside the step count


@dataclass
class TrainState:
    """Progress that a checkpoint carries besides weights, optimizer and RNG."""

    step: int = 0
    micro_batches: int = 0  # global micro-batches consumed (all ranks)
    rows: int = 0  # global row offset into the cyclic data stream
    tokens: int = 0  # real tokens trained on (all ranks)
    elapsed_minutes: float = 0.0
    warmup_end: float | None = None  # schedule progress at which warmup ended
    finished: bool = False
    last_metrics: dict[str, float] | None = None


@dataclass(frozen=True)
class RunSpec:
    """Everything fixed for a run directory (compared on resume)."""

    world_size: int
    fingerprint: dict[str, Any]


class Trainer:
    def __init__(self, cfg: PretrainConfig, model_cfg: ModelConfig, data: DataInfo, out_dir: Path, dist: DistInfo,
                 device: torch.device, spec: RunSpec, on_metrics: MetricsFn | None = None,
                 on_progress: ProgressFn | None = None) -> None:
        self.cfg = cfg
        self.model_cfg = model_cfg
        self.data = data
        self.out_dir = out_dir
        self.dist = dist
        self.device = device
        self.spec = spec
        self.on_metrics = on_metrics if dist.is_main else None
        self.on_progress = on_progress if dist.is_main else None
        self.schedule = Schedule(cfg.lr, cfg.warmup_steps, cfg.schedule, cfg.min_lr_ratio, cfg.max_steps,
                                 cfg.budget_minutes)
        self.state = TrainState()
        self.max_predictions = cfg.max_predictions or data.max_predictions
        self._seed_everything(cfg.seed + dist.rank)
        self.model = BertForPretraining(model_cfg, sparse_mlm=cfg.sparse_mlm).to(device)
        self.params = count_parameters(self.model)
        self.optimizer = build_optimizer(self.model, cfg.lr, cfg.weight_decay, device, cfg.optimizer,
                                         (cfg.adam_beta1, cfg.adam_beta2), cfg.adam_eps)
        self.peak = peak_flops(device, cfg.peak_tflops)
        self.use_bf16 = cfg.bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported()
        if device.type == "cuda" and cfg.tf32:
            torch.set_float32_matmul_precision("high")  # TF32 for the fp32 matmuls autocast leaves
            torch.backends.cudnn.allow_tf32 = True
        self._rng_to_restore: dict[str, Any] | None = None

    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    # -- state in -------------------------------------------------------------------------
    def load_init(self, state: dict[str, torch.Tensor], source: str) -> dict[str, list[str]]:
        """Start from pretrained weights; heads absent from ``source`` keep their fresh init."""
        own = self.model.state_dict()
        self._check_vocab(state, source)
        usable = {k: v for k, v in state.items() if k in own}
        for k, v in usable.items():
            if v.shape != own[k].shape:
                raise InputError(f"{source}: weight {k} has shape {tuple(v.shape)}, the model needs {tuple(own[k].shape)}")
        missing = sorted(set(own) - set(usable))
        not_heads = [k for k in missing if not k.startswith(("mlm_head.", "nsp_head."))]
        if not_heads:
            raise InputError(f"{source} lacks encoder weights ({', '.join(not_heads[:3])}...): not a BERT checkpoint?")
        self.model.load_state_dict(usable, strict=False)
        return {"fresh": missing, "ignored": sorted(set(state) - set(own))}

    def restore(self, point: ckpt.Checkpoint) -> None:
        self._check_vocab(point.model, str(point.path / ckpt.MODEL_FILE))
        try:
            self.model.load_state_dict(point.model, strict=True)
        except RuntimeError as exc:
            raise InputError(f"{point.path / ckpt.MODEL_FILE} does not fit this model: {exc}") from None
        try:
            self.optimizer.load_state_dict(point.optimizer)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise InputError(f"{point.path / ckpt.OPTIMIZER_FILE} does not fit this optimizer: {exc}") from None
        s = point.state
        try:
            self.state = TrainState(**{k: s[k] for k in asdict(TrainState()) if k in s})
        except TypeError as exc:
            raise InputError(f"{point.path / ckpt.STATE_FILE} is not a trainer state: {exc}") from None
        if len(point.rng) == self.dist.world_size:
            self._rng_to_restore = point.rng[self.dist.rank]

    def _check_vocab(self, state: dict[str, torch.Tensor], source: str) -> None:
        word = state.get("embeddings.word.weight")
        if word is not None and word.shape[0] != self.model_cfg.vocab_size:
            raise InputError(
                f"vocab size mismatch: {source} has {word.shape[0]} word embeddings but the model for data "
                f"{self.data.data_dir} (vocab_size {self.data.vocab_size}) needs {self.model_cfg.vocab_size}"
            )

    # -- the loop -------------------------------------------------------------------------
    def fit(self) -> dict[str, float]:
        cfg, st = self.cfg, self.state
        if st.finished:
            return dict(st.last_metrics or {})
        model = self.model
        net: torch.nn.Module = model
        if self.dist.active:
            net = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:
            net = torch.compile(net, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
        pin = self.device.type == "cuda"
        stream = PretrainStream(self.data, cfg.batch_size, st.micro_batches, self.dist.rank, self.dist.world_size,
                                cfg.seed, self.max_predictions)
        loader = make_loader(stream, cfg.num_workers, pin, cfg.prefetch_factor)
        batches = iter(loader)
        if self._rng_to_restore is not None:  # after everything that draws random numbers at set-up
            ckpt.restore_rng(self._rng_to_restore)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self.use_bf16 else contextlib.nullcontext())
        model.train()
        self._reset_window()
        session_start, session_tokens = time.perf_counter(), 0
        base_minutes = st.elapsed_minutes
        last: dict[str, float] = dict(st.last_metrics or {})
        checkpoint = st.step if st.step else None  # the step of the last checkpoint (a resumed run starts at one)
        grad_norm = None
        try:
            done = self._budget_done(base_minutes)
            while not done:
                progress = self.schedule.progress(st.step, st.elapsed_minutes)
                st.warmup_end = self.schedule.warmup_end(st.step, progress, st.warmup_end)
                lr = self.schedule.lr_at(st.step, progress, st.warmup_end)
                set_lr(self.optimizer, lr)
                for micro in range(cfg.grad_accum):
                    batch = next(batches).to(self.device, non_blocking=pin)
                    sync = net.no_sync() if self.dist.active and micro < cfg.grad_accum - 1 else contextlib.nullcontext()
                    with sync:
                        with autocast:
                            out = net(batch)
                        (out["loss"] / cfg.grad_accum).backward()
                    self._accumulate(out, batch)
                if cfg.max_grad_norm > 0:
                    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                st.step += 1
                st.micro_batches += cfg.grad_accum * self.dist.world_size
                st.rows = st.micro_batches * cfg.batch_size
                minutes = base_minutes + (time.perf_counter() - session_start) / 60.0
                st.elapsed_minutes = minutes
                done = self._budget_done(minutes)
                if st.step % cfg.log_every == 0 or done or st.step % cfg.checkpoint_every == 0:
                    last = self._flush_window(lr, grad_norm)
                    session_tokens += int(last["window_tokens"])
                    if st.step % cfg.log_every == 0 or done:
                        self._emit(last)
                if st.step % cfg.checkpoint_every == 0 or done:
                    st.finished = done
                    st.last_metrics = self._summary(last, session_tokens, session_start)
                    self.save()
                    checkpoint = st.step
                report(self.on_progress, st.step, self._expected_steps(done), "steps",
                       **{k: last[k] for k in _SHOWN if k in last}, checkpoint=checkpoint)
        finally:
            del batches  # stops the loader's worker processes
        return dict(st.last_metrics or {})

    def _expected_steps(self, done: bool) -> int:
        """Total steps for progress bars: max_steps, or the clock's estimate under a time budget."""
        st = self.state
        if done or self.cfg.budget_minutes is None:
            return st.step if done else self.cfg.max_steps
        progress = self.schedule.progress(st.step, st.elapsed_minutes)
        return min(self.cfg.max_steps, max(st.step + 1, round(st.step / max(progress, 1e-9))))

    def _budget_done(self, minutes: float) -> bool:
        if self.cfg.budget_minutes is not None:
            minutes = broadcast_float(minutes, self.dist, self.device)  # every rank stops at the same step
            self.state.elapsed_minutes = minutes
        return self.schedule.progress(self.state.step, minutes) >= 1.0 or self.state.step >= self.cfg.max_steps

    # -- metrics --------------------------------------------------------------------------
    def _reset_window(self) -> None:
        self._sums = torch.zeros(len(_SUMS), dtype=torch.float64, device=self.device)
        self._window_micro = 0
        self._window_tokens = 0
        self._window_flops = 0.0
        self._window_start = time.perf_counter()

    def _accumulate(self, out: dict[str, torch.Tensor], batch) -> None:
        zero = self._sums.new_zeros(())
        parts = [out[k].detach().to(torch.float64) if k in out else zero for k in _SUMS]
        self._sums += torch.stack(parts)
        self._window_micro += 1
        self._window_tokens += batch.num_tokens
        mc = self.model_cfg
        self._window_flops += step_flops(self.params["encoder"], self.params["mlm_head"], mc.num_layers,
                                         mc.hidden_size, batch.num_tokens, batch.num_masked, batch.sum_sq_len,
                                         dense_head=not self.cfg.sparse_mlm)

    def _flush_window(self, lr: float, grad_norm: torch.Tensor | None) -> dict[str, float]:
        extra = torch.tensor([self._window_micro, self._window_tokens, self._window_flops], dtype=torch.float64,
                             device=self.device)
        totals = all_reduce_sum(torch.cat([self._sums, extra]), self.dist).tolist()  # the one host sync
        sums = dict(zip(_SUMS, totals[: len(_SUMS)]))
        micro, tokens, flops = totals[len(_SUMS):]
        seconds = max(time.perf_counter() - self._window_start, 1e-9)
        self.state.tokens += int(tokens)
        m: dict[str, float] = {
            "loss": sums["loss"] / max(micro, 1),
            "mlm_loss": sums["mlm_loss"] / max(micro, 1),
            "mlm_accuracy": sums["mlm_correct"] / max(sums["mlm_count"], 1),
            "lr": lr,
            "tokens_per_s": tokens / seconds,
            "tokens": float(self.state.tokens),
            "epoch": self.state.rows / self.data.num_rows,
            "window_tokens": tokens,
        }
        if sums["nsp_count"] > 0:
            m["nsp_loss"] = sums["nsp_loss"] / max(micro, 1)
            m["nsp_accuracy"] = sums["nsp_correct"] / sums["nsp_count"]
        if grad_norm is not None:
            m["grad_norm"] = float(grad_norm)
        if self.device.type == "cuda":
            m["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 1e9
            if self.peak:
                m["mfu"] = flops / seconds / (self.peak * self.dist.world_size)
        self._reset_window()
        return m

    def _emit(self, m: dict[str, float]) -> None:
        if self.on_metrics:
            self.on_metrics(self.state.step, {k: v for k, v in m.items() if k != "window_tokens"})

    def _summary(self, last: dict[str, float], session_tokens: int, session_start: float) -> dict[str, float]:
        seconds = max(time.perf_counter() - session_start, 1e-9)
        out = {
            "steps": float(self.state.step),
            "tokens": float(self.state.tokens),
            "final_loss": last.get("loss", float("nan")),
            "mlm_accuracy": last.get("mlm_accuracy", float("nan")),
            "tokens_per_s": session_tokens / seconds,
            "minutes": self.state.elapsed_minutes,
        }
        if "nsp_accuracy" in last:
            out["nsp_accuracy"] = last["nsp_accuracy"]
        return out

    # -- state out ------------------------------------------------------------------------
    def save(self) -> Path | None:
        """Checkpoint (all ranks call: RNG states are gathered; rank 0 writes)."""
        rng = all_gather_objects(ckpt.capture_rng(), self.dist)
        path = None
        if self.dist.is_main:
            state = {**asdict(self.state), "world_size": self.dist.world_size, "batch_size": self.cfg.batch_size,
                     "fingerprint": self.spec.fingerprint}
            path = ckpt.save_checkpoint(self.out_dir, self.state.step, self.model.state_dict(),
                                        self.optimizer.state_dict(), rng, state, self.cfg.keep_checkpoints)
        barrier(self.dist)
        return path
