"""Entangled block-wise training (paper §3.4, Eq. 6–8, Alg. 1 lines 2–11).

For block k = 1..B (Alg. 1 lines 4–11) the student's frozen blocks 1..k-1 give F_u^{k-1}; student block
k turns it into F_u^k; the teacher-level filter f_n^k (Eq. 4) maps it into teacher n's feature space;
it *replaces* teacher n's own block-k features and runs through teacher n's frozen blocks k+1..B and
head (Eq. 6). The task-level filter g keeps the outputs of the customized tasks C_n, and the loss is the
soft cross-entropy against teacher n's own predictions on the same image, averaged over |C| (Eq. 7–8).
Only student block k and the filters f_n^k are updated. No label is used: the API takes images only.
(Eq. 5, a feature distance, is the loss the paper sets aside for Eq. 6–7; kalib follows the paper.)

Where the rest of Alg. 1 lives: line 1 (student start, filters) in :mod:`kalib.method.student`; lines 12–13
(Eq. 9 branch-out, Eq. 10 TargetNet) in :mod:`kalib.method.branch`; line 14 (fine-tuning) in
:mod:`kalib.method.finetune`; the whole run for the CLI (caching, resume, records) in :mod:`kalib.runs.amalgamation`.

Speed (CPU): the teachers' soft targets are computed once per pool image, and the frozen prefix
F_u^{k-1} once per block; each block trains on a seeded subset of the pool (``images_per_block``), and
its converged loss L_i^k is measured on a fixed held-out slice at the end of the pool that is never
trained on. Networks run on ``device``; pool canvases, cached soft targets and cached prefix features
stay on the CPU and move batch by batch (bfloat16 autocast for forward passes on CUDA).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..device import as_device, autocast
from ..models.blocknet import BlockNet
from ..train import Schedule, batches, optimise, predict, to_input
from .filters import TaskPlan, select_tasks
from .pool import block_inputs, block_subset, epochs_per_block, prefix_features, split_pool
from .student import CL, freeze, make_filters

# ------------------------------------------------------------------------------------ Eq. 6–8 pieces

@torch.no_grad()
def soft_targets(teachers: Sequence[BlockNet], images: torch.Tensor, plan: TaskPlan,
                 batch_size: int = 500, device=None) -> torch.Tensor:
    """Teacher n's own predictions O_n^i (logits) for the tasks of C, ``(len(images), |C|)`` in C's order.

    Computed once per image and cached by the caller: the targets of Eq. 7 never change.
    """
    out = torch.empty(len(images), len(plan.tasks))
    for n in plan.active_teachers:
        out[:, plan.per_teacher[n]] = select_tasks(predict(teachers[n], images, batch_size, device=device),
                                                   plan.local_per_teacher[n])
    return out


@torch.no_grad()
def teacher_logits(teachers: Sequence[BlockNet], plan: TaskPlan, x: torch.Tensor,
                   device: torch.device) -> torch.Tensor:
    """The teachers' logits for the tasks of C on one batch of network input ``x`` (as soft_targets)."""
    target = torch.empty(len(x), len(plan.tasks), device=device)
    with autocast(device):
        for n in plan.active_teachers:
            target[:, plan.per_teacher[n]] = select_tasks(teachers[n](x), plan.local_per_teacher[n]).float()
    return target


