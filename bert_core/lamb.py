"""LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning"): Adam with a
per-tensor trust ratio, for very large batches.

Update per parameter tensor ``w`` with gradient ``g`` at step ``t``::

    m = b1 m + (1 - b1) g          v = b2 v + (1 - b2) g^2
    u = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps) + wd * w
    w -= lr * (||w|| / ||u||) * u   (trust ratio 1 where either norm is 0)

The state holds only tensors and ints, so ``state_dict()`` loads with
``torch.load(weights_only=True)``. Written with ``torch._foreach`` ops: a handful of
kernel launches per step rather than several per tensor.
"""

from __future__ import annotations

import torch
from torch.optim import Optimizer


class Lamb(Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-6,
                 weight_decay: float = 0.0) -> None:
        if lr <= 0 or eps <= 0 or not (0 <= betas[0] < 1 and 0 <= betas[1] < 1):
            raise ValueError(f"invalid LAMB hyper-parameters lr={lr} betas={betas} eps={eps}")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            b1, b2 = group["betas"]
            grads, exp_avgs, exp_avg_sqs = [], [], []
            for p in params:
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
            step = self.state[params[0]]["step"]
            torch._foreach_lerp_(exp_avgs, grads, 1 - b1)
            torch._foreach_mul_(exp_avg_sqs, b2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - b2)
            denom = torch._foreach_div(exp_avg_sqs, 1 - b2**step)
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, group["eps"])
            updates = torch._foreach_div(exp_avgs, denom)
            torch._foreach_div_(updates, 1 - b1**step)
            if group["weight_decay"]:
                torch._foreach_add_(updates, params, alpha=group["weight_decay"])
            w_norms = torch._foreach_norm(params)
            u_norms = torch._foreach_norm(updates)
            for p, u, wn, un in zip(params, updates, w_norms, u_norms):
                trust = torch.where((wn > 0) & (un > 0), wn / un, torch.ones_like(wn))
                p.add_(u * trust, alpha=-group["lr"])
        return loss
