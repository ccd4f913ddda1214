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

Data-parallel (torchrun, :mod:`kalib.distributed`): every process runs these same lines. The training loop
gives each its share of every batch and averages the gradients of block k and the filters f_n^k over the
processes (the frozen teachers stay outside DDP); the soft targets and the held-out losses L_i^k are computed
on each process's share of the images and gathered or summed, so every process chooses the same branch points.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..device import as_device, autocast
from ..models.blocknet import BlockNet
from ..train import EpochStore, Schedule, batches, optimise, predict, to_input
from .filters import TaskPlan, select_tasks
from .pool import block_inputs, block_subset, epochs_per_block, prefix_features, split_pool
from .student import CL, freeze, make_filters

# ------------------------------------------------------------------------------------ Eq. 6–8 pieces

@torch.no_grad()
def soft_targets(teachers: Sequence[BlockNet], images: torch.Tensor, plan: TaskPlan,
                 batch_size: int = 500, device=None) -> torch.Tensor:
    """Teacher n's own predictions O_n^i (logits) for the tasks of C, ``(len(images), |C|)`` in C's order.

    Computed once per image and cached by the caller: the targets of Eq. 7 never change. Under torchrun each
    process computes its share of the images and receives the others'.
    """
    start, stop = distributed.bounds(len(images))
    out = torch.empty(stop - start, len(plan.tasks))
    for n in plan.active_teachers:
        out[:, plan.per_teacher[n]] = select_tasks(predict(teachers[n], images[start:stop], batch_size,
                                                           device=device), plan.local_per_teacher[n])
    return distributed.gather_rows(out, len(images))


@torch.no_grad()
def teacher_logits(teachers: Sequence[BlockNet], plan: TaskPlan, x: torch.Tensor,
                   device: torch.device) -> torch.Tensor:
    """The teachers' logits for the tasks of C on one batch of network input ``x`` (as soft_targets)."""
    target = torch.empty(len(x), len(plan.tasks), device=device)
    with autocast(device):
        for n in plan.active_teachers:
            target[:, plan.per_teacher[n]] = select_tasks(teachers[n](x), plan.local_per_teacher[n]).float()
    return target


def task_losses(pred: torch.Tensor, target_logits: torch.Tensor,
                softmax_groups: Sequence[tuple[Sequence[int], float]] = ()) -> torch.Tensor:
    """ℓ(O_n^i, O_un^i) of Eq. 7 for every task i, ``(|C|,)``: the loss of Eq. 2 (binary cross-entropy),
    with teacher n's sigmoid probability as the soft target, averaged over the batch.

    ``softmax_groups`` (beyond the paper; :attr:`~kalib.method.filters.TaskPlan.softmax_groups`): the columns of
    each single-label (softmax) teacher and its temperature T. Those columns take the cross-entropy against
    the teacher's softmax at T instead, -T² p_i log q_i for task i (p, q: softmax at T of the teacher's and the
    prediction's columns of the group), so that a group's terms sum to its cross-entropy (scaled by T², as in
    knowledge distillation). Without groups the numbers are exactly the multi-label ones."""
    losses = F.binary_cross_entropy_with_logits(pred, torch.sigmoid(target_logits), reduction="none").mean(0)
    if not softmax_groups:
        return losses
    losses = losses.clone()
    for columns, temperature in softmax_groups:
        cols = list(columns)
        p = torch.softmax(target_logits[:, cols].float() / temperature, dim=1)
        log_q = torch.log_softmax(pred[:, cols].float() / temperature, dim=1)
        losses[cols] = (-(p * log_q) * temperature ** 2).mean(0).to(losses.dtype)
    return losses


