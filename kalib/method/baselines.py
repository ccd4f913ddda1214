"""Baselines beside the paper's rows of Tables 1 and 2 (beyond the paper): what a reader would try before
amalgamation, each on the student's architecture.

* ``KD``: multi-teacher knowledge distillation. The student network, from the same start as the
  amalgamation student and with the teachers' own head rows (:func:`kd_student`), trained end to end on the
  unlabeled pool against every teacher's sigmoid outputs for the tasks of C: the loss of Eq. 7 on the
  student's own head instead of through filters and teacher layers. No labels. It trains for a given number
  of image passes (:func:`train_kd_passes`), which the run layer chooses so that KD's training MACs equal
  the amalgamation's (:mod:`kalib.runs.budget`).
* ``Supervised``: the same network from the generic start, trained with Eq. 2 on the train split's labels of
  every task of C, as long as the teachers together (what labels would buy).
* ``Ensemble``: the teachers side by side (:class:`TeacherEnsemble`), i.e. the networks the TargetNet replaces.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn

from ..device import as_device
from ..models.blocknet import BlockNet
from ..train import Schedule, fit, optimise, to_input
from .blockwise import filtered_loss
from .filters import TaskPlan, select_tasks
from .teachers import teacher_loss

ROWS = ("Ensemble", "Merge", "KD", "Supervised")


def kd_student(start: BlockNet, teachers: Sequence[BlockNet], plan: TaskPlan, head: str = "teachers") -> BlockNet:
    """The KD student: the blocks of ``start`` (the amalgamation student's start) with a head of |C| outputs,
    initialised from each teacher's own head rows for its tasks of C (``head="teachers"``, what the amalgamated
    TargetNet keeps; the student's last block has the teachers' width) or at random (``"random"``, PyTorch's
    default init under the current seed)."""
    if head not in ("teachers", "random"):
        raise ValueError(f"head must be 'teachers' or 'random', got {head!r}")
    student = start.with_new_head(len(plan.tasks))
    if head == "teachers":
        with torch.no_grad():
            for i, (n, j) in enumerate(zip(plan.teacher, plan.local)):
                student.head.fc.weight[i] = teachers[n].head.fc.weight[j]
                student.head.fc.bias[i] = teachers[n].head.fc.bias[j]
    return student


def train_kd_passes(student: BlockNet, images: torch.Tensor, soft: torch.Tensor, schedule: Schedule, passes: int,
                    seed: int = 0, **optimise_kwargs) -> list[float]:
    """The KD student trained for exactly ``passes`` image passes (a training budget, not epochs): the images
    are visited in seeded random orders, one after the other, cut at ``passes``, in batches of
    ``schedule.batch_size`` with one poly schedule over all of them; the loss of Eq. 7 against the teachers'
    logits ``soft`` (C's order). ``optimise_kwargs``: ``store``, ``device`` of :func:`kalib.train.optimise`.
    Returns the mean loss (one entry: the whole budget is one pass of the schedule)."""
    if student.num_classes != soft.shape[1]:
        raise ValueError(f"the KD student has {student.num_classes} outputs, the soft targets {soft.shape[1]} tasks")
    return train_passes(student, images, soft, schedule, passes, seed, desc="KD", **optimise_kwargs)


def train_passes(net: nn.Module, images: torch.Tensor, soft: torch.Tensor, schedule: Schedule, passes: int,
                 seed: int = 0, desc: str = "train", **optimise_kwargs) -> list[float]:
    """Any network with C's outputs trained against the teachers' logits ``soft`` with the loss of Eq. 7 for
    exactly ``passes`` image passes, as :func:`train_kd_passes` describes (``net.train()`` sets its modes)."""
    gen = torch.Generator().manual_seed(seed)
    rounds = -(-passes // len(images))
    order = torch.cat([torch.randperm(len(images), generator=gen) for _ in range(rounds)])[:passes]
    device = as_device(optimise_kwargs.get("device"))
    net.to(device=device, memory_format=torch.channels_last).train()
    return optimise(list(net.parameters()), passes,
                    lambda idx: filtered_loss(net(to_input(images[order[idx]].to(device, non_blocking=True))),
                                              soft[order[idx]].to(device, non_blocking=True))[0],
                    dataclasses.replace(schedule, epochs=1), seed, desc=desc, module=net, **optimise_kwargs)


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
