"""NER bulk-scoring quality: entity spans written by ``bertflow score`` vs the fine-tune's own evaluation and the pipeline.

    PYTHONPATH=. python benchmarks/quality_score_ner.py --model OUT/conll/model --out OUT/ner-score

CoNLL-2003 ``valid.txt`` sentences are joined back into plain text (words separated by one
space), so every gold entity has character offsets. The text goes through ``bertflow score``
(the CLI: a Prefect flow on a local workspace, the ``entities`` column) with the CoNLL model
of ``quality_finetune.py --task conll``; then:

* entity F1 of the written spans against the gold spans (exact label, start and end), beside the
  fine-tune stage's own evaluation of the same tags (``metrics.json`` next to the model; goal: within
  0.5 point). ``simple`` reads the model piece by piece, so its reference is the stage's figure over
  every labelled piece (``piece_entity_f1``, reported for models trained with ``label_pieces: all``);
  ``first`` and ``max`` read words, so theirs is the per-word ``entity_f1``. Every strategy's gap to
  the per-word figure is printed too: for ``simple`` it is how often the model's pieces disagree;
* agreement with ``transformers.pipeline("token-classification", aggregation_strategy="simple")`` on
  the same texts: spans found by both / spans found by either (goal: >= 99%).

``--aggregation`` scores with another strategy too (``first`` reads each word's first piece, as the
fine-tune's evaluation does). The model's ``finetune.label_pieces`` (``all``: every piece trained, the
default since 2026-12-06; ``first``: first pieces only) decides how well ``simple`` does. Writes
``OUT/ner-score-quality.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The fine-tune figure each strategy reads the model like: piece by piece (simple) or word by word.
REFERENCE = {"simple": "piece_entity_f1", "first": "entity_f1", "max": "entity_f1", "average": "entity_f1"}


def gold_spans(words: list[str], tags: list[str]) -> tuple[str, set[tuple[str, int, int]]]:
    """The sentence as text and its gold entities as (type, start, end) character spans."""
    from bertflow.bert_core.finetune.metrics import get_entities

    starts, pos = [], 0
    for w in words:
        starts.append(pos)
        pos += len(w) + 1
    spans = {(t, starts[s], starts[e] + len(words[e])) for t, s, e in get_entities(tags)}
    return " ".join(words), spans


def prf(gold: list[set], pred: list[set]) -> dict[str, float]:
    tp = sum(len(g & p) for g, p in zip(gold, pred))
    n_pred, n_gold = sum(map(len, pred)), sum(map(len, gold))
    p = tp / n_pred if n_pred else 0.0
    r = tp / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0, "gold": n_gold, "pred": n_pred}


def bertflow_score(lake: Path, model: Path, out: Path, workspace: Path, aggregation: str, max_length: int) -> float:
    """Run the ``bertflow score`` CLI; returns its wall seconds."""
    cmd = [sys.executable, "-m", "bertflow", "score", "--input", str(lake), "--model", str(model), "--output",
           str(out), "--workspace", str(workspace), "--set", f"score.aggregation={aggregation}",
           "--set", f"score.max_length={max_length}", "--set", "score.device=cpu"]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bertflow.bert_core.finetune.conll import read_conll
    from bertflow.bert_core.score.stage import output_dataset

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="the CoNLL model dir (quality_finetune's conll/model)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "conll2003" / "valid.txt")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--aggregation", default="simple,first", help="comma-separated strategies to score with")
    ap.add_argument("--max-length", type=int, default=256, help="score.max_length (the fine-tune's window)")
    args = ap.parse_args(argv)

    sentences = read_conll(args.data)
    texts, gold = zip(*(gold_spans(w, t) for w, t in zip(sentences.words, sentences.tags)))
    lake = args.out / "lake"
    lake.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"id": list(range(len(texts))), "text": list(texts)}), lake / "valid.parquet")
    finetune = json.loads((args.model.parent / "metrics.json").read_text(encoding="utf-8"))["metrics"]
    meta_file = args.model / "bertflow_finetune.json"
    meta = json.loads(meta_file.read_text(encoding="utf-8")) if meta_file.is_file() else {}
    report: dict = {"data": str(args.data), "sentences": len(texts), "model": str(args.model),
                    "label_pieces": meta.get("label_pieces", "first"),  # absent: trained before the option
                    "finetune_entity_f1": finetune["entity_f1"],
                    "finetune_piece_entity_f1": finetune.get("piece_entity_f1"), "scored": {}}
    ours: dict[str, list[set]] = {}
    for agg in [a for a in args.aggregation.split(",") if a]:
        out = args.out / f"scored-{agg}"
        seconds = bertflow_score(lake, args.model, out, args.out / "workspace", agg, args.max_length)
        rows = sorted(output_dataset(out).to_table().to_pylist(), key=lambda r: r["id"])
        assert len(rows) == len(texts) and all(r["error"] in (None, "truncated") for r in rows)
        ours[agg] = [{(e["label"], e["start"], e["end"]) for e in r["entities"]} for r in rows]
        figures = prf(list(gold), ours[agg])
        reference = REFERENCE[agg] if REFERENCE[agg] in finetune else "entity_f1"
        figures["reference"] = reference
        figures["delta_vs_finetune_points"] = 100 * (figures["f1"] - finetune[reference])
        figures["delta_vs_per_word_points"] = 100 * (figures["f1"] - finetune["entity_f1"])
        figures["seconds"] = seconds
        report["scored"][agg] = figures
        print(f"bertflow score ({agg}): entity F1 {figures['f1']:.4f} (P {figures['precision']:.4f}, "
              f"R {figures['recall']:.4f}) vs the fine-tune's {reference} {finetune[reference]:.4f}: "
              f"{figures['delta_vs_finetune_points']:+.2f} points (vs per word {finetune['entity_f1']:.4f}: "
              f"{figures['delta_vs_per_word_points']:+.2f}); {seconds:.0f} s", flush=True)

    from transformers import pipeline

    pipe = pipeline("token-classification", model=str(args.model), tokenizer=str(args.model),
                    aggregation_strategy="simple", device="cpu")
    theirs = [{(e["entity_group"], e["start"], e["end"]) for e in found} for found in pipe(list(texts), batch_size=64)]
    simple = ours.get("simple") or next(iter(ours.values()))
    both = sum(len(a & b) for a, b in zip(simple, theirs))
    either = sum(len(a | b) for a, b in zip(simple, theirs))
    report["pipeline_agreement"] = {"both": both, "either": either, "share": both / either if either else 1.0,
                                    "pipeline_f1": prf(list(gold), theirs)["f1"]}
    print(f"agreement with pipeline(aggregation_strategy='simple'): {both}/{either} spans = "
          f"{report['pipeline_agreement']['share']:.2%} (goal >= 99%); pipeline F1 "
          f"{report['pipeline_agreement']['pipeline_f1']:.4f}")
    report["date_utc"] = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
    (args.out / "ner-score-quality.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    ok = report["pipeline_agreement"]["share"] >= 0.99 and all(
        abs(f["delta_vs_finetune_points"]) <= 0.5 for f in report["scored"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
