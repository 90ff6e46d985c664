"""The distillation loss: temperature-scaled KL on the teacher's soft labels, cross-entropy on gold labels,
optionally MSE between paired hidden states.

Labels in a batch use two markers: ``IGNORE`` (-100) where nothing is predicted (special
tokens, a word's later pieces) and ``NO_GOLD`` (-1) where the teacher's soft label is the only
target (unlabeled text). The KL term covers both gold and no-gold positions; cross-entropy
only the gold ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bertflow.bert_core.finetune.encode import IGNORE

NO_GOLD = -1


@dataclass(frozen=True)
class DistillLoss:
    teacher: torch.nn.Module
    temperature: float = 2.0
    alpha: float = 0.5
    hidden_weight: float = 0.0
    layer_map: Sequence[int] = ()  # student layer m (0-based) -> teacher layer layer_map[m]

    def __call__(self, student: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch.pop("labels")
        hidden = self.hidden_weight > 0
        with torch.no_grad():
            t_out = self.teacher(**batch, output_hidden_states=hidden)
        s_out = student(**batch, output_hidden_states=hidden)
        s_logits, t_logits = s_out.logits.float(), t_out.logits.float()
        if s_logits.dim() == 3:  # token task: the positions that carry a label, gold or not
            keep = labels != IGNORE
            s_logits, t_logits, labels = s_logits[keep], t_logits[keep], labels[keep]
        loss = self.alpha * soft_label_kl(s_logits, t_logits, self.temperature)
        gold = labels >= 0
        if self.alpha < 1 and bool(gold.any()):
            loss = loss + (1 - self.alpha) * F.cross_entropy(s_logits[gold], labels[gold])
        if hidden:
            loss = loss + self.hidden_weight * hidden_mse(s_out.hidden_states, t_out.hidden_states, self.layer_map,
                                                          batch["attention_mask"])
        return loss


def soft_label_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher || student) at ``temperature``, times T^2 so its gradients keep their scale (Hinton et al. 2015)."""
    if student_logits.numel() == 0:
        return student_logits.sum()
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                    reduction="batchmean", log_target=True) * (t * t)


def hidden_mse(student_states: Sequence[torch.Tensor], teacher_states: Sequence[torch.Tensor],
               layer_map: Sequence[int], attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error between student layer m's output and teacher layer ``layer_map[m]``'s, over real tokens.

    ``hidden_states[0]`` is the embeddings' output on both sides; layer i's output is ``[i + 1]``.
    """
    mask = attention_mask.unsqueeze(-1).to(student_states[0].dtype)
    total = student_states[0].new_zeros(())
    for m, t in enumerate(layer_map):
        diff = (student_states[m + 1].float() - teacher_states[t + 1].float()) * mask
        total = total + diff.pow(2).sum() / (mask.sum() * diff.shape[-1]).clamp(min=1)
    return total / max(1, len(layer_map))