def task_losses(pred: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """ℓ(O_n^i, O_un^i) of Eq. 7 for every task i, ``(|C|,)``: the loss of Eq. 2 (binary cross-entropy),
    with teacher n's sigmoid probability as the soft target, averaged over the batch."""
    return F.binary_cross_entropy_with_logits(pred, torch.sigmoid(target_logits), reduction="none").mean(0)


def filtered_loss(pred: torch.Tensor, target_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7: L_u = 1/|C| Σ_n Σ_{i∈C_n} ℓ(O_n^i, O_un^i), with |C| = Σ_n |C_n| (Eq. 8).

    ``pred``/``target_logits`` are ``(batch, |C|)``, columns in C's order (all teachers together).
    Returns the scalar loss and the per-task terms.
    """
    per_task = task_losses(pred, target_logits)
    return per_task.sum() / per_task.numel(), per_task


def entangled_predictions(features: torch.Tensor, k: int, filters_k: Sequence[nn.Module],
                          teachers: Sequence[BlockNet], plan: TaskPlan) -> torch.Tensor:
    """Eq. 6: O_un = teacher n's blocks k+1..B and head applied to F_un^k = f_n^k(F_u^k), in place of
    its own block-k features; then g keeps the tasks of C_n. Returns ``(batch, |C|)`` in C's order."""
    outs, positions = [], []
    for n in plan.active_teachers:
        logits = teachers[n].suffix(filters_k[n](features), k)
        outs.append(select_tasks(logits, plan.local_per_teacher[n]))
        positions += plan.per_teacher[n]
    return torch.cat(outs, dim=1)[:, np.argsort(positions)]


@torch.no_grad()
def _heldout_block(block: nn.Module, filters_k, teachers, plan, feats, images, soft, k,
                   dtype: torch.dtype = torch.float32, batch_size: int = 250,
                   device=None) -> tuple[np.ndarray, torch.Tensor]:
    """Per-task loss of block k on the held-out slice (eval mode, mean over the slice), and F_u^k."""
    device = as_device(device)
    block.eval()
    total = torch.zeros(len(plan.tasks), dtype=torch.float64)
    out = []
    for idx in batches(len(images), batch_size):
        with autocast(device):
            h = block(block_inputs(feats, images, idx, device))
            out.append(h.to(dtype).cpu())
            losses = task_losses(entangled_predictions(h, k, filters_k, teachers, plan),
                                 soft[idx].to(device, non_blocking=True))
        total += losses.double().cpu() * len(idx)
    return (total / max(len(images), 1)).numpy(), torch.cat(out)


@dataclass
class Amalgamation:
    """Result of block-wise training: the student, the filters ``filters[k-1][n]``, the converged held-out
    loss ``losses[k-1, i]`` = L_i^k, the mean training loss of every epoch of every block, and seconds."""
    student: BlockNet
    filters: nn.ModuleList
    plan: TaskPlan
    losses: np.ndarray
    train_loss: list[list[float]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


@torch.no_grad()
def _augmented_inputs(student: BlockNet, teachers: Sequence[BlockNet], plan: TaskPlan, x: torch.Tensor, k: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For one augmented batch ``x``: the frozen student prefix F_u^{k-1} and the teachers' logits for
    the tasks of C (Eq. 7's targets), both computed on the same images."""
    with autocast(device):
        h = student.prefix(x, k - 1)
    return h.float().contiguous(memory_format=CL), teacher_logits(teachers, plan, x, device)


def amalgamate(student: BlockNet, teachers: Sequence[BlockNet], plan: TaskPlan, images: torch.Tensor,
               schedule: Schedule, *, images_per_block: int | None = None, heldout: int = 500,
               seed: int = 0, reduction: int = 4, soft: torch.Tensor | None = None,
               filters: nn.ModuleList | None = None, start_block: int = 1,
               previous: Amalgamation | None = None, cache_dtype: torch.dtype = torch.float32,
               on_block_end: Callable[[int, Amalgamation], None] | None = None,
               last_block: int | None = None, log: Callable[[str], None] | None = None,
               device=None, state_dir: str | Path | None = None, fingerprint: str = "",
               augment=None, block_epochs: Sequence[int] | None = None) -> Amalgamation:
    """Alg. 1 lines 1–11: train student blocks 1..B one after the other with the loss of Eq. 7.

    ``images`` are unlabeled uint8 pool canvases (nothing else is read); the last ``heldout`` are only
    used to measure the converged losses L_i^k. ``schedule`` is the per-block SGD + poly schedule
    (``epochs`` passes over the block's subset of ``images_per_block`` pool images; ``block_epochs[k-1]``
    instead for block k where given: deep blocks, where the teachers drift furthest apart, need more). ``soft`` are
    cached teacher logits for ``images`` (computed here if not given). ``start_block``/``previous``/
    ``filters`` continue an interrupted run; ``on_block_end(k, result)`` is called after each block;
    ``last_block`` stops early (losses of later blocks stay NaN). ``state_dir``: block k's training state
    is saved there after every epoch (``blockKK.partial.pt``, tagged with ``fingerprint``) and resumed
    from; it is deleted once the block is finished (after ``on_block_end``). ``device``: where the
    networks run (default CPU); images, soft targets and cached features stay on the CPU. ``augment``
    (:class:`kalib.augment.BatchAugment`, paper presets): every training batch is augmented once and the
    same augmented images reach the frozen student prefix and the teachers, so features and targets are
    recomputed per batch instead of cached (the held-out losses L_i^k stay on the plain images).
    The teachers are put in eval mode with frozen weights and are never modified.
    """
    device = as_device(device)
    freeze(teachers, device)
    student.to(device=device, memory_format=CL)
    num_blocks = student.num_blocks
    last_block = num_blocks if last_block is None else last_block
    block_epochs = epochs_per_block(block_epochs, num_blocks) if block_epochs else None
    filters = filters if filters is not None else make_filters(student, teachers, reduction)
    filters.to(device)
    if soft is None:
        soft = soft_targets(teachers, images, plan, device=device)
    if len(soft) != len(images) or soft.shape[1] != len(plan.tasks):
        raise ValueError(f"soft targets {tuple(soft.shape)} do not match {len(images)} images x "
                         f"{len(plan.tasks)} tasks")
    train_idx, held_idx = split_pool(len(images), heldout)
    held_images, held_soft = images[held_idx], soft[held_idx]
    result = previous or Amalgamation(student, filters, plan, np.full((num_blocks, len(plan.tasks)), np.nan))
    result.student, result.filters = student, filters
    held_feats = (prefix_features(student, held_images, start_block - 1, cache_dtype, device=device)
                  if start_block <= last_block else None)
    if state_dir is not None:           # epoch states of finished blocks (a kill right after the block was saved)
        for k in range(1, start_block):
            (Path(state_dir) / f"block{k:02d}.partial.pt").unlink(missing_ok=True)
    for k in range(start_block, last_block + 1):
        t0 = time.perf_counter()
        name = student.block_names[k - 1]
        idx = block_subset(train_idx, k, images_per_block, seed)
        block_images, block_soft = images[idx], soft[idx]
        feats = (prefix_features(student, block_images, k - 1, cache_dtype, device=device)   # F_u^{k-1}, per block
                 if augment is None else None)
        block = student.blocks[k - 1]
        filters_k = filters[k - 1]
        student.requires_grad_(False).eval()
        block.requires_grad_(True).train()
        active = [filters_k[n] for n in plan.active_teachers]
        for f in active:
            f.requires_grad_(True).train()
        params = list(block.parameters()) + [p for f in active for p in f.parameters()]
        partial = Path(state_dir) / f"block{k:02d}.partial.pt" if state_dir is not None else None
        if partial is not None and partial.is_file() and log:
            log(f"block {name} ({k}/{num_blocks}): resuming from {partial}")
        def batch_loss(b, k=k, block=block, filters_k=filters_k, feats=feats, block_images=block_images,
                       block_soft=block_soft):
            if augment is None:
                h = block_inputs(feats, block_images, b, device)
                target = block_soft[b].to(device, non_blocking=True)
            else:
                x = to_input(augment(block_images[b].to(device, non_blocking=True), b))
                h, target = _augmented_inputs(student, teachers, plan, x, k, device)
            return filtered_loss(entangled_predictions(block(h), k, filters_k, teachers, plan), target)[0]

        history = optimise(
            params, len(idx), batch_loss,
            dataclasses.replace(schedule, epochs=block_epochs[k - 1]) if block_epochs else schedule,
            seed * 7919 + k, desc=f"block {name} ({k}/{num_blocks})", checkpoint=partial,
            state=nn.ModuleList([block, *active]), fingerprint=f"{fingerprint}:block{k}", device=device)
        del feats
        block.requires_grad_(False)
        for f in active:
            f.requires_grad_(False).eval()
        result.losses[k - 1], held_feats = _heldout_block(block, filters_k, teachers, plan, held_feats,
                                                          held_images, held_soft, k, cache_dtype, device=device)
        student.eval()
        result.train_loss = result.train_loss[:k - 1] + [history]
        result.seconds = result.seconds[:k - 1] + [time.perf_counter() - t0]
        if log:
            log(f"block {name} ({k}/{num_blocks}): train loss {history[-1] if history else float('nan'):.4f}, "
                f"held-out loss {result.losses[k - 1].mean():.4f} in {result.seconds[-1]:.0f} s")
        if on_block_end:
            on_block_end(k, result)
        if partial is not None:
            partial.unlink(missing_ok=True)
    return result


@torch.no_grad()
def branch_logits(student: BlockNet, filters, teachers: Sequence[BlockNet], plan: TaskPlan,
                  images: torch.Tensor, batch_size: int = 250, device=None) -> torch.Tensor:
    """Logits of every task of C when branching out after every block k (before fine-tuning):
    student 1..k -> f_n^k -> teacher n's blocks k+1..B and head (Eq. 6 at test time). ``(B, N_img, |C|)``
    on the CPU; row k-1 draws Fig. 3 at block k."""
    device = as_device(device)
    freeze(teachers, device)
    student.to(device=device).eval()
    filters.to(device).eval()
    out = torch.empty(student.num_blocks, len(images), len(plan.tasks))
    with autocast(device):
        for idx in batches(len(images), batch_size):
            h = to_input(images[idx].to(device, non_blocking=True))
            for k in range(1, student.num_blocks + 1):
                h = student.blocks[k - 1](h)
                out[k - 1, idx] = entangled_predictions(h, k, filters[k - 1], teachers, plan).float().cpu()
    return out
