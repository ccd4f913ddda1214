"""The training loop shared by every stage: SGD with momentum and the paper's poly learning rate.

Paper §4.1: "We adopt the poly learning rate policy ... the power to 0.9" — implemented with
``torch.optim.lr_scheduler.PolynomialLR`` stepped once per iteration. Canvases stay uint8 in memory and
are normalised batch by batch (:func:`to_input`), which is far faster than a per-item ``DataLoader``.

Resume: :func:`optimise` hands the complete training state (weights and BatchNorm statistics, SGD momentum,
scheduler, shuffling generator and torch RNG) to an :class:`EpochStore` after every epoch and continues
from the state the store gives back, so an interrupted run ends with exactly the weights of an
uninterrupted one (on the CPU). Where the state is kept (a file, atomically written) is the run layer's
business (:class:`kalib.runs.checkpoints.EpochFile`); the loop itself writes no file.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from . import distributed
from .device import as_device, autocast, resolve_precision
from .errors import ConfigError, NonFiniteLossError
from .progress import progress_bar


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
        checks = [("epochs", self.epochs >= 0, ">= 0"), ("batch_size", self.batch_size >= 1, ">= 1"),
                  ("lr", 0 < self.lr < math.inf, "> 0 and finite"),
                  ("momentum", 0 <= self.momentum < 1, "in [0, 1)"),
                  ("weight_decay", 0 <= self.weight_decay < math.inf, ">= 0 and finite"),
                  ("power", 0 <= self.power < math.inf, ">= 0 and finite")]
        bad = [f"{name} must be {rule}, got {getattr(self, name)}" for name, ok, rule in checks if not ok]
        if bad:
            raise ConfigError(f"invalid schedule: {'; '.join(bad)}")


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


class EpochStore(Protocol):
    """Where :func:`optimise` keeps its training state between epochs, so that a killed run resumes; the run
    layer keeps it in a file (:class:`kalib.runs.checkpoints.EpochFile`). ``load(meta)`` returns the state
    saved by a run with this ``meta`` (schedule, number of images, seed), or ``None`` to start afresh;
    ``save(state)`` keeps the state after an epoch."""

    def load(self, meta: dict) -> dict | None: ...

    def save(self, state: dict) -> None: ...


def optimise(params, n: int, batch_loss: Callable[[torch.Tensor], torch.Tensor], schedule: Schedule,
             seed: int = 0, desc: str = "train", *, module: nn.Module | None = None,
             store: EpochStore | None = None, device=None, precision: str | None = None) -> list[float]:
    """SGD + poly lr over ``params`` for ``schedule.epochs`` shuffled passes over ``range(n)``;
    ``batch_loss(idx)`` gives the loss of one batch of indices. Returns the mean loss of each epoch.

    ``store``: after every epoch the complete training state (the weights and BatchNorm statistics of
    ``module``, the module that owns ``params``; SGD momentum, scheduler, shuffling generator, torch RNG)
    goes to ``store.save``, and a state that ``store.load`` returns is resumed from, so an interrupted run
    ends with exactly the weights of an uninterrupted one (on the CPU). ``device``: where ``batch_loss``
    runs (bfloat16 autocast on CUDA for the forward pass; nothing changes on the CPU). ``precision``:
    ``fp32``, ``bf16`` or ``auto`` (:func:`kalib.device.resolve_precision`; default: bf16 on CUDA, fp32
    elsewhere) for ``batch_loss`` and its backward pass; weights, optimiser state and the loss stay float32.
    The meta of a bf16 run carries ``precision``, so that it never resumes a float32 run's epoch state (the
    run layer's fingerprints keep the two apart in both directions). A NaN/inf loss raises
    :class:`~kalib.errors.NonFiniteLossError` before the step, so the last saved state stays the last good one.

    Under torchrun (:mod:`kalib.distributed`) the batches are drawn as here and each process trains on its
    share of every batch, with ``module`` in DDP (:class:`kalib.distributed.Replicas`): ``schedule.batch_size``
    is the global batch, and the loss history the mean over all processes.
    """
    if schedule.epochs == 0:
        return []
    if (store is not None or distributed.active()) and module is None:
        raise TypeError("optimise(store=...) and optimise under torchrun need module=, the module that owns params")
    device = as_device(device)
    params = list(params)
    opt = torch.optim.SGD(params, lr=schedule.lr, momentum=schedule.momentum,
                          weight_decay=schedule.weight_decay)
    steps = max(n // schedule.batch_size, 1)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=schedule.epochs * steps,
                                                  power=schedule.power)
    gen = torch.Generator().manual_seed(seed)
    meta = {"schedule": dataclasses.asdict(schedule), "n": n, "seed": seed}
    if precision is not None and resolve_precision(precision, device) == "bf16":
        meta["precision"] = "bf16"
    saved = store.load(meta) if store is not None else None
    history = _restore(saved, module, opt, sched, gen, device) if saved is not None else []
    replicas = distributed.Replicas(module, schedule.batch_size, desc) if distributed.active() else None
    for epoch in range(len(history), schedule.epochs):
        total, seen = 0.0, 0
        bar = progress_bar(batches(n, schedule.batch_size, gen, drop_last=True), total=steps,
                           desc=f"{desc} {epoch + 1}/{schedule.epochs}")
        for step, idx in enumerate(bar):
            with autocast(device, precision):
                if replicas is None:
                    loss = batch_loss(idx)
                else:                          # this process's share of the batch, through DDP
                    loss, idx = replicas.forward(batch_loss, idx)
            if not torch.isfinite(loss):
                kept = f"; the last good epoch checkpoint {store} is kept" if store is not None and epoch else ""
                raise NonFiniteLossError(f"{desc}: loss became {loss.item()} at epoch {epoch + 1}, "
                                         f"step {step + 1}; lower the learning rate{kept}")
            opt.zero_grad(set_to_none=True)
            if replicas is None:
                loss.backward()
            else:
                replicas.backward(loss)
            opt.step()
            sched.step()
            total, seen = total + loss.item() * len(idx), seen + len(idx)
            bar.set_postfix(loss=f"{total / seen:.4f}")
        if replicas is not None:
            total, seen = replicas.end_epoch(total, seen)
        history.append(total / max(seen, 1))
        if store is not None:
            store.save({**meta, "history": list(history), "model": module.state_dict(),
                        "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "generator": gen.get_state(), "rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None})
    return history


def _restore(saved: dict, module: nn.Module, opt, sched, gen: torch.Generator, device: torch.device) -> list[float]:
    """Put a saved training state back (weights, optimiser, scheduler, generators); its loss history."""
    module.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    sched.load_state_dict(saved["scheduler"])
    gen.set_state(saved["generator"])
    torch.set_rng_state(saved["rng"])
    if device.type == "cuda" and saved.get("cuda_rng") is not None:
        torch.cuda.set_rng_state(saved["cuda_rng"], device)
    return list(saved["history"])


def _batch(images: torch.Tensor, idx: torch.Tensor, device: torch.device, augment=None) -> torch.Tensor:
    """Rows ``idx`` of ``images`` on ``device``, augmented when ``augment`` is given."""
    x = images[idx].to(device, non_blocking=True)
    return x if augment is None else augment(x, idx)


def fit(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: Schedule,
        seed: int = 0, desc: str = "train", params=None, *, store: EpochStore | None = None, device=None,
        augment=None, precision: str | None = None) -> list[float]:
    """Train ``model`` on ``(images, targets)`` with SGD + poly lr; return the mean loss of each epoch.

    ``params`` restricts the optimised parameters (default: all that require grad). ``store``: per-epoch
    resume (see :func:`optimise`). ``device``: the model moves there; ``images`` and
    ``targets`` stay where they are and each batch is moved on its own. ``augment(batch, idx)``: a batch
    augmentation (:class:`kalib.augment.BatchAugment`, paper presets), applied on the device.
    ``precision``: the training precision (:func:`optimise`).
    """
    device = as_device(device)
    model.to(device=device, memory_format=torch.channels_last).train()
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    return optimise(params, len(images),
                    lambda idx: loss_fn(model(to_input(_batch(images, idx, device, augment))),
                                        targets[idx].to(device, non_blocking=True)),
                    schedule, seed, desc, module=model, store=store, device=device, precision=precision)


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 500, device=None) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) for all ``images``, batched, as one float tensor on the CPU.

    ``device``: where the model runs (it is moved there); batches are moved one at a time."""
    device = as_device(device)
    was_training = model.training
    model.to(device=device, memory_format=torch.channels_last).eval()
    with autocast(device):
        out = torch.cat([model(to_input(images[idx].to(device, non_blocking=True))).float().cpu()
                         for idx in batches(len(images), batch_size)])
    model.train(was_training)
    return out
