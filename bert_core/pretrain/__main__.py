"""``python -m bertflow.bert_core.pretrain``: the pretraining stage from a shell, also under ``torchrun``.

    python -m bertflow.bert_core.pretrain --data MASKED_DIR --tokenizer TOK_DIR --out RUN_DIR \\
        [--config small] [--set lr=5e-4 --set max_steps=2000 ...]
    torchrun --standalone --nproc_per_node=8 -m bertflow.bert_core.pretrain --data ... --tokenizer ... --out ...

``--config`` takes a preset name or a YAML file: a pipeline preset (its ``pretrain:``
section is used) or a flat mapping of PretrainConfig keys; relative paths in it are
relative to the file. ``--set key=value`` (or ``pretrain.key=value``) overrides one
key, the value parsed as YAML. Re-running resumes, also with other runtime keys or after
an upgrade; a changed training identity (model, optimizer, schedule, data, tokenizer,
init weights, seed, processes) is refused unless ``--restart`` sets the old directory
aside as ``<out>.previous``. Needs only torch, transformers' deps, pyarrow, numpy, pyyaml
and pydantic (no Prefect, MLflow, DuckDB).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bertflow.bert_core.pretrain", description="Pretrain a BERT (MLM [+NSP]).")
    p.add_argument("--data", required=True, help="masked-data directory (output of the mask stage)")
    p.add_argument("--tokenizer", required=True, help="tokenizer directory (copied into the export)")
    p.add_argument("--out", required=True, help="training directory (checkpoints/, export/); reused to resume")
    p.add_argument("--config", help="preset name or YAML file (a pipeline preset with a pretrain: section, or flat keys)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a PretrainConfig key (repeatable)")
    p.add_argument("--restart", action="store_true",
                   help="if --out holds a run with another training identity, move it to <out>.previous and start afresh")
    p.add_argument("--quiet", action="store_true", help="no per-step metric lines")
    return p.parse_args(argv)


def load_pretrain_config(path: str | None, overrides: list[str]):
    from bertflow.bert_core.config import find_config
    from bertflow.bert_core.configtools import apply_overrides, from_dict, load_yaml, resolve_paths
    from bertflow.bert_core.pretrain.config import PretrainConfig

    section: dict = {}
    if path:
        file = find_config(path)
        data = load_yaml(file)
        section = dict((data.get("pretrain") if "pretrain" in data else data) or {})
        section = resolve_paths(PretrainConfig, section, file.parent)
    keyed = [o if o.split("=", 1)[0].startswith("pretrain.") else f"pretrain.{o}" for o in overrides]
    merged = apply_overrides({"pretrain": section}, keyed)
    return from_dict(PretrainConfig, merged["pretrain"])


def main(argv: list[str] | None = None) -> int:
    from bertflow.bert_core.errors import BertflowError

    args = _parse(argv)
    try:
        cfg = load_pretrain_config(args.config, args.overrides)
        from bertflow.bert_core.pretrain.stage import run

        def on_metrics(step: int, m: dict[str, float]) -> None:
            if not args.quiet:
                shown = " ".join(f"{k}={v:.4g}" for k, v in m.items())
                print(f"step {step}: {shown}", flush=True)

        result = run(cfg, args.data, args.tokenizer, args.out, on_metrics=on_metrics, restart=args.restart)
    except BertflowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import os

    if os.environ.get("RANK", "0") == "0":
        print(json.dumps(asdict(result), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
