"""Typed configuration of pretraining: model shape, optimisation, budgets, checkpoints.

Batch sizes: ``batch_size`` rows are one micro-batch on one process; an optimizer
step sees ``batch_size * grad_accum * world_size`` rows (world_size = number of
``torchrun`` processes). Vocabulary size and special ids are not keys here: they
come from the masked-data manifest (or from ``init_from``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from bertflow.bert_core.configtools import Config, PathStr

# Keys that change how fast or where a run goes, not what it computes: a resumed run
# may change them (everything else must match the checkpoints in the out dir).
RUNTIME_KEYS = frozenset(
    {
        "device", "compile", "compile_mode", "num_workers", "prefetch_factor", "log_every",
        "checkpoint_every", "keep_checkpoints", "peak_tflops", "varlen_attention", "allow_pickle_weights",
    }
)

_SHAPE = " (ignored with init_from: the init checkpoint's config.json wins)"


class PretrainConfig(Config):
    section = "pretrain"

    # model shape
    hidden_size: int = Field(768, ge=1, description="Width of the hidden states" + _SHAPE)
    num_layers: int = Field(12, ge=1, description="Transformer blocks" + _SHAPE)
    num_heads: int = Field(12, ge=1, description="Attention heads per block; must divide hidden_size" + _SHAPE)
    intermediate_size: int = Field(3072, ge=1, description="Width of the feed-forward layer" + _SHAPE)
    max_position_embeddings: int = Field(
        512, ge=8, description="Longest sequence the position embeddings cover" + _SHAPE)
    type_vocab_size: int = Field(2, ge=1, description="Segment embeddings (A/B), as in BERT")
    pre_ln: bool = Field(
        False, description="Pre-LayerNorm blocks: stabler at high LR, but the export is NOT loadable by transformers")
    dropout: float = Field(0.1, ge=0, lt=1, description="Hidden dropout")
    attention_dropout: float = Field(
        0.1, ge=0, lt=1,
        description="Attention-probability dropout (0 allows flash varlen attention on ragged batches)")
    layer_norm_eps: float = Field(1e-12, gt=0, description="LayerNorm epsilon")
    initializer_range: float = Field(0.02, gt=0, description="Standard deviation of the initial weights")
    vocab_multiple: int = Field(
        64, ge=1, description="Pad the embedding matrix to a multiple of this (tensor-core friendly); 1: exact")
    # optimisation
    batch_size: int = Field(256, ge=1, description="Rows per micro-batch per process")
    grad_accum: int = Field(1, ge=1, description="Micro-batches accumulated per optimizer step")
    lr: float = Field(1e-4, gt=0, description="Peak learning rate (after warmup)")
    weight_decay: float = Field(
        0.01, ge=0, description="Decoupled weight decay (not applied to biases and LayerNorm weights)")
    warmup_steps: int = Field(1000, ge=0, description="Steps of linear warmup from 0 to lr")
    schedule: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="LR decay after warmup, fitted to the step or time budget")
    min_lr_ratio: float = Field(0.0, ge=0, le=1, description="Final LR as a fraction of lr (linear/cosine)")
    optimizer: Literal["adamw", "lamb"] = Field("adamw", description="AdamW, or LAMB for very large batches")
    adam_beta1: float = Field(0.9, ge=0, lt=1, description="Adam first-moment decay")
    adam_beta2: float = Field(0.999, ge=0, lt=1, description="Adam second-moment decay")
    adam_eps: float = Field(1e-6, gt=0, description="Adam epsilon")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm; 0 disables clipping")
    sparse_mlm: bool = Field(
        True, description="Vocab logits only at masked positions (false: dense head, as transformers does)")
    max_predictions: int | None = Field(
        None, ge=1, description="MLM rows per sequence the sparse head is sized for; null: from the data manifest")
    # budgets: whichever ends first; the LR schedule is fitted to it
    max_steps: int = Field(
        10000, ge=1, description="Optimizer steps; the run ends here or at budget_minutes, whichever comes first")
    budget_minutes: float | None = Field(
        None, gt=0, description="Wall-clock training budget; the LR schedule ends with it; null: max_steps alone")
    # runtime
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)")
    bf16: bool = Field(True, description="bf16 autocast where the device supports it (CUDA); CPU runs fp32")
    tf32: bool = Field(True, description="TF32 for fp32 matmuls on CUDA")
    compile: bool = Field(False, description="torch.compile the model")
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = Field(
        "default", description="torch.compile mode")
    varlen_attention: bool = Field(
        True, description="Flash varlen attention for ragged (nsp) batches on CUDA when torch has it")
    num_workers: int = Field(2, ge=0, description="Data-loader worker processes")
    prefetch_factor: int = Field(4, ge=1, description="Batches each worker prepares ahead")
    seed: int = Field(42, description="Seed of weight init, data order and dynamic masks")
    log_every: int = Field(10, ge=1, description="Optimizer steps between metric reports")
    checkpoint_every: int = Field(
        500, ge=1, description="Optimizer steps between checkpoints (a re-run resumes from the last)")
    keep_checkpoints: int = Field(
        2, ge=1, description="Newest checkpoints kept in out_dir/checkpoints (older ones deleted)")
    peak_tflops: float | None = Field(
        None, gt=0, description="Accelerator peak TFLOP/s for MFU; null: known GPUs (H100/H200/A100) or no MFU")
    init_from: PathStr | None = Field(None, description="A bertflow export or HF BERT directory to continue from")
    allow_pickle_weights: bool = Field(
        False, description="init_from may hold a pickle checkpoint (pytorch_model.bin): trusted files only")

    @field_validator("num_heads")
    @classmethod
    def _heads_divide_width(cls, num_heads: int, info: ValidationInfo) -> int:
        hidden = info.data.get("hidden_size")
        if hidden is not None and hidden % num_heads:
            raise ValueError(f"must divide pretrain.hidden_size ({hidden} is not divisible by {num_heads})")
        return num_heads

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
            raise ValueError(f"{device!r} must be auto, cpu, cuda or cuda:N")
        return device
