"""Bidirectional self-attention over packed (padding-free) token rows.

Three ways, picked per batch from Python-side facts (no host sync):

- every sequence has the same length (packed ``full`` data): a plain reshape to
  ``[B, L, heads, dim]`` and ``F.scaled_dot_product_attention`` with no mask, which
  runs the flash kernel on CUDA;
- ragged batches (``nsp`` data) on CUDA in bf16/fp16, with torch's flash ``varlen_attn``
  (torch >= 2.9) and no attention dropout: attention straight on the packed rows;
- otherwise: scatter the rows into a zero-padded ``[B, max_len]`` layout, SDPA with a
  key-padding mask, gather back. Only attention sees padding; embeddings, projections
  and the MLP (most of the FLOPs) run on real tokens only.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from bertflow.bert_core.pretrain.batch import PackedBatch


@functools.cache
def _varlen_attn():
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:  # torch < 2.9
        return None
    return varlen_attn


def attend(qkv: torch.Tensor, batch: PackedBatch, dropout_p: float, allow_varlen: bool) -> torch.Tensor:
    """``qkv`` [T, 3, heads, dim] -> context [T, heads*dim]."""
    total, _, heads, dim = qkv.shape
    if batch.dense_seqlen is not None:
        length = batch.dense_seqlen
        q, k, v = qkv.view(total // length, length, 3, heads, dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)  # [B, heads, L, dim]
        return out.transpose(1, 2).reshape(total, heads * dim)
    usable = allow_varlen and qkv.is_cuda and dropout_p == 0.0 and qkv.dtype in (torch.bfloat16, torch.float16)
    varlen = _varlen_attn() if usable else None  # flash kernels: half precision, no dropout
    if varlen is not None:
        q, k, v = qkv.unbind(1)  # each [T, heads, dim]
        cu = batch.cu_seqlens
        out = varlen(q, k, v, cu, cu, batch.max_seqlen, batch.max_seqlen)
        return out.reshape(total, heads * dim)
    return _padded_attend(qkv, batch, dropout_p)


def _padded_attend(qkv: torch.Tensor, batch: PackedBatch, dropout_p: float) -> torch.Tensor:
    total, _, heads, dim = qkv.shape
    bsz, width = batch.num_sequences, batch.max_seqlen
    flat = qkv.reshape(total, 3 * heads * dim)
    padded = flat.new_zeros(bsz * width, 3 * heads * dim).index_copy(0, batch.pad_index, flat)
    q, k, v = padded.view(bsz, width, 3, heads, dim).permute(2, 0, 3, 1, 4).unbind(0)
    lengths = batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]
    keep = torch.arange(width, device=qkv.device)[None, :] < lengths[:, None]  # [B, L] real keys
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :], dropout_p=dropout_p)
    return out.transpose(1, 2).reshape(bsz * width, heads * dim).index_select(0, batch.pad_index)
