"""Baselines beside the paper's rows of Tables 1 and 2 (beyond the paper): what a reader would try before
amalgamation, each on the student's architecture.

* ``KD``: multi-teacher knowledge distillation. The student network, from the same start as the
  amalgamation student, trained end to end on the unlabeled pool against every teacher's sigmoid outputs
  for the tasks of C: the loss of Eq. 7 on the student's own head instead of through filters and teacher
  layers. No labels. Its epochs are matched to the image passes of block-wise training plus fine-tuning
  (:func:`kd_epochs`), so it costs at least as much as the student.
* ``Supervised``: the same network from the generic start, trained with Eq. 2 on the train split's labels of
  every task of C, as long as the teachers together (what labels would buy).
* ``Ensemble``: the teachers side by side (:class:`TeacherEnsemble`), i.e. the networks the TargetNet replaces.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..models.blocknet import BlockNet
from ..train import Schedule, fit
from .blockwise import filtered_loss
from .filters import TaskPlan, select_tasks
from .pool import epochs_per_block
from .teachers import teacher_loss

ROWS = ("Ensemble", "KD", "Supervised")


def kd_epochs(preset, num_blocks: int, train_images: int) -> int:
    """Epochs of the KD baseline over ``train_images`` pool images: at least the image passes of block-wise
    training (``preset.student.block_epochs`` or ``preset.student.block.epochs`` per block over ``preset.student.block_images``) plus
    fine-tuning, so KD never gets less training than the student. ``preset.baselines.kd.epochs > 0`` overrides."""
    if preset.baselines.kd.epochs > 0:
        return preset.baselines.kd.epochs
    per_block = min(preset.student.block_images or train_images, train_images)
    profile = epochs_per_block(preset.student.block_epochs, num_blocks) if preset.student.block_epochs else \
        [preset.student.block.epochs] * num_blocks
    passes = sum(profile) * per_block + preset.student.finetune.epochs * min(preset.student.finetune_images or train_images,
                                                                    train_images)
    return max(1, math.ceil(passes / train_images))


def train_kd(student: BlockNet, images: torch.Tensor, soft: torch.Tensor, schedule: Schedule, seed: int = 0,
             **fit_kwargs) -> list[float]:
    """The KD student: ``student`` (with a head of |C| outputs) fitted to the teachers' logits ``soft``
    (``(len(images), |C|)``, C's order) on unlabeled ``images`` with the loss of Eq. 7. Returns the mean loss
    per epoch (``fit_kwargs``: ``store``, ``device`` of :func:`kalib.train.fit`)."""
    if student.num_classes != soft.shape[1]:
        raise ValueError(f"the KD student has {student.num_classes} outputs, the soft targets {soft.shape[1]} tasks")
    return fit(student, images, soft, lambda pred, target: filtered_loss(pred, target)[0], schedule, seed,
               desc="KD", **fit_kwargs)


def train_supervised(net: BlockNet, images: torch.Tensor, labels: torch.Tensor, schedule: Schedule,
                     seed: int = 0, **fit_kwargs) -> list[float]:
    """The supervised baseline: ``net`` fitted with Eq. 2 to the 0/1 ``labels`` (``(len(images), |C|)``) of
    the train split. Returns the mean loss per epoch."""
    if net.num_classes != labels.shape[1]:
        raise ValueError(f"the supervised network has {net.num_classes} outputs, the labels {labels.shape[1]}")
    return fit(net, images, labels.float(), teacher_loss, schedule, seed, desc="supervised", **fit_kwargs)


class TeacherEnsemble(nn.Module):
    """The teachers side by side: every teacher runs on the image and g (Eq. 6) keeps its tasks of C;
    output ``(batch, |C|)`` in C's order."""

    def __init__(self, teachers: Sequence[BlockNet], plan: TaskPlan):
        super().__init__()
        self.plan = plan
        self.teachers = nn.ModuleList(teachers[n] for n in plan.active_teachers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_empty(len(x), len(self.plan.tasks))
        for teacher, n in zip(self.teachers, self.plan.active_teachers):
            out[:, self.plan.per_teacher[n]] = select_tasks(teacher(x), self.plan.local_per_teacher[n])
        return out
