"""Pretraining throughput: ours (``bert_core.pretrain``) vs transformers' ``BertForMaskedLM``.

Both train in this process on the same batches (rows ``[0, B*(warmup+steps))`` of one
masked-data directory, read with the shared reader), at the same shapes, dropout and
masked-position count, and the script prints real tokens/s for each, the ratio, and
our MFU:

- peer: ``transformers`` ``BertForMaskedLM`` (``attn_implementation="sdpa"``), bf16
  autocast, fused AdamW, grad clipping 1.0, linear LR schedule; batches pre-loaded as
  pinned tensors (no data-loading cost for the peer); labels at the masked positions
  (~15%) and -100 elsewhere, so its vocab logits are computed for every token (dense
  head), as transformers does.
- ours: :func:`bert_core.pretrain.stage.run`, the real stage (shards streamed through
  DataLoader workers with pinned memory, optimizer, LR schedule, metric logging every
  ``--log-every`` steps). Optimisations in it: packed tokens (no padding), fused QKV,
  SDPA (flash on CUDA), sparse MLM head (vocab logits only at masked positions),
  vocab padded to a multiple of 64, fused AdamW, bf16 autocast, TF32, no host sync in
  the step (metrics read every ``--log-every`` steps), optional ``torch.compile``
  (``--compile``; ``--compile-mode max-autotune`` adds CUDA graphs: the packed ``full``
  data has static shapes).

Timing: the first ``--warmup`` steps (compilation, allocator, autotuning) are excluded;
the next ``--steps`` are timed between two ``cuda.synchronize()``. Tokens are real
(non-pad) tokens. MFU counts the FLOPs each model must do (see
``bert_core/pretrain/flops.py``; the peer's dense head counted over all tokens) against
the GPU's dense bf16 peak (H100 SXM: 989 TFLOP/s).

Data: synthetic shards in the masked-data format (``bert_core.pretrain.synthetic``,
static masks drawn with the shared ``bert_core.mask.masking`` function; generating
from text would need a trained 30k WordPiece vocab and a corpus, which throughput does
not depend on). Needs only torch, transformers, pyarrow, numpy.

Examples::

    python benchmarks/bench_pretrain.py --size base --batch 256 --seq 128 --steps 50 --warmup 15 --compile
    python benchmarks/bench_pretrain.py --size small --batch 256 --seq 128 --steps 50 --warmup 15 --compile
    python benchmarks/bench_pretrain.py --size tiny --batch 8 --seq 32 --vocab 1000 --steps 10 --warmup 3 --device cpu

Goal on one H100: ours >= 2.5x the peer at base (12 x 768) and >= 4x at small (4 x 512).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SIZES = {  # layers, hidden, heads, intermediate
    "base": (12, 768, 12, 3072),
    "small": (4, 512, 8, 2048),
    "tiny": (2, 128, 2, 512),
}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="base")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--steps", type=int, default=50, help="timed steps")
    p.add_argument("--warmup", type=int, default=15, help="untimed steps before (compilation etc.)")
    p.add_argument("--dropout", type=float, default=0.1, help="hidden and attention dropout, both models")
    p.add_argument("--compile", action="store_true", help="torch.compile ours")
    p.add_argument("--compile-mode", default="default",
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    p.add_argument("--peer-compile", action="store_true", help="also torch.compile the peer")
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--workers", type=int, default=None, help="our data-loader workers (default: 4 on CUDA, 0 on CPU)")
    p.add_argument("--log-every", type=int, default=10, help="our metric logging (one host sync) interval")
    p.add_argument("--data", help="reuse this masked-data dir (else synthesized in a temp dir)")
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--json", help="append a JSON line with the figures to this file")
    return p.parse_args()


def make_data(args, root: Path) -> tuple[Path, Path]:
    from bertflow.bert_core.pretrain.synthetic import write_masked_data, write_tokenizer

    rows = args.batch * (args.warmup + args.steps + 4)
    t0 = time.perf_counter()
    data = Path(args.data) if args.data else write_masked_data(root / "data", rows, args.seq, args.vocab,
                                                               rows_per_shard=65536, row_group_rows=4096)
    tok = write_tokenizer(root / "tok", args.vocab)
    print(f"data: {data} ({rows} rows x {args.seq} tokens, made in {time.perf_counter() - t0:.1f}s)")
    return data, tok


def load_batches(data: Path, batch: int, count: int) -> list[dict[str, np.ndarray]]:
    from bertflow.bert_core.mask.reader import MaskedDataset

    it = MaskedDataset(data).iter_batches(batch, start_row=0)
    return [next(it) for _ in range(count)]


def flops_of(layers: int, hidden: int, inter: int, vocab: int, tokens: int, masked: int, sum_sq: int,
             dense: bool) -> float:
    from bertflow.bert_core.pretrain.flops import step_flops

    n_encoder = layers * (4 * hidden * hidden + 2 * hidden * inter)  # weights; biases/LN are noise
    n_head = hidden * hidden + hidden * vocab
    return step_flops(n_encoder, n_head, layers, hidden, tokens, masked, sum_sq, dense_head=dense)


def run_peer(args, device, batches, timed_tokens: int) -> dict[str, float]:
    from transformers import AutoModelForMaskedLM, BertConfig, get_linear_schedule_with_warmup

    layers, hidden, heads, inter = SIZES[args.size]
    cfg = BertConfig(vocab_size=args.vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                     intermediate_size=inter, max_position_embeddings=max(512, args.seq),
                     hidden_dropout_prob=args.dropout, attention_probs_dropout_prob=args.dropout)
    torch.manual_seed(0)
    model = AutoModelForMaskedLM.from_config(cfg, attn_implementation="sdpa").to(device).train()
    cuda = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01, fused=cuda or None)
    sched = get_linear_schedule_with_warmup(opt, 10, args.warmup + args.steps)
    step_fn = torch.compile(model) if args.peer_compile else model
    keys = ("input_ids", "attention_mask", "token_type_ids", "labels")
    host = [{k: torch.from_numpy(b[k]) for k in keys} for b in batches]
    if cuda:
        host = [{k: v.pin_memory() for k, v in b.items()} for b in host]
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    start = None
    for i, b in enumerate(host):
        if i == args.warmup:
            _sync(device)
            start = time.perf_counter()
        b = {k: v.to(device, non_blocking=True) for k, v in b.items()}
        with autocast:
            loss = step_fn(**b).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    _sync(device)
    seconds = time.perf_counter() - start
    out = {"tokens_per_s": timed_tokens / seconds, "seconds": seconds, "final_loss": float(loss.detach())}
    del model, opt, step_fn
    if cuda:
        out["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    return out


def run_ours(args, device, data: Path, tok: Path, out_dir: Path, timed_tokens: int) -> dict[str, float]:
    from bertflow.bert_core.pretrain.config import PretrainConfig
    from bertflow.bert_core.pretrain.stage import run

    layers, hidden, heads, inter = SIZES[args.size]
    cuda = device.type == "cuda"
    cfg = PretrainConfig(
        hidden_size=hidden, num_layers=layers, num_heads=heads, intermediate_size=inter,
        max_position_embeddings=max(512, args.seq), dropout=args.dropout, attention_dropout=args.dropout,
        batch_size=args.batch, lr=1e-4, warmup_steps=10, max_steps=args.warmup + args.steps + 2,
        device=str(device), compile=args.compile, compile_mode=args.compile_mode,
        num_workers=args.workers if args.workers is not None else (4 if cuda else 0),
        log_every=args.log_every, checkpoint_every=10**9, keep_checkpoints=1,
    )
    marks: dict[int, float] = {}
    logs: dict[int, dict[str, float]] = {}

    def on_progress(step: int, total: int) -> None:
        if step in (args.warmup, args.warmup + args.steps):
            _sync(device)
            marks[step] = time.perf_counter()

    result = run(cfg, data, tok, out_dir, on_metrics=lambda s, m: logs.__setitem__(s, m), on_progress=on_progress)
    seconds = marks[args.warmup + args.steps] - marks[args.warmup]
    window = [m for s, m in logs.items() if args.warmup < s <= args.warmup + args.steps]
    out = {"tokens_per_s": timed_tokens / seconds, "seconds": seconds, "final_loss": result.metrics["final_loss"]}
    if window and "mfu" in window[-1]:
        out["mfu_logged"] = float(np.mean([m["mfu"] for m in window]))
    if cuda:
        out["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> int:
    args = parse()
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
        torch.set_float32_matmul_precision("high")  # TF32 for both models' fp32 matmuls
    layers, hidden, heads, inter = SIZES[args.size]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}; torch {torch.__version__}; size {args.size} ({layers} x {hidden}), batch {args.batch}, "
          f"seq {args.seq}, vocab {args.vocab}, {args.steps} timed steps after {args.warmup}")
    root = Path(tempfile.mkdtemp(prefix="bench-pretrain-"))
    try:
        data, tok = make_data(args, root)
        batches = load_batches(data, args.batch, args.warmup + args.steps)
        timed = batches[args.warmup:]
        tokens = int(sum(b["attention_mask"].sum() for b in timed))
        masked = int(sum((b["labels"] != -100).sum() for b in timed))
        sum_sq = int(sum((b["attention_mask"].sum(1).astype(np.int64) ** 2).sum() for b in timed))
        print(f"timed: {tokens} tokens, {masked / tokens:.1%} of them predicted "
              f"({masked / (len(timed) * args.batch):.1f} per sequence)")
        from bertflow.bert_core.pretrain.flops import peak_flops

        peak = peak_flops(device)
        figures: dict[str, dict[str, float]] = {}
        if not args.skip_peer:
            peer = run_peer(args, device, batches, tokens)
            peer_flops = flops_of(layers, hidden, inter, args.vocab, tokens, masked, sum_sq, dense=True)
            if peak:
                peer["mfu"] = peer_flops / peer["seconds"] / peak
            figures["peer"] = peer
            prec = "bf16" if device.type == "cuda" else "fp32"
            print(f"peer  transformers BertForMaskedLM (sdpa, {prec}, fused AdamW{', compiled' if args.peer_compile else ''}): "
                  f"{peer['tokens_per_s']:,.0f} tok/s" + (f", MFU {peer['mfu']:.1%}" if "mfu" in peer else ""))
        ours = run_ours(args, device, data, tok, root / "ours", tokens)
        ours_flops = flops_of(layers, hidden, inter, args.vocab, tokens, masked, sum_sq, dense=False)
        if peak:
            ours["mfu"] = ours_flops / ours["seconds"] / peak
        figures["ours"] = ours
        what = "compiled " + args.compile_mode if args.compile else "eager"
        print(f"ours  bertflow ({what}; packed, fused QKV, SDPA, sparse MLM head, fused AdamW): "
              f"{ours['tokens_per_s']:,.0f} tok/s" + (f", MFU {ours['mfu']:.1%}" if "mfu" in ours else ", MFU n/a (no GPU peak)"))
        if "peer" in figures:
            ratio = ours["tokens_per_s"] / figures["peer"]["tokens_per_s"]
            print(f"ratio ours/peer: {ratio:.2f}x")
            figures["ratio"] = {"tokens_per_s": ratio}
        if args.json:
            line = {"date": time.strftime("%Y-%m-%d"), "device": name, "torch": torch.__version__, **vars(args),
                    "figures": figures}
            with open(args.json, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(line) + "\n")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
