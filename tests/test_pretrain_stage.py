"""The pretraining stage end to end on CPU: training, checkpoints, resume, export, errors, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bertflow.bert_core.configtools import evolve, from_dict
from bertflow.bert_core.errors import ConfigError, InputError
from bertflow.bert_core.pretrain import checkpoint as ckpt
from bertflow.bert_core.pretrain.batch import pack_batch
from bertflow.bert_core.pretrain.config import PretrainConfig
from bertflow.bert_core.pretrain.data import RowReader
from bertflow.bert_core.pretrain.hf_compat import read_hf_dir
from bertflow.bert_core.pretrain.inputs import read_data_info
from bertflow.bert_core.pretrain.model import BertForPretraining, ModelConfig
from bertflow.bert_core.pretrain.stage import run
from bertflow.bert_core.pretrain.synthetic import write_masked_data, write_tokenizer
from tests.helpers import REPO

VOCAB, SEQ = 300, 32
TINY = PretrainConfig(
    hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, max_position_embeddings=64,
    batch_size=16, lr=2e-3, warmup_steps=5, max_steps=40, device="cpu", num_workers=0,
    log_every=5, checkpoint_every=20, seed=7,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain-inputs")
    return {
        "full": write_masked_data(root / "full", 600, SEQ, VOCAB, recipe="full", rows_per_shard=250),
        "nsp": write_masked_data(root / "nsp", 600, SEQ, VOCAB, recipe="nsp", rows_per_shard=250, seed=1),
        "tok": write_tokenizer(root / "tok", VOCAB),
    }


class Recorder:
    def __init__(self, stop_at: int | None = None) -> None:
        self.metrics: dict[int, dict[str, float]] = {}
        self.progress: list[int] = []
        self.stop_at = stop_at

    def on_metrics(self, step, m):
        self.metrics[step] = m

    def on_progress(self, done, total):
        self.progress.append(done)
        if done == self.stop_at:
            raise KeyboardInterrupt("simulated crash")


def test_tiny_nsp_run_learns_checkpoints_and_exports_a_transformers_model(inputs, tmp_path):
    from transformers import BertForPreTraining

    rec = Recorder()
    result = run(TINY, inputs["nsp"], inputs["tok"], tmp_path / "run", rec.on_metrics, rec.on_progress)
    losses = [rec.metrics[s]["loss"] for s in sorted(rec.metrics)]
    assert losses[-1] < losses[0] - 0.5, losses
    assert result.stage == "pretrain" and result.metrics["steps"] == 40
    assert result.metrics["tokens"] == rec.metrics[40]["tokens"] > 0
    assert {"final_loss", "mlm_accuracy", "nsp_accuracy", "tokens_per_s", "minutes"} <= set(result.metrics)
    assert {"loss", "mlm_accuracy", "nsp_accuracy", "lr", "grad_norm", "tokens_per_s"} <= set(rec.metrics[5])
    assert rec.progress == list(range(1, 41))

    steps = [p.name for p in ckpt.list_checkpoints(tmp_path / "run")]
    assert steps == ["step-0000020", "step-0000040"]
    assert result.details["checkpoint_dir"].endswith("step-0000040")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stage"] == "pretrain" and manifest["metrics"]["steps"] == 40

    export = Path(result.details["export_dir"])
    assert {"config.json", "model.safetensors", "vocab.txt", "tokenizer_config.json"} <= {p.name for p in
                                                                                          export.iterdir()}
    hf, loading = BertForPreTraining.from_pretrained(export, output_loading_info=True)
    assert not loading["missing_keys"] and not loading["unexpected_keys"]
    # the export holds the final checkpoint's weights: same logits as our model loaded from it
    point = ckpt.load_checkpoint(result.details["checkpoint_dir"])
    shape, _ = read_hf_dir(export)
    ours = BertForPretraining(ModelConfig(**shape, with_nsp=True))
    ours.load_state_dict(point.model)
    info = read_data_info(inputs["nsp"])
    raw = RowReader(info, 6, seed=0).read(0)
    with torch.no_grad():
        logits = ours.eval().mlm_logits(ours.encode(pack_batch(raw)))
        keep = torch.from_numpy(raw["attention_mask"]).bool()
        theirs = hf.eval()(**{k: torch.from_numpy(raw[k]) for k in ("input_ids", "attention_mask",
                                                                     "token_type_ids")}).prediction_logits[keep]
    torch.testing.assert_close(logits, theirs, rtol=1e-5, atol=1e-5)


def test_checkpoint_round_trip(tmp_path):
    model = BertForPretraining(ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2,
                                           intermediate_size=64, max_position_embeddings=16))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.embeddings.word.weight.sum().backward()
    opt.step()
    rng = [ckpt.capture_rng()]
    path = ckpt.save_checkpoint(tmp_path, 3, model.state_dict(), opt.state_dict(), rng, {"step": 3}, keep=2)
    back = ckpt.load_checkpoint(path)
    assert path.name == "step-0000003" and back.state == {"step": 3}
    torch.testing.assert_close(back.model, model.state_dict(), rtol=0, atol=0)
    torch.testing.assert_close(back.optimizer["state"], opt.state_dict()["state"], rtol=0, atol=0)
    first = torch.rand(3)
    ckpt.restore_rng(back.rng[0])
    torch.testing.assert_close(torch.rand(3), first, rtol=0, atol=0)
    for step in (4, 5):  # only the newest `keep` stay
        ckpt.save_checkpoint(tmp_path, step, model.state_dict(), opt.state_dict(), rng, {"step": step}, keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-0000004", "step-0000005"]


def test_interrupted_and_resumed_run_matches_an_uninterrupted_one(inputs, tmp_path):
    """Crash after step 20 (its checkpoint written), rerun the same call: steps 21..40 are identical.

    On CPU in fp32 everything is deterministic (weights, AdamW moments, dropout RNG, data
    position all restored), so the losses match to float64 print precision: tolerance 1e-12.
    """
    cfg = evolve(TINY, log_every=1, dropout=0.1, attention_dropout=0.1)
    straight = Recorder()
    run(cfg, inputs["full"], inputs["tok"], tmp_path / "a", straight.on_metrics)

    crashing = Recorder(stop_at=20)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, inputs["full"], inputs["tok"], tmp_path / "b", crashing.on_metrics, crashing.on_progress)
    assert max(crashing.metrics) == 20
    resumed = Recorder()
    result = run(cfg, inputs["full"], inputs["tok"], tmp_path / "b", resumed.on_metrics)
    assert result.details["resumed_from_step"] == 20
    assert sorted(resumed.metrics) == list(range(21, 41))
    for step in range(21, 41):
        assert resumed.metrics[step]["loss"] == pytest.approx(straight.metrics[step]["loss"], rel=0, abs=1e-12)
        assert resumed.metrics[step]["tokens"] == straight.metrics[step]["tokens"]
    assert result.metrics["tokens"] == straight.metrics[40]["tokens"]

    again = Recorder()  # a finished run: rerunning returns the result without training
    rerun = run(cfg, inputs["full"], inputs["tok"], tmp_path / "b", again.on_metrics)
    assert not again.metrics and rerun.metrics["final_loss"] == result.metrics["final_loss"]


def test_kill_9_then_rerun_continues_from_the_last_checkpoint(inputs, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "bertflow.bert_core.pretrain", "--data", str(inputs["full"]), "--tokenizer",
            str(inputs["tok"]), "--out", str(out), "--quiet"]
    for key in ("hidden_size=64", "num_layers=2", "num_heads=2", "intermediate_size=128",
                "max_position_embeddings=64", "batch_size=16", "device=cpu", "num_workers=0", "max_steps=60",
                "checkpoint_every=5", "warmup_steps=5"):
        args += ["--set", key]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while len(ckpt.list_checkpoints(out)) < 1 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    first = ckpt.list_checkpoints(out)
    assert first, proc.stderr.read().decode()
    killed_at = json.loads((first[-1] / ckpt.STATE_FILE).read_text())["step"]
    assert killed_at < 60
    done = subprocess.run(args + ["--set", "log_every=1000", "--set", "checkpoint_every=1000"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["metrics"]["steps"] == 60 and summary["details"]["resumed_from_step"] >= killed_at


def test_runtime_knobs_resume_and_a_changed_training_identity_is_refused_naming_it(inputs, tmp_path):
    out = tmp_path / "run"
    cfg = evolve(TINY, max_steps=4, checkpoint_every=2)
    run(cfg, inputs["full"], inputs["tok"], out)
    steps = [p.name for p in ckpt.list_checkpoints(out)]
    knobs = evolve(cfg, checkpoint_every=1, log_every=1, num_workers=1, keep_checkpoints=3, compile_mode="max-autotune")
    assert run(knobs, inputs["full"], inputs["tok"], out).details["resumed_from_step"] == 4
    assert [p.name for p in ckpt.list_checkpoints(out)] == steps

    with pytest.raises(InputError, match=r"pretrain\.lr \(0\.002 -> 0\.001\) changed.*--restart"):
        run(evolve(cfg, lr=1e-3), inputs["full"], inputs["tok"], out)
    with pytest.raises(InputError, match=r"pretrain\.max_steps \(4 -> 8\)"):  # it shapes the LR schedule
        run(evolve(cfg, max_steps=8), inputs["full"], inputs["tok"], out)
    with pytest.raises(InputError, match="the masked data changed"):
        run(cfg, inputs["nsp"], inputs["tok"], out)
    tok = write_tokenizer(tmp_path / "tok", VOCAB)
    (tok / "tokenizer_config.json").write_text('{"do_lower_case": false}')  # same vocabulary size, other tokenizer
    with pytest.raises(InputError, match="the tokenizer files changed"):
        run(cfg, inputs["full"], tok, out)
    assert json.loads((out / "run.json").read_text())["identity"]["config"]["lr"] == cfg.lr  # refusals change nothing

    restarted = run(evolve(cfg, lr=1e-3), inputs["full"], inputs["tok"], out, restart=True)
    assert "resumed_from_step" not in restarted.details and restarted.details["changed"][0].startswith("pretrain.lr")
    assert restarted.details["set_aside"] == str(tmp_path / "run.previous")
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run.previous")] == steps  # the old run, kept aside
    assert json.loads((out / "run.json").read_text())["identity"]["config"]["lr"] == 1e-3


def test_a_run_json_from_before_identities_resumes_after_the_upgrade(inputs, tmp_path):
    """A directory trained by an older bertflow (its run.json without ``identity``) is resumed, not thrown away."""
    out = tmp_path / "run"
    cfg = evolve(TINY, max_steps=4, checkpoint_every=2)
    run(cfg, inputs["full"], inputs["tok"], out)
    new = json.loads((out / "run.json").read_text())
    config = {**new["identity"]["config"], "init_from": None}
    del config["min_lr_ratio"]  # a key added since: the run used its default
    legacy = {"config": config, "data_fingerprint": new["identity"]["data"], "init_digest": None, "world_size": 1,
              "data_dir": new["data_dir"], "tokenizer_dir": new["tokenizer_dir"]}
    (out / "run.json").write_text(json.dumps(legacy))
    with pytest.raises(InputError, match=r"pretrain\.min_lr_ratio \(0\.0 -> 0\.1\)"):
        run(evolve(cfg, min_lr_ratio=0.1), inputs["full"], inputs["tok"], out)
    assert run(evolve(cfg, log_every=1), inputs["full"], inputs["tok"], out).details["resumed_from_step"] == 4
    assert json.loads((out / "run.json").read_text()) == new  # upgraded to the identity record


@pytest.mark.parametrize("damage", ["truncate-weights", "drop-optimizer", "garble-state"])
def test_damaged_checkpoint_is_an_input_error_naming_the_file(inputs, tmp_path, damage):
    out = tmp_path / "run"
    cfg = evolve(TINY, max_steps=4, checkpoint_every=2)
    crashing = Recorder(stop_at=2)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, inputs["full"], inputs["tok"], out, None, crashing.on_progress)
    latest = ckpt.list_checkpoints(out)[-1]
    if damage == "truncate-weights":
        target = latest / ckpt.MODEL_FILE
        target.write_bytes(target.read_bytes()[:1000])
    elif damage == "drop-optimizer":
        target = latest / ckpt.OPTIMIZER_FILE
        target.unlink()
    else:
        target = latest / ckpt.STATE_FILE
        target.write_text("{not json")
    with pytest.raises(InputError) as err:
        run(cfg, inputs["full"], inputs["tok"], out)
    assert target.name in str(err.value) and str(latest) in str(err.value)


def test_vocab_mismatches_are_input_errors(inputs, tmp_path, minilm_dir):
    with pytest.raises(InputError, match="vocab size mismatch: init_from .* 30522 .* 300"):
        run(evolve(TINY, init_from=str(minilm_dir)), inputs["full"], inputs["tok"], tmp_path / "a")
    small_tok = write_tokenizer(tmp_path / "tok200", 200)
    with pytest.raises(InputError, match="vocab size mismatch: tokenizer .* 200 entries .* vocab_size 300"):
        run(TINY, inputs["full"], small_tok, tmp_path / "b")
    with pytest.raises(InputError, match="not a masked-data manifest|manifest.json is missing"):
        run(TINY, tmp_path, inputs["tok"], tmp_path / "c")
    with pytest.raises(ConfigError, match="max_position_embeddings"):
        run(evolve(TINY, max_position_embeddings=16), inputs["full"], inputs["tok"], tmp_path / "d")


def test_init_from_a_previous_export_continues_training(inputs, tmp_path):
    first = run(evolve(TINY, max_steps=30), inputs["full"], inputs["tok"], tmp_path / "first")
    rec = Recorder()
    second = run(evolve(TINY, max_steps=5, log_every=1, warmup_steps=1, lr=1e-4, init_from=first.path),
                 inputs["full"], inputs["tok"], tmp_path / "second", rec.on_metrics)
    fresh = Recorder()
    run(evolve(TINY, max_steps=5, log_every=1, warmup_steps=1, lr=1e-4), inputs["full"], inputs["tok"],
        tmp_path / "fresh", fresh.on_metrics)
    assert rec.metrics[1]["loss"] < fresh.metrics[1]["loss"] - 0.5
    assert second.details["init_report"]["fresh"] == []  # every weight, heads included, came from the export


def test_wall_clock_budget_ends_the_run_with_the_lr_at_its_floor(inputs, tmp_path):
    rec = Recorder()
    result = run(evolve(TINY, max_steps=100_000, budget_minutes=0.04, log_every=1, checkpoint_every=100_000),
                 inputs["full"], inputs["tok"], tmp_path / "run", rec.on_metrics)
    last = max(rec.metrics)
    assert 5 < last < 100_000 and result.metrics["minutes"] >= 0.04
    # the decay followed the clock, not max_steps (which would have left the LR at its peak)
    assert rec.metrics[last]["lr"] < 0.3 * TINY.lr < rec.metrics[TINY.warmup_steps + 1]["lr"]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path / "run")] == [ckpt.step_dir_name(last)]


def test_torchrun_two_cpu_processes_train_and_checkpoint(inputs, tmp_path):
    out = tmp_path / "ddp"
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "bertflow.bert_core.pretrain", "--data", str(inputs["nsp"]), "--tokenizer", str(inputs["tok"]),
            "--out", str(out), "--quiet"]
    for key in ("hidden_size=64", "num_layers=2", "num_heads=2", "intermediate_size=128",
                "max_position_embeddings=64", "batch_size=8", "device=cpu", "num_workers=0", "max_steps=6",
                "checkpoint_every=3", "grad_accum=2"):
        args += ["--set", key]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout[done.stdout.index("{"):])
    assert summary["details"]["world_size"] == 2 and summary["metrics"]["steps"] == 6
    state = json.loads((out / "checkpoints" / "step-0000006" / ckpt.STATE_FILE).read_text())
    assert state["world_size"] == 2 and state["micro_batches"] == 6 * 2 * 2 and state["rows"] == 6 * 2 * 2 * 8
    assert len(torch.load(out / "checkpoints" / "step-0000006" / ckpt.RNG_FILE, weights_only=True)) == 2
    assert (out / "export" / "model.safetensors").is_file()
    same_config = from_dict(PretrainConfig, json.loads((out / "run.json").read_text())["identity"]["config"])
    with pytest.raises(InputError, match="trained with 2 processes"):  # one process would change the batch
        run(same_config, inputs["nsp"], inputs["tok"], out)


def test_cli_reports_a_bad_key_on_one_line(inputs, tmp_path, capsys):
    from bertflow.bert_core.pretrain.__main__ import main

    code = main(["--data", str(inputs["full"]), "--tokenizer", str(inputs["tok"]), "--out", str(tmp_path),
                 "--set", "learning_rate=1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "unknown config key 'pretrain.learning_rate'" in err
