"""The training loop shared by every stage: SGD with momentum and the paper's poly learning rate.

Paper §4.1: "We adopt the poly learning rate policy ... the power to 0.9" — implemented with
``torch.optim.lr_scheduler.PolynomialLR`` stepped once per iteration. Canvases stay uint8 in memory and
are normalised batch by batch (:func:`to_input`), which is far faster than a per-item ``DataLoader``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm


@dataclass(frozen=True)
class Schedule:
    """SGD + poly learning rate (paper §4.1: base lr 0.01, power 0.9, weight decay 5e-3, batch 16)."""
    epochs: int
    lr: float = 0.01
    batch_size: int = 16
    momentum: float = 0.9
    weight_decay: float = 5e-3
    power: float = 0.9

    def __post_init__(self):
        if self.epochs < 0 or self.batch_size < 1 or not self.lr > 0 or self.weight_decay < 0:
            raise ValueError(f"invalid schedule {self}: need epochs >= 0, batch_size >= 1, lr > 0, "
                             "weight_decay >= 0")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; training stops instead of writing broken weights."""


def to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 3, H, W)`` canvases (or float images already in [0, 1]) → zero-centred float input,
    channels-last (about 1.5× faster convolutions on the CPU, measured in benchmarks/speed.py)."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    return ((x - 0.5) / 0.25).contiguous(memory_format=torch.channels_last)


def batches(n: int, batch_size: int, generator: torch.Generator | None = None,
            drop_last: bool = False) -> Iterator[torch.Tensor]:
    """Index tensors covering ``range(n)``: shuffled when a generator is given, in order otherwise."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start:start + batch_size]


def optimise(params, n: int, batch_loss: Callable[[torch.Tensor], torch.Tensor], schedule: Schedule,
             seed: int = 0, desc: str = "train") -> list[float]:
    """SGD + poly lr over ``params`` for ``schedule.epochs`` shuffled passes over ``range(n)``;
    ``batch_loss(idx)`` gives the loss of one batch of indices. Returns the mean loss of each epoch."""
    if schedule.epochs == 0:
        return []
    opt = torch.optim.SGD(params, lr=schedule.lr, momentum=schedule.momentum,
                          weight_decay=schedule.weight_decay)
    steps = max(n // schedule.batch_size, 1)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=schedule.epochs * steps,
                                                  power=schedule.power)
    gen = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(schedule.epochs):
        total, seen = 0.0, 0
        bar = tqdm(batches(n, schedule.batch_size, gen, drop_last=True), total=steps,
                   desc=f"{desc} {epoch + 1}/{schedule.epochs}", leave=False)
        for step, idx in enumerate(bar):
            loss = batch_loss(idx)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"{desc}: loss became {loss.item()} at epoch {epoch + 1}, "
                                         f"step {step + 1}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        history.append(total / max(seen, 1))
    return history


def fit(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: Schedule,
        seed: int = 0, desc: str = "train", params=None) -> list[float]:
    """Train ``model`` on ``(images, targets)`` with SGD + poly lr; return the mean loss of each epoch.

    ``params`` restricts the optimised parameters (default: all that require grad).
    """
    model.to(memory_format=torch.channels_last).train()
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    return optimise(params, len(images), lambda idx: loss_fn(model(to_input(images[idx])), targets[idx]),
                    schedule, seed, desc)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) for all ``images``, batched, as one float tensor."""
    was_training = model.training
    model.to(memory_format=torch.channels_last).eval()
    out = torch.cat([model(to_input(images[idx])) for idx in batches(len(images), batch_size)])
    model.train(was_training)
    return out
