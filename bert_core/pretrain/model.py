"""A BERT encoder with MLM (+ optional NSP) pretraining heads, computing on packed tokens.

The maths is BERT's (and ``transformers.BertForPreTraining``'s): post-LN blocks, exact
GELU, learned absolute positions, segment embeddings, the MLM decoder tied to the word
embeddings. What differs is how it runs: tokens are packed without padding
(:mod:`bert_core.pretrain.batch`), Q/K/V are one fused matmul, attention is SDPA, and
the MLM head computes vocabulary logits only at masked positions (cramming's "sparse
prediction"): ~15% of the rows of the largest matmul of the model.

Parameter names are our own; :mod:`bert_core.pretrain.hf_compat` maps them to and from
the ``transformers`` names (splitting/joining the fused Q/K/V).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bertflow.bert_core.pretrain.attention import attend
from bertflow.bert_core.pretrain.batch import IGNORE, PackedBatch


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    dropout: float = 0.1
    attention_dropout: float = 0.1
    initializer_range: float = 0.02
    pre_ln: bool = False  # pre-LayerNorm blocks + a final LayerNorm (not a transformers architecture)
    with_nsp: bool = False  # pooler + next-sentence head (only when the data has NSP labels)
    pad_token_id: int = 0
    varlen_attention: bool = True  # use flash varlen attention for ragged batches when available


class Embeddings(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        x = self.word(batch.input_ids) + self.position(batch.position_ids) + self.token_type(batch.token_type_ids)
        return self.drop(self.norm(x))


class SelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads = cfg.num_heads
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)  # fused Q, K, V (in that order)
        self.proj = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_dropout
        self.allow_varlen = cfg.varlen_attention

    def forward(self, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        total, hidden = x.shape
        qkv = self.qkv(x).view(total, 3, self.heads, hidden // self.heads)
        dropout_p = self.dropout_p if self.training else 0.0
        return self.proj(attend(qkv, batch, dropout_p, self.allow_varlen))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.fc_in = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc_out = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_out(F.gelu(self.fc_in(x)))


class Block(nn.Module):
    """One transformer layer; post-LN as in BERT, or pre-LN."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pre_ln = cfg.pre_ln
        self.attn = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.mlp = MLP(cfg)
        self.mlp_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        if self.pre_ln:
            x = x + self.drop(self.attn(self.attn_norm(x), batch))
            return x + self.drop(self.mlp(self.mlp_norm(x)))
        x = self.attn_norm(x + self.drop(self.attn(x, batch)))
        return self.mlp_norm(x + self.drop(self.mlp(x)))


class MLMHead(nn.Module):
    """Transform (dense + GELU + LayerNorm), then the decoder tied to the word embeddings."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.transform = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))

    def forward(self, rows: torch.Tensor, decoder_weight: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.transform(rows))), decoder_weight, self.bias)


class NSPHead(nn.Module):
    """BERT's pooler (dense + tanh on [CLS]) and the two-way next-sentence classifier."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.classifier = nn.Linear(cfg.hidden_size, 2)

    def forward(self, cls_rows: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.tanh(self.pooler(cls_rows)))


class BertForPretraining(nn.Module):
    def __init__(self, cfg: ModelConfig, sparse_mlm: bool = True) -> None:
        super().__init__()
        self.cfg = cfg
        self.sparse_mlm = sparse_mlm
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if cfg.pre_ln else None
        self.mlm_head = MLMHead(cfg)
        self.nsp_head = NSPHead(cfg) if cfg.with_nsp else None
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.cfg.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        if module is getattr(self, "embeddings", None):
            with torch.no_grad():
                module.word.weight[self.cfg.pad_token_id].zero_()  # as transformers' padding_idx

    def encode(self, batch: PackedBatch) -> torch.Tensor:
        """Final hidden states of the real tokens, [T, hidden]."""
        x = self.embeddings(batch)
        for block in self.layers:
            x = block(x, batch)
        return x if self.final_norm is None else self.final_norm(x)

    def mlm_logits(self, rows: torch.Tensor) -> torch.Tensor:
        return self.mlm_head(rows, self.embeddings.word.weight)

    def nsp_logits(self, hidden: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        assert self.nsp_head is not None, "model was built without the NSP head"
        return self.nsp_head(hidden.index_select(0, batch.cls_positions))

    def forward(self, batch: PackedBatch) -> dict[str, torch.Tensor]:
        """Losses and on-device metric sums (no ``.item()``: no host sync)."""
        hidden = self.encode(batch)
        if self.sparse_mlm:
            labels = batch.mlm_labels
            logits = self.mlm_logits(hidden.index_select(0, batch.mlm_positions))
        else:
            labels = batch.labels
            logits = self.mlm_logits(hidden)
        out = _classification_terms(logits, labels, "mlm")
        loss = out["mlm_loss"]
        if self.nsp_head is not None and batch.nsp_labels is not None:
            out.update(_classification_terms(self.nsp_logits(hidden, batch), batch.nsp_labels, "nsp"))
            loss = loss + out["nsp_loss"]
        out["loss"] = loss
        return out


def _classification_terms(logits: torch.Tensor, labels: torch.Tensor, name: str) -> dict[str, torch.Tensor]:
    """Mean cross-entropy over labelled rows, plus correct/count sums for accuracy."""
    count = (labels != IGNORE).sum()
    loss_sum = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE, reduction="sum")
    with torch.no_grad():
        correct = (logits.argmax(dim=-1) == labels).sum()
    return {f"{name}_loss": loss_sum / count.clamp(min=1), f"{name}_correct": correct, f"{name}_count": count}


def count_parameters(model: BertForPretraining) -> dict[str, int]:
    """Parameter counts that enter the FLOPs estimate (embedding lookups are not matmuls)."""
    cfg = model.cfg
    encoder = sum(p.numel() for p in model.layers.parameters())
    if model.final_norm is not None:
        encoder += sum(p.numel() for p in model.final_norm.parameters())
    head = sum(p.numel() for p in model.mlm_head.parameters()) + cfg.vocab_size * cfg.hidden_size  # + tied decoder
    total = sum(p.numel() for p in model.parameters())
    return {"encoder": encoder, "mlm_head": head, "total": total}