def filtered_loss(pred: torch.Tensor, target_logits: torch.Tensor,
                  softmax_groups: Sequence[tuple[Sequence[int], float]] = ()) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 7: L_u = 1/|C| Σ_n Σ_{i∈C_n} ℓ(O_n^i, O_un^i), with |C| = Σ_n |C_n| (Eq. 8).

    ``pred``/``target_logits`` are ``(batch, |C|)``, columns in C's order (all teachers together).
    ``softmax_groups``: the single-label teachers' columns (:func:`task_losses`).
    Returns the scalar loss and the per-task terms.
    """
    per_task = task_losses(pred, target_logits, softmax_groups)
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


@dataclass
class Amalgamation:
    """Result of block-wise training: the student, the filters ``filters[k-1][n]``, the converged held-out
    loss ``losses[k-1, i]`` = L_i^k (NaN for blocks not trained yet), the mean training loss of every epoch
    of every block, and seconds per block."""
    student: BlockNet
    filters: nn.ModuleList
    plan: TaskPlan
    losses: np.ndarray
    train_loss: list[list[float]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)


@dataclass
class BlockHooks:
    """How a caller follows and keeps block-wise training without the algorithm writing files:
    ``epoch_store(k)`` gives the :class:`~kalib.train.EpochStore` of block k's epochs (resume inside a
    block), ``on_block_end(k, result)`` runs after block k has finished (keep it), ``log`` gets one line
    per block. The run layer fills these in (:mod:`kalib.runs.amalgamation`)."""
    epoch_store: Callable[[int], EpochStore | None] = lambda k: None
    on_block_end: Callable[[int, Amalgamation], None] | None = None
    log: Callable[[str], None] | None = None


def amalgamate(student: BlockNet, teachers: Sequence[BlockNet], plan: TaskPlan, images: torch.Tensor,
               schedule: Schedule, *, images_per_block: int | None = None, block_epochs: Sequence[int] = (),
               heldout: int = 500, seed: int = 0, reduction: int = 4, soft: torch.Tensor | None = None,
               filters: nn.ModuleList | None = None, start_block: int = 1, previous: Amalgamation | None = None,
               last_block: int | None = None, cache_dtype: torch.dtype = torch.float32, augment=None,
               device=None, hooks: BlockHooks | None = None, precision: str | None = None) -> Amalgamation:
    """Alg. 1 lines 1–11: train student blocks 1..B one after the other with the loss of Eq. 7.

    ``images`` are unlabeled uint8 pool canvases (nothing else is read); the last ``heldout`` are only used
    to measure the converged losses L_i^k. Block k trains on a seeded subset of ``images_per_block`` of the
    others (:func:`~kalib.method.pool.block_subset`) for ``schedule.epochs`` passes, or ``block_epochs[k-1]``
    where given (a depth profile: :func:`~kalib.method.pool.epochs_per_block`). ``soft`` are cached teacher
    logits for ``images`` (computed here if not given). ``start_block``/``previous``/``filters`` continue
    after finished blocks; ``last_block`` stops early (the losses of later blocks stay NaN). ``augment``
    (:class:`kalib.augment.BatchAugment`, paper presets): every training batch is augmented once and the
    same augmented images reach the frozen student prefix and the teachers, so features and targets are
    recomputed per batch instead of cached (the held-out losses stay on the plain images). ``device``: where
    the networks run (default CPU); images, soft targets and cached features stay on the CPU. ``hooks``:
    per-epoch resume and per-block callbacks (:class:`BlockHooks`). ``precision``: the precision of the
    training steps (:func:`kalib.train.optimise`); the cached prefix features and the held-out losses L_i^k
    keep the device's default (float32 on the CPU). The teachers are frozen (eval mode, no gradients) and
    never modified.
    """
    device = as_device(device)
    hooks = hooks or BlockHooks()
    freeze(teachers, device)
    student.to(device=device, memory_format=CL)
    num_blocks = student.num_blocks
    last_block = num_blocks if last_block is None else last_block
    epochs = epochs_per_block(block_epochs, num_blocks) if block_epochs else [schedule.epochs] * num_blocks
    filters = (filters if filters is not None else make_filters(student, teachers, reduction)).to(device)
    soft = soft_targets(teachers, images, plan, device=device) if soft is None else soft
    if soft.shape != (len(images), len(plan.tasks)):
        raise ValueError(f"soft targets {tuple(soft.shape)} do not match {len(images)} images x "
                         f"{len(plan.tasks)} tasks")
    train_idx, held_idx = split_pool(len(images), heldout)
    result = previous or Amalgamation(student, filters, plan, np.full((num_blocks, len(plan.tasks)), np.nan))
    result.student, result.filters = student, filters
    held_feats = (prefix_features(student, images[held_idx], start_block - 1, cache_dtype, device=device)
                  if start_block <= last_block else None)
    for k in range(start_block, last_block + 1):
        t0 = time.perf_counter()
        idx = block_subset(train_idx, k, images_per_block, seed)
        history = train_block(student, filters[k - 1], teachers, plan, images[idx], soft[idx], k,
                              dataclasses.replace(schedule, epochs=epochs[k - 1]), seed=seed * 7919 + k,
                              cache_dtype=cache_dtype, augment=augment, device=device, store=hooks.epoch_store(k),
                              precision=precision)
        result.losses[k - 1], held_feats = converged_losses(student.blocks[k - 1], filters[k - 1], teachers, plan,
                                                            held_feats, images[held_idx], soft[held_idx], k,
                                                            cache_dtype, device=device)
        result.train_loss = result.train_loss[:k - 1] + [history]
        result.seconds = result.seconds[:k - 1] + [time.perf_counter() - t0]
        if hooks.log:
            hooks.log(f"block {student.block_names[k - 1]} ({k}/{num_blocks}): train loss "
                      f"{history[-1] if history else float('nan'):.4f}, held-out loss "
                      f"{result.losses[k - 1].mean():.4f} in {result.seconds[-1]:.0f} s")
        if hooks.on_block_end:
            hooks.on_block_end(k, result)
    return result


def train_block(student: BlockNet, filters_k: Sequence[nn.Module], teachers: Sequence[BlockNet], plan: TaskPlan,
                images: torch.Tensor, soft: torch.Tensor, k: int, schedule: Schedule, *, seed: int = 0,
                cache_dtype: torch.dtype = torch.float32, augment=None, device=None,
                store: EpochStore | None = None, precision: str | None = None) -> list[float]:
    """One block of Alg. 1 (lines 5–9): student block k and the filters f_n^k of the teachers with tasks in C
    learn to minimise Eq. 7 on ``images`` (uint8 pool canvases, targets ``soft``: the teachers' logits for
    C); every other weight stays frozen. Per batch: F_u^{k-1} from the frozen student blocks 1..k-1
    (computed once for all ``images`` and kept on the CPU, :func:`~kalib.method.pool.prefix_features`),
    F_u^k = student block k, then Eq. 6 (:func:`entangled_predictions`) and Eq. 7 (:func:`filtered_loss`).
    ``precision``: the training precision (:func:`kalib.train.optimise`). Returns the mean training loss of
    each epoch; block and filters are left frozen, in eval mode."""
    device = as_device(device)
    feats = prefix_features(student, images, k - 1, cache_dtype, device=device) if augment is None else None
    block = student.blocks[k - 1]
    active = [filters_k[n] for n in plan.active_teachers]
    student.requires_grad_(False).eval()
    for part in (block, *active):
        part.requires_grad_(True).train()

    def batch_loss(b: torch.Tensor) -> torch.Tensor:
        if augment is None:
            h, target = block_inputs(feats, images, b, device), soft[b].to(device, non_blocking=True)
        else:                              # the same augmented batch reaches the student prefix and the teachers
            x = to_input(augment(images[b].to(device, non_blocking=True), b))
            h, target = _augmented_inputs(student, teachers, plan, x, k, device)
        return filtered_loss(entangled_predictions(block(h), k, filters_k, teachers, plan), target,
                             plan.softmax_groups)[0]

    history = optimise([p for part in (block, *active) for p in part.parameters()], len(images), batch_loss,
                       schedule, seed, desc=f"block {student.block_names[k - 1]} ({k}/{student.num_blocks})",
                       module=nn.ModuleList([block, *active]), store=store, device=device, precision=precision)
    for part in (block, *active):
        part.requires_grad_(False).eval()
    return history


@torch.no_grad()
def _augmented_inputs(student: BlockNet, teachers: Sequence[BlockNet], plan: TaskPlan, x: torch.Tensor, k: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For one augmented batch ``x``: the frozen student prefix F_u^{k-1} and the teachers' logits for
    the tasks of C (Eq. 7's targets), both computed on the same images."""
    with autocast(device):
        h = student.prefix(x, k - 1)
    return h.float().contiguous(memory_format=CL), teacher_logits(teachers, plan, x, device)


