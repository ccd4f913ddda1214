"""Alg. 1 line 14: fine-tune the assembled TargetNet (Eq. 10, :mod:`kalib.method.branch`) with the loss of Eq. 7
against the teachers' predictions on unlabeled pool images."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..device import as_device
from ..models.blocknet import BlockNet
from ..train import EpochStore, Schedule, fit, optimise, predict, to_input
from .baselines import train_passes
from .blockwise import filtered_loss, task_losses, teacher_logits
from .filters import TaskPlan
from .student import CL


class _FrozenBatchNorm(nn.Module):
    """Wraps a network so that ``train()`` leaves its BatchNorm layers in eval mode (running statistics
    used and kept), while every weight still trains."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    def forward(self, x):
        return self.net(x)


def finetune(target: nn.Module, images: torch.Tensor, soft: torch.Tensor, schedule: Schedule,
             seed: int = 0, freeze_bn: bool = False, *, device=None, store: EpochStore | None = None, augment=None, teachers: Sequence[BlockNet] = (),
             plan: TaskPlan | None = None, precision: str | None = None) -> list[float]:
    """Alg. 1 line 14: fine-tune the whole assembled TargetNet against the teachers' soft predictions
    (``soft``, logits in C's order) on unlabeled ``images`` with the loss of Eq. 7 and the poly schedule.
    ``freeze_bn`` keeps the BatchNorm statistics (those of the teachers in the copied branches).
    ``store``: per-epoch resume, ``precision``: the training precision (:func:`kalib.train.optimise`).
    Every weight of ``target`` is trained: its parts are copies, and the copies of frozen parts (teacher
    blocks, student blocks and filters after their block) would otherwise stay frozen, and whether a part
    had been frozen would depend on whether its block was trained in this process or loaded on resume.
    With ``augment`` the targets come from ``teachers`` (task plan ``plan``) on each augmented batch.
    The columns of single-label teachers take their own loss (``plan.softmax_groups``, :func:`task_losses`).
    Returns the mean loss per epoch; ``target`` is left in eval mode."""
    target.requires_grad_(True)
    model = _FrozenBatchNorm(target) if freeze_bn else target
    groups = plan.softmax_groups if plan is not None else ()
    if augment is None:
        history = fit(model, images, soft, lambda pred, t: filtered_loss(pred, t, groups)[0], schedule, seed,
                      desc="finetune", store=store, device=device, precision=precision)
    else:
        device = as_device(device)
        model.to(device=device, memory_format=CL).train()

        def batch_loss(b):
            x = to_input(augment(images[b].to(device, non_blocking=True), b))
            return filtered_loss(model(x), teacher_logits(teachers, plan, x, device), groups)[0]

        history = optimise([p for p in target.parameters()], len(images), batch_loss, schedule, seed,
                           desc="finetune", module=model, store=store, device=device, precision=precision)
    target.eval()
    return history


def finetune_passes(target: nn.Module, images: torch.Tensor, soft: torch.Tensor, schedule: Schedule, passes: int,
                    seed: int = 0, freeze_bn: bool = False, **optimise_kwargs) -> list[float]:
    """Alg. 1 line 14 continued for exactly ``passes`` image passes instead of epochs (a compute budget: the
    crossover study's ``amalgamation-b4-2x``), in seeded random orders with one poly schedule
    (:func:`kalib.method.baselines.train_passes`); ``freeze_bn`` as :func:`finetune`. ``target`` is left in
    eval mode."""
    target.requires_grad_(True)
    history = train_passes(_FrozenBatchNorm(target) if freeze_bn else target, images, soft, schedule, passes, seed,
                           desc="finetune", **optimise_kwargs)
    target.eval()
    return history


@torch.no_grad()
def heldout_loss(model: nn.Module, images: torch.Tensor, soft: torch.Tensor, device=None,
                 softmax_groups=()) -> np.ndarray:
    """Per-task Eq. 7 loss of a network with output in C's order on held-out pool images (``softmax_groups``:
    :func:`task_losses`)."""
    return task_losses(predict(model, images, device=device), soft, softmax_groups).numpy()

