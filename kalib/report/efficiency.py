"""What each row of Table 1 costs at inference: parameters, multiply-accumulates per image and CPU time,
measured side by side in one process so the times compare (docs/performance.md).

MACs are counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which counts the convolutions and
matrix products (2 FLOPs per multiply-accumulate); BatchNorm, activations and pooling are not counted, as
usual for MAC figures.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..method.targetnet import count_parameters
from ..train import to_input


@torch.no_grad()
def count_macs(model: nn.Module, image: torch.Tensor) -> int:
    """Multiply-accumulates of ``model`` on one image ``(3, H, W)`` (uint8 canvas or float input)."""
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(to_input(image[None]))
    model.train(was_training)
    return counter.get_total_flops() // 2


def _seconds(model: nn.Module, x: torch.Tensor) -> float:
    t0 = time.perf_counter()
    model(x)
    return time.perf_counter() - t0


@torch.inference_mode()
def cpu_times(models: Mapping[str, nn.Module], images: torch.Tensor, repeats: int = 20,
              batch_size: int = 64) -> dict[str, dict[str, float]]:
    """Per network: ``latency_ms`` (median time of one image, batch 1) and ``ms_per_image`` (median time of a
    batch of ``batch_size`` divided by its size), on the CPU with the current thread count. The networks take
    turns within every repeat, so a machine that slows down mid-run slows all of them alike."""
    single, batch = to_input(images[:1]), to_input(images[:batch_size])
    for model in models.values():
        model.eval().to(memory_format=torch.channels_last)
        model(single), model(batch)                          # warm-up
    one = {name: [] for name in models}
    many = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            one[name].append(_seconds(model, single))
            many[name].append(_seconds(model, batch) / len(batch))
    return {name: {"latency_ms": round(1e3 * statistics.median(one[name]), 3),
                   "ms_per_image": round(1e3 * statistics.median(many[name]), 4)} for name in models}


def efficiency(models: Mapping[str, nn.Module], images: torch.Tensor, repeats: int = 20) -> dict[str, dict]:
    """Row name -> {params, macs, latency_ms, ms_per_image, threads} for every network of ``models``."""
    times = cpu_times(models, images, repeats)
    threads = torch.get_num_threads()
    return {name: {"params": count_parameters(model), "macs": count_macs(model, images[0]), **times[name],
                   "threads": threads} for name, model in models.items()}