@torch.no_grad()
def converged_losses(block: nn.Module, filters_k, teachers, plan, feats, images, soft, k,
                     dtype: torch.dtype = torch.float32, batch_size: int = 250,
                     device=None) -> tuple[np.ndarray, torch.Tensor]:
    """L_i^k of Eq. 9's input: the per-task loss of the trained block k on the held-out ``images`` (eval
    mode, mean over the slice), and the slice's F_u^k for the next block. Under torchrun each process takes
    its share of the slice, the sums are added up over the processes, and each keeps its share's F_u^k."""
    device = as_device(device)
    block.eval()
    total = torch.zeros(len(plan.tasks), dtype=torch.float64)
    out = []
    start, stop = distributed.bounds(len(images))           # the whole slice for one process
    for idx in batches(stop - start, batch_size):
        idx = idx + start
        with autocast(device):
            h = block(block_inputs(feats, images, idx, device))
            out.append(h.to(dtype).cpu())
            losses = task_losses(entangled_predictions(h, k, filters_k, teachers, plan),
                                 soft[idx].to(device, non_blocking=True), plan.softmax_groups)
        total += losses.double().cpu() * len(idx)
    total = distributed.sum_over_ranks(total)
    return (total / max(len(images), 1)).numpy(), distributed.shard_rows(torch.cat(out), len(images))


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
