"""bertflow installs like a product: one import name, presets and sample inside the wheel, a working CLI.

The wheel test builds the wheel from this checkout and installs it (without its
dependencies) into a fresh virtual environment in a temporary folder; the
dependencies come from the test environment's site-packages, added as a plain path
(its ``.pth`` files, among them this checkout's editable install, are not run). Every
command then runs from a folder outside the checkout, so only the installed wheel can
answer an import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tests.helpers import REPO

LAYERS = {"bert_core": "bertflow.bert_core", "tasks": "bertflow.tasks", "flows": "bertflow.flows",
          "deployments": "bertflow.deployments"}


def test_every_package_folder_is_mapped_into_bertflow():
    """A new subpackage must be listed in pyproject.toml, or the wheel silently lacks it."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = {"bertflow"}
    for folder, name in LAYERS.items():
        assert tool["package-dir"][name] == folder
        for init in (REPO / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(REPO / folder)
            found.add(".".join([name, *rel.parts]))
    assert found <= listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    """A fresh venv (outside the checkout) with the bertflow wheel built from this checkout installed in it."""
    root = tmp_path_factory.mktemp("wheel")
    # from a copy: setuptools writes build/ and *.egg-info into the tree it builds
    source = shutil.copytree(REPO, root / "src", ignore=shutil.ignore_patterns(".*", "build", "*.egg-info", "workspace"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(source)], check=True, capture_output=True, text=True, cwd=root)
    wheels = list((root / "dist").glob("bertflow-*.whl"))
    assert len(wheels) == 1, wheels
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next(venv.glob("lib/python*/site-packages"))
    # every site-packages folder of the test environment (a venv layered on another has two), none of its .pth run
    sites = dict.fromkeys([sysconfig.get_paths()["purelib"], *(p for p in sys.path if p.endswith("site-packages"))])
    (site / "_test_env_dependencies.pth").write_text("".join(f"{p}\n" for p in sites))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheels[0])], check=True, capture_output=True, text=True, cwd=root)
    return venv


def in_venv(venv: Path, args: list[str], cwd: Path, extra_env: dict[str, str] | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra_env or {})
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_wheel_imports_only_as_bertflow(wheel_venv, tmp_path):
    py = str(wheel_venv / "bin" / "python")
    proc = in_venv(wheel_venv, [py, "-c", (
        "import importlib, json, bertflow, bertflow.bert_core.config, bertflow.flows.pipeline, bertflow.tasks.stages\n"
        "from bertflow.bert_core.sweep.space import load_space\n"
        "gone = []\n"
        "for name in ('tasks', 'flows', 'bert_core', 'deployments'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        gone.append(name)\n"
        "print(json.dumps({'file': bertflow.__file__, 'gone': gone, 'version': bertflow.__version__,\n"
        "                  'space': sorted(load_space('tiny').params)}))\n")], tmp_path)
    assert proc.returncode == 0, proc.stderr

    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(seen["file"]).is_relative_to(wheel_venv), seen["file"]
    assert seen["gone"] == ["tasks", "flows", "bert_core", "deployments"]
    assert "finetune.lr" in seen["space"]  # the packaged search space (configs/spaces/) ships in the wheel
    typed = next(wheel_venv.glob("lib/python*/site-packages/bertflow/py.typed"))
    assert typed.is_file()
    version = in_venv(wheel_venv, [str(wheel_venv / "bin" / "bertflow"), "--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"bertflow {seen['version']}", version


@pytest.mark.slow
def test_wheel_runs_the_tiny_pipeline_and_scores_outside_the_checkout(wheel_venv, tmp_path):
    """`bertflow pipeline --config tiny` finds the packaged preset and sample; `bertflow score` scores a lake."""
    cli = str(wheel_venv / "bin" / "bertflow")
    ws = tmp_path / "ws"
    home = {"PREFECT_HOME": str(tmp_path / "prefect")}  # Prefect's ephemeral API, as a user's first run gets it
    run = in_venv(wheel_venv, [cli, "pipeline", "--config", "tiny", "--workspace", str(ws),
                               "--set", "pretrain.max_steps=30", "--set", "finetune.epochs=1"], tmp_path, home)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for stage in ("ingest", "vocab", "mask", "pretrain", "finetune"):
        assert (ws / stage / "manifest.json").is_file(), stage
    assert len(list((ws / "score").glob("*/manifest.json"))) == 1  # <workspace>/score/<job>
    out = tmp_path / "scored"
    lake = next(wheel_venv.glob("lib/python*/site-packages/bertflow/data/lake"))
    scored = in_venv(wheel_venv, [cli, "score", "--config", "tiny", "--workspace", str(ws), "--input", str(lake),
                                  "--model", str(ws / "finetune" / "model"), "--output", str(out)], tmp_path, home)
    assert scored.returncode == 0, scored.stdout[-3000:] + scored.stderr[-3000:]

    table = ds.dataset(sorted(str(p) for p in out.rglob("*.parquet")), format="parquet").to_table()
    rows_in = ds.dataset(str(lake), format="parquet", partitioning="hive").count_rows()
    assert table.num_rows == rows_in and "label" in table.column_names
