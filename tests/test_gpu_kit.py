"""The GPU kit's one device command, run as a CPU dry run: the same code path at toy sizes.

``prepare.py --dry-run`` builds a carry folder like the real one (the bertflow wheel, the bf16 MiniLM, the
bundled labelled sample in SST-2's format); ``run.py --dry-run`` installs the wheel, hides what the GPU
machine lacks (prefect, mlflow, duckdb, the MiniLM package) and runs every part under its deadline. One
part gets a deadline it cannot meet: it must be recorded as a timeout while every other part reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO

pytestmark = pytest.mark.slow  # ~1 min on 2 cores: six subprocesses that each import torch

PARTS = ["env", "score-small", "score-base", "finetune-sst2", "pretrain-small", "pretrain-base"]


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-kit")
    carry, out = root / "carry", root / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BERTFLOW_KIT_DRYRUN": "1"}
    prep = subprocess.run([sys.executable, "benchmarks/gpu/prepare.py", "--dry-run", "--carry", str(carry)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert prep.returncode == 0, prep.stdout + prep.stderr[-3000:]
    run = subprocess.run([sys.executable, "benchmarks/gpu/run.py", "--carry", str(carry), "--out", str(out),
                          "--deadline", "pretrain-base=2"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=600)
    return carry, out, prep, run


def test_prepare_builds_the_carry_and_checks_its_size(dry_run):
    carry, _, prep, _ = dry_run
    manifest = json.loads((carry / "MANIFEST.json").read_text(encoding="utf-8"))
    assert manifest["dry_run"] and [w.split("-")[0] for w in manifest["wheels"]] == ["bertflow"]
    assert manifest["sst2"].startswith("1200 of ")  # every row of data/labeled/train.csv
    assert {p.name for p in (carry / "minilm").iterdir()} >= {"model.safetensors", "config.json", "vocab.txt"}
    assert "of 64 MiB: OK" in prep.stdout


def test_every_part_reports_and_the_late_one_is_a_timeout(dry_run):
    carry, out, _, run = dry_run
    assert run.returncode == 1, run.stdout[-3000:] + run.stderr[-3000:]  # not all ok: one part timed out
    assert sorted(p.name for p in out.iterdir()) == ["gpu-kit.json", "gpu-kit.log", "gpu-kit.md"]
    summary = json.loads((out / "gpu-kit.json").read_text(encoding="utf-8"))
    parts = summary["parts"]
    assert summary["dry_run"] and list(parts) == PARTS
    assert {n: p["status"] for n, p in parts.items()} == {**{n: "ok" for n in PARTS}, "pretrain-base": "timeout"}, \
        {n: p.get("log_tail") for n, p in parts.items()}
    assert parts["pretrain-base"]["deadline_s"] == 2 and parts["pretrain-base"]["figures"] is None
    assert summary["environment"]["install"]["rc"] == 0
    # the children imported bertflow from the installed wheel, not from the checkout
    assert "/site/bertflow/" in parts["env"]["figures"]["bertflow"]
    assert parts["pretrain-small"]["figures"]["figures"]["ours"]["tokens_per_s"] > 0
    assert [r["model"] for r in parts["score-small"]["figures"]["results"]] == ["small"]
    assert parts["score-small"]["figures"]["results"][0]["ours_rows_per_s"] > 0
    finetune = parts["finetune-sst2"]["figures"]
    assert finetune["base_model"] == str((carry / "minilm").resolve())  # the carried bf16 MiniLM
    assert 0.0 <= finetune["value"] <= 1.0 and finetune["hyperparameters"]["epochs"] == 1


def test_markdown_summary_has_a_row_per_part(dry_run):
    _, out, _, run = dry_run
    md = (out / "gpu-kit.md").read_text(encoding="utf-8")
    for name in PARTS:
        assert f"| {name} | " in md
    assert "| pretrain-base | timeout" in md and "| finetune-sst2 | ok" in md
    assert "(CPU dry run)" in md and md in run.stdout  # the device call's output_tail ends with it
