"""Beyond the paper: a student without training. Teachers fine-tuned from one shared start θ₀ (docs/design.md
§1) can be merged in weight space by task arithmetic (Ilharco et al., ICLR 2023),

    θ = θ₀ + λ Σₙ (θₙ − θ₀),          λ = 1/N: the plain average of the teachers,

their BatchNorm statistics estimated again on unlabelled pool images (the merged weights' own statistics are
not the mean of the teachers'), and each label of C given its teacher's own head row. The result has the
student's architecture and costs only the forward passes that re-estimate the statistics; it is the crossover
study's ``merge`` arm and ``kalib merge``. Like Eq. 4's filters, it relies on the shared start: the teachers'
block-k channels must mean the same thing for their weights to be averaged.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..device import as_device
from ..errors import ConfigError
from ..models.blocknet import BlockNet
from ..train import batches, to_input
from .baselines import kd_student
from .filters import TaskPlan


def task_arithmetic(start: BlockNet | None, teachers: Sequence[BlockNet], lam: float) -> BlockNet:
    """A copy of ``teachers[0]`` whose blocks hold θ₀ + λ Σₙ (θₙ − θ₀) for every floating-point tensor
    (weights and BatchNorm buffers; the statistics are re-estimated afterwards, :func:`reestimate_batchnorm`).
    ``start`` (θ₀) may be None only for the plain average, λ = 1/N, where it cancels."""
    if not teachers:
        raise ConfigError("merging needs at least one teacher")
    if not lam > 0 or lam != lam:
        raise ConfigError(f"the merge's lambda must be a positive number, got {lam}")
    states = [t.blocks.state_dict() for t in teachers]
    reference = start.blocks.state_dict() if start is not None else None
    for n, state in enumerate(states[1:], start=2):
        _same_shapes(states[0], state, f"teacher 1 and teacher {n}")
    if reference is not None:
        _same_shapes(states[0], reference, "the teachers and their shared start")
    elif abs(lam * len(teachers) - 1) > 1e-9:
        raise ConfigError(f"lambda {lam:g} is not 1/{len(teachers)} (the plain average), so the merge needs the "
                          "teachers' shared start θ₀: give its weights")
    merged = {}
    for key, value in states[0].items():
        if not value.is_floating_point():
            merged[key] = value
            continue
        total = sum(s[key].double() for s in states)
        base = reference[key].double() if reference is not None else total / len(states)
        merged[key] = (base + lam * (total - len(states) * base)).to(value.dtype)
    net = copy.deepcopy(teachers[0])
    net.blocks.load_state_dict(merged)
    return net


def _same_shapes(a: dict, b: dict, what: str) -> None:
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape for k in a):
        raise ConfigError(f"{what} have different architectures (their block weights differ in names or "
                          "shapes); merging needs networks of one architecture")


@torch.no_grad()
def reestimate_batchnorm(net: nn.Module, images, batch_size: int = 64, device=None) -> nn.Module:
    """Every BatchNorm layer's running mean and variance estimated again as the plain average over the batches
    of ``images`` (uint8 pool images, in their order; ``momentum=None``), every other layer in eval mode; the
    network is returned in eval mode."""
    device = as_device(device)
    layers = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in layers]
    net.to(device=device, memory_format=torch.channels_last).eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for idx in batches(len(images), batch_size):
        net(to_input(images[idx].to(device)))
    for m, momentum in zip(layers, momenta):
        m.momentum = momentum
    return net.eval()


def merged_student(start: BlockNet | None, teachers: Sequence[BlockNet], plan: TaskPlan, lam: float, images,
                   batch_size: int = 64, device=None) -> BlockNet:
    """The training-free student for C: the blocks of the teachers with a task in C merged by
    :func:`task_arithmetic`, a head of |C| rows each copied from its teacher (:func:`kd_student`), BatchNorm
    statistics re-estimated on ``images``. In eval mode."""
    active = [teachers[n] for n in plan.active_teachers]
    net = kd_student(task_arithmetic(start, active, lam), teachers, plan, "teachers")
    return reestimate_batchnorm(net, images, batch_size, device)
