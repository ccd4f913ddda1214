"""Multiply-accumulates (MACs), counted by :class:`torch.utils.flop_counter.FlopCounterMode`: what a
comparison at equal compute counts (docs/design.md §7). The counter sees the convolutions and matrix
products of a forward pass and, for a training step, of its backward pass too (2 FLOPs per MAC);
BatchNorm, activations and pooling are left out, as usual for MAC figures. A training run's MACs are the
MACs of one image's step times the image passes it makes, so the counter runs on one small batch only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

# Images a count runs on. Every counted operation (convolution, matrix product) is linear in the batch, so
# MACs per image do not depend on it (tests/test_macs.py); two, not one, so that BatchNorm in train mode works.
SAMPLE = 2


def counted_macs(fn: Callable[[], object]) -> int:
    """MACs of everything ``fn()`` computes (a forward pass, or a forward and ``loss.backward()``)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() // 2


@torch.no_grad()
def forward_macs_per_image(model: torch.nn.Module, x: torch.Tensor) -> float:
    """MACs of ``model``'s forward pass per image of the network input batch ``x``, in eval mode."""
    was_training = model.training
    model.eval()
    macs = counted_macs(lambda: model(x))
    model.train(was_training)
    return macs / len(x)


def step_macs_per_image(loss: Callable[[], torch.Tensor], batch_size: int,
                        params: list[torch.nn.Parameter]) -> float:
    """MACs per image of one training step: ``loss()`` (the forward pass of a batch of ``batch_size``) and
    its backward pass; the gradients it leaves in ``params`` are cleared again."""
    macs = counted_macs(lambda: loss().backward())
    for p in params:
        p.grad = None
    return macs / batch_size


def passes(images: int, epochs: int, batch_size: int) -> int:
    """Image passes of ``epochs`` epochs over ``images`` in full batches (:func:`kalib.train.optimise` drops the
    last incomplete batch, and takes one batch when there are fewer images than a batch)."""
    steps = max(images // batch_size, 1) if epochs else 0
    return epochs * steps * min(batch_size, images)
