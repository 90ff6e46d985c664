"""Markdown for benchmarks/RESULTS.md from what the device calls returned.

    python benchmarks/gpu/summarize.py <files_at of call 1>/measure-part1.json \\
                                       <files_at of call 2>/measure-part2.json
    python benchmarks/gpu/summarize.py saved/recipe-chunk1.json saved/recipe-chunk2.json saved/recipe-chunk3.json

Prints one block per issue (date, device, versions, the figures against their goals) to paste
under the matching RESULTS.md section, replacing its "GPU figures: not measured yet" line. Reads
only the JSON files; no device needed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def header(env: dict) -> str:
    return (f"{env.get('date_utc', '?')[:10]}, {env.get('gpu', 'no GPU')} (device tool), torch {env.get('torch')}, "
            f"transformers {env.get('transformers')}, CUDA {env.get('cuda')}, {env.get('cpus')} CPUs")


def measure(data: dict) -> list[str]:
    f, env = data.get("figures", {}), data.get("env", {})
    out = []
    pre = f.get("pretrain", [])
    if pre:
        out += ["### #9 pretraining throughput (`benchmarks/bench_pretrain.py`)", "", header(env), "",
                "| size | ours mode | peer tok/s | ours tok/s | ratio | ours MFU | peer MFU | goal |",
                "|---|---|---|---|---|---|---|---|"]
        for line in pre:
            fig = line.get("figures", {})
            peer, ours = fig.get("peer", {}), fig.get("ours", {})
            ratio = fig.get("ratio", {}).get("tokens_per_s")
            goal = {"base": 2.5, "small": 4.0}.get(line.get("size"))
            verdict = "" if goal is None or ratio is None else (f">= {goal}x: {'met' if ratio >= goal else 'NOT met'}")
            mode = line.get("compile_mode") if line.get("compile") else "eager"
            out.append(f"| {line.get('size')} (B{line.get('batch')} x {line.get('seq')}) | {mode} | "
                       f"{peer.get('tokens_per_s', 0):,.0f} | {ours.get('tokens_per_s', 0):,.0f} | "
                       f"{'' if ratio is None else f'{ratio:.2f}x'} | {ours.get('mfu', float('nan')):.1%} | "
                       f"{peer.get('mfu', float('nan')):.1%} | {verdict} |")
        out.append("")
    for key in ("score", "score_small", "score_bs512"):
        s = f.get(key)
        if not s:
            continue
        out += [f"### #10 bulk scoring (`benchmarks/bench_score.py`{', --batch-size 512' if key.endswith('512') else ''})",
                "", header(env), "", "| model | rows | peer best (bs) | ours (bs) | ours/peer | ceiling | ours/ceiling |",
                "|---|---|---|---|---|---|---|"]
        for r in s.get("results", []):
            if r.get("mode") == "rss":
                continue
            out.append(f"| {r['model']} | {r['rows']:,} | {r['peer_best_rows_per_s']:,.0f} ({r['peer_best_batch_size']}) | "
                       f"{r['ours_rows_per_s']:,.0f} ({r['ours_batch_size']}) | {r['ratio_ours_vs_peer']:.2f}x "
                       f"(goal >= 10x) | {r.get('ceiling_rows_per_s', float('nan')):,.0f} | "
                       f"{r.get('ours_vs_ceiling', float('nan')):.0%} (goal >= 50%) |")
        out.append("")
    tasks = [t for t in ("sst2", "banking77", "conll") if f.get(f"finetune_{t}")]
    if tasks:
        out += ["### #5 fine-tuning quality, MiniLM-L6 (`benchmarks/quality_finetune.py`)", "", header(env), "",
                "| task | metric | value | target | verdict | epochs (best) | lr | batch | wall s |",
                "|---|---|---|---|---|---|---|---|---|"]
        for t in tasks:
            r = f[f"finetune_{t}"]
            m, h = r.get("metrics", {}), r.get("hyperparameters", {})
            out.append(f"| {t} | {r['metric']} | {r['value']:.4f} | {r['target']} | "
                       f"{'PASS' if r['passed'] else 'FAIL'} | {int(m.get('epochs_run', 0))} ({int(m.get('best_epoch', 0))})"
                       f" | {h.get('lr')} | {h.get('batch_size')} | {r['wall_seconds']:.0f} |")
        out.append("")
    steps = data.get("steps", [])
    if steps:
        out.append("Steps: " + "; ".join(f"{s['name'].split()[0]} {s['status']} {s['seconds']:.0f}s" for s in steps))
        out.append("")
    return out


def recipe(chunks: list[dict]) -> list[str]:
    chunks = sorted(chunks, key=lambda c: c.get("chunk", 0))
    env = chunks[-1].get("env", {})
    out = ["### #8 from-scratch recipe (`configs/recipe-30min.yaml`, `benchmarks/gpu/run_recipe.sh`)", "", header(env), "",
           "| chunk | state from | steps | pretraining clock (min) | epochs | MLM loss | MLM acc | tokens/s |",
           "|---|---|---|---|---|---|---|---|"]
    for c in chunks:
        p = c.get("pretrain", {})
        lm = p.get("last_metrics") or {}
        out.append(f"| {c['chunk']} | {c['state']['source'].split(' (')[0]} | {c['state']['step']} -> {p.get('end_step')} | "
                   f"{p.get('elapsed_minutes', 0):.2f} / {p.get('budget_minutes')} | {p.get('epochs')} | "
                   f"{lm.get('final_loss', float('nan')):.4f} | {lm.get('mlm_accuracy', float('nan')):.4f} | "
                   f"{lm.get('tokens_per_s', float('nan')):,.0f} |")
    last = chunks[-1]
    out.append("")
    for key, label in (("sst2", "SST-2 (recipe model)"), ("sst2_baseline_random_init", "SST-2 (same shape, random init)")):
        r = last.get(key)
        if r:
            out.append(f"- {label}: accuracy {r.get('accuracy')} ({r.get('status')}, {r.get('wall_seconds') or 0:.0f} s, "
                       f"epochs {r.get('epochs_run')}, best {r.get('best_epoch')}, {r.get('hyperparameters')})"
                       + (f"; goal 0.88: {'met' if r.get('meets_goal') else 'NOT met'}" if key == "sst2" else ""))
    out.append("")
    return out


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__)
        return 2
    docs = [(Path(p), json.loads(Path(p).read_text(encoding="utf-8"))) for p in paths]
    lines: list[str] = []
    for _path, d in docs:
        if "part" in d and "figures" in d:
            lines += measure(d)
    rec = [d for _path, d in docs if "chunk" in d and "pretrain" in d]
    if rec:
        lines += recipe(rec)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
