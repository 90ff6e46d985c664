"""Typed configuration of pretraining: model shape, optimisation, budgets, checkpoints.

Batch sizes: ``batch_size`` rows are one micro-batch on one process; an optimizer
step sees ``batch_size * grad_accum * world_size`` rows (world_size = number of
``torchrun`` processes). Vocabulary size and special ids are not keys here: they
come from the masked-data manifest (or from ``init_from``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from bertflow.bert_core.configtools import check

# Keys that change how fast or where a run goes, not what it computes: a resumed run
# may change them (everything else must match the checkpoints in the out dir).
RUNTIME_KEYS = frozenset(
    {
        "device", "compile", "compile_mode", "num_workers", "prefetch_factor", "log_every",
        "checkpoint_every", "keep_checkpoints", "peak_tflops", "varlen_attention", "allow_pickle_weights",
    }
)


@dataclass(frozen=True)
class PretrainConfig:
    # model shape (ignored when init_from is set: the init checkpoint's config.json wins)
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2  # segment embeddings (A/B), as in BERT
    pre_ln: bool = False  # pre-LayerNorm blocks: stabler at high LR, but the export is NOT loadable by transformers
    dropout: float = 0.1  # hidden dropout
    attention_dropout: float = 0.1  # attention-probability dropout (0 allows flash varlen attention on ragged batches)
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    vocab_multiple: int = 64  # pad the embedding matrix to a multiple of this (tensor-core friendly); 1 = exact
    # optimisation
    batch_size: int = 256  # rows per micro-batch per process
    grad_accum: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 1000
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    min_lr_ratio: float = 0.0  # final LR as a fraction of lr (linear/cosine)
    optimizer: Literal["adamw", "lamb"] = "adamw"
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-6
    max_grad_norm: float = 1.0  # 0 disables clipping
    sparse_mlm: bool = True  # vocab logits only at masked positions (False: dense head, as transformers does)
    max_predictions: int | None = None  # MLM rows per sequence the sparse head is sized for; None: data manifest
    # budgets: whichever ends first; the LR schedule is fitted to it
    max_steps: int = 10000
    budget_minutes: float | None = None
    # runtime
    device: str = "auto"  # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    bf16: bool = True  # bf16 autocast where the device supports it (CUDA); CPU runs fp32
    tf32: bool = True  # TF32 for fp32 matmuls on CUDA
    compile: bool = False  # torch.compile the model
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = "default"
    varlen_attention: bool = True  # flash varlen attention for ragged (nsp) batches on CUDA when torch has it
    num_workers: int = 2  # data-loader worker processes
    prefetch_factor: int = 4  # batches each worker prepares ahead
    seed: int = 42
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int = 2  # newest checkpoints kept in out_dir/checkpoints (older ones deleted)
    peak_tflops: float | None = None  # accelerator peak for MFU; None: known GPUs (H100/H200/A100) or no MFU
    init_from: str | None = None  # a bertflow export or HF BERT directory to continue from
    allow_pickle_weights: bool = False  # init_from may hold a pickle checkpoint (pytorch_model.bin): trusted files only

    def __post_init__(self) -> None:
        check(self.hidden_size % self.num_heads == 0, "pretrain.hidden_size must be divisible by pretrain.num_heads")
        check(self.num_layers >= 1, "pretrain.num_layers must be >= 1")
        check(self.intermediate_size >= 1, "pretrain.intermediate_size must be >= 1")
        check(self.max_position_embeddings >= 8, "pretrain.max_position_embeddings must be >= 8")
        check(self.type_vocab_size >= 1, "pretrain.type_vocab_size must be >= 1")
        check(self.batch_size >= 1 and self.grad_accum >= 1, "pretrain.batch_size and grad_accum must be >= 1")
        check(self.lr > 0, "pretrain.lr must be > 0")
        check(self.weight_decay >= 0, "pretrain.weight_decay must be >= 0")
        check(self.warmup_steps >= 0, "pretrain.warmup_steps must be >= 0")
        check(0.0 <= self.min_lr_ratio <= 1.0, "pretrain.min_lr_ratio must be in [0, 1]")
        check(0.0 <= self.adam_beta1 < 1.0 and 0.0 <= self.adam_beta2 < 1.0, "pretrain.adam_beta1/2 must be in [0, 1)")
        check(self.adam_eps > 0, "pretrain.adam_eps must be > 0")
        check(self.max_grad_norm >= 0, "pretrain.max_grad_norm must be >= 0 (0 disables clipping)")
        check(self.max_predictions is None or self.max_predictions >= 1, "pretrain.max_predictions must be >= 1")
        check(self.max_steps >= 1, "pretrain.max_steps must be >= 1")
        check(self.budget_minutes is None or self.budget_minutes > 0, "pretrain.budget_minutes must be > 0")
        check(0.0 <= self.dropout < 1.0, "pretrain.dropout must be in [0, 1)")
        check(0.0 <= self.attention_dropout < 1.0, "pretrain.attention_dropout must be in [0, 1)")
        check(self.layer_norm_eps > 0, "pretrain.layer_norm_eps must be > 0")
        check(self.initializer_range > 0, "pretrain.initializer_range must be > 0")
        check(self.vocab_multiple >= 1, "pretrain.vocab_multiple must be >= 1")
        check(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            "pretrain.device must be auto, cpu, cuda or cuda:N",
        )
        check(self.num_workers >= 0, "pretrain.num_workers must be >= 0")
        check(self.prefetch_factor >= 1, "pretrain.prefetch_factor must be >= 1")
        check(self.log_every >= 1, "pretrain.log_every must be >= 1")
        check(self.checkpoint_every >= 1, "pretrain.checkpoint_every must be >= 1")
        check(self.keep_checkpoints >= 1, "pretrain.keep_checkpoints must be >= 1")
        check(self.peak_tflops is None or self.peak_tflops > 0, "pretrain.peak_tflops must be > 0")
