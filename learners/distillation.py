"""Hinton knowledge distillation with PocketFlow's settings (REFERENCE.md section 7b).

The student's loss is the task loss plus ``weight * CE(softmax(z_t / T), z_s / T)``: the
cross-entropy between the teacher's softened distribution and the student's softened
logits, with PocketFlow's ``loss_w_dst = 4.0`` and ``tempr_dst = 4.0`` and, as in
PocketFlow, no ``T**2`` factor. The teacher is the uncompressed pre-trained model; its
logits are detached (no gradient reaches it).

>>> import torch
>>> from learners.distillation import distillation_loss
>>> z_s, z_t = torch.zeros(2, 10), torch.zeros(2, 10)
>>> round(distillation_loss(z_s, z_t).item(), 4)  # uniform vs uniform: log(10)
2.3026
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["DEFAULT_TEMPERATURE", "DEFAULT_WEIGHT", "Distillation", "distillation_loss"]

#: PocketFlow's ``loss_w_dst``.
DEFAULT_WEIGHT = 4.0
#: PocketFlow's ``tempr_dst``.
DEFAULT_TEMPERATURE = 4.0


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE
) -> torch.Tensor:
    """``CE(softmax(z_t / T), z_s / T)``, averaged over the batch (no ``T**2`` factor).

    The teacher's logits are detached: the loss only trains the student.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ in shape: the teacher must predict the same classes")
    target = torch.softmax(teacher_logits.detach().float() / temperature, dim=1)
    log_p = torch.log_softmax(student_logits.float() / temperature, dim=1)
    return -(target * log_p).sum(dim=1).mean()


@dataclass(frozen=True)
class Distillation:
    """Distillation from ``teacher`` (frozen, put in eval mode) with ``weight`` and ``temperature``.

    Calling it as ``loss_fn(model, images, labels)`` gives the task loss (cross-entropy with
    ``label_smoothing``) plus the weighted distillation term, the signature
    :func:`learners.training.finetune` takes.
    """

    teacher: nn.Module
    weight: float = DEFAULT_WEIGHT
    temperature: float = DEFAULT_TEMPERATURE
    label_smoothing: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ValueError(f"distillation weight={self.weight}: must be a finite number >= 0")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"distillation temperature={self.temperature}: must be a finite number > 0")
        self.teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.teacher(images)

    def combined(
        self, logits: torch.Tensor, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(total loss, task loss)`` for the student's ``logits`` on ``images``."""
        task = nn.functional.cross_entropy(logits.float(), labels, label_smoothing=self.label_smoothing)
        if self.weight == 0:
            return task, task
        dst = distillation_loss(logits, self.teacher_logits(images), self.temperature)
        return task + self.weight * dst, task

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.combined(model(images), images, labels)[0]
