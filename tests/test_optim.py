"""The optimizers and LR schedules pretraining and fine-tuning share: schedule (steps and wall clock), LAMB,
weight-decay groups, and fine-tuning's recipe kept bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

from bertflow.bert_core.lamb import Lamb
from bertflow.bert_core.optim import Schedule, build_optimizer, param_groups, set_lr
from bertflow.bert_core.pretrain.model import BertForPretraining, ModelConfig


def lrs(schedule: Schedule, steps: int) -> list[float]:
    out, warm_end = [], None
    for s in range(steps):
        p = schedule.progress(s, 0.0)
        warm_end = schedule.warmup_end(s, p, warm_end)
        out.append(schedule.lr_at(s, p, warm_end))
    return out


def test_linear_schedule_is_transformers_linear_warmup_decay_shifted_by_one():
    from transformers import get_linear_schedule_with_warmup

    sched = Schedule(lr=1e-3, warmup_steps=10, kind="linear", min_lr_ratio=0.0, max_steps=100, budget_minutes=None)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    hf = get_linear_schedule_with_warmup(opt, num_warmup_steps=10, num_training_steps=100)
    theirs = []
    for _ in range(101):
        theirs.append(opt.param_groups[0]["lr"])
        opt.step()
        hf.step()
    ours = lrs(sched, 100)
    assert ours[:10] == pytest.approx(theirs[1:11])  # warmup: our step s uses their s+1 (never a step at LR 0)
    assert ours[10:] == pytest.approx(theirs[10:100])  # decay: identical


def test_cosine_schedule_ends_at_the_floor():
    sched = Schedule(lr=1.0, warmup_steps=4, kind="cosine", min_lr_ratio=0.1, max_steps=44, budget_minutes=None)
    values = lrs(sched, 45)
    assert values[3] == pytest.approx(1.0) and values[4] == pytest.approx(1.0)
    assert values[24] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert values[44] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[4:], values[5:]))


def test_wall_clock_budget_drives_the_decay_when_it_ends_first():
    sched = Schedule(lr=1.0, warmup_steps=2, kind="linear", min_lr_ratio=0.0, max_steps=10_000, budget_minutes=10.0)
    assert sched.progress(5, 2.5) == pytest.approx(0.25)  # time dominates: 25% of the budget, 0.05% of the steps
    warm_end = sched.warmup_end(2, sched.progress(2, 0.5), None)
    assert warm_end == pytest.approx(0.05)
    assert sched.lr_at(100, sched.progress(100, 5.25), warm_end) == pytest.approx(0.5)
    assert sched.lr_at(100, sched.progress(100, 10.0), warm_end) == pytest.approx(0.0)
    assert sched.progress(100, 12.0) == 1.0


def test_lamb_step_matches_the_formula():
    torch.manual_seed(0)
    w0 = torch.randn(5, 3)
    g = torch.randn(5, 3)
    p = torch.nn.Parameter(w0.clone())
    p.grad = g.clone()
    opt = Lamb([p], lr=0.1, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01)
    opt.step()
    m, v = 0.1 * g, 0.01 * g * g
    u = (m / 0.1) / ((v / 0.01).sqrt() + 1e-6) + 0.01 * w0
    expected = w0 - 0.1 * (w0.norm() / u.norm()) * u
    torch.testing.assert_close(p.detach(), expected, rtol=1e-6, atol=1e-6)
    state = opt.state_dict()  # loadable with weights_only
    assert set(state["state"][0]) == {"step", "exp_avg", "exp_avg_sq"}


def test_lamb_minimises_a_quadratic():
    torch.manual_seed(0)
    target = torch.randn(20)
    x = torch.nn.Parameter(torch.randn(20))
    opt = Lamb([x], lr=0.05)
    start = ((x - target) ** 2).sum().item()
    for _ in range(200):
        opt.zero_grad()
        ((x - target) ** 2).sum().backward()
        opt.step()
    assert ((x - target) ** 2).sum().item() < 0.01 * start


def test_no_weight_decay_on_biases_and_layernorms():
    model = BertForPretraining(ModelConfig(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2,
                                           intermediate_size=32, max_position_embeddings=16))
    decay, no_decay = param_groups(model, 0.01)
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    opt = build_optimizer(model, 1e-3, 0.01, torch.device("cpu"), kind="lamb")
    assert isinstance(opt, Lamb) and [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]


def test_fine_tuning_keeps_its_recipe_bit_for_bit(tiny_model):
    """The shared optimizer and schedule reproduce fine-tuning's own former AdamW + LambdaLR exactly."""
    from transformers import AutoModelForSequenceClassification

    def old_factor(step: int, warmup: int = 3, total: int = 12) -> float:  # finetune/train.py before sharing
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return max(0.0, (total - step) / max(1, total - warmup))

    models = [AutoModelForSequenceClassification.from_pretrained(tiny_model) for _ in range(2)]
    old_opt = torch.optim.AdamW(param_groups(models[0], 0.01), lr=5e-4, fused=False)
    old_sched = torch.optim.lr_scheduler.LambdaLR(old_opt, old_factor)
    new_opt = build_optimizer(models[1], 5e-4, 0.01, torch.device("cpu"))
    schedule = Schedule(5e-4, 3, "linear", min_lr_ratio=0.0, max_steps=12, warmup_pad=1)
    gen = torch.Generator().manual_seed(0)
    for step in range(12):
        ids = torch.randint(5, models[0].config.vocab_size, (4, 16), generator=gen)
        labels = torch.randint(0, 3, (4,), generator=gen)
        for m in models:
            m.train()
            torch.manual_seed(step)  # the same dropout masks in both
            m(input_ids=ids, labels=labels).loss.backward()
        set_lr(new_opt, schedule.lr_at(step))
        assert new_opt.param_groups[0]["lr"] == old_opt.param_groups[0]["lr"]
        old_opt.step()
        old_sched.step()
        new_opt.step()
        old_opt.zero_grad()
        new_opt.zero_grad()
        assert schedule.lr_at(step + 1) == old_sched.get_last_lr()[0]  # the logged "lr"
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert any(not torch.equal(a, b) for a, b in zip(models[0].parameters(),
                                                   AutoModelForSequenceClassification.from_pretrained(tiny_model)
                                                   .parameters()))  # and they did train
