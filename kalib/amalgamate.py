"""Entangled block-wise training (paper §3.4, Eq. 6–8, Alg. 1) and the whole amalgamation run.

For block k = 1..B (Alg. 1 lines 4–11) the student's frozen blocks 1..k-1 give F_u^{k-1}; student block
k turns it into F_u^k; the teacher-level filter f_n^k (Eq. 4) maps it into teacher n's feature space;
it *replaces* teacher n's own block-k features and runs through teacher n's frozen blocks k+1..B and
head (Eq. 6). The task-level filter g keeps the outputs of the customized tasks C_n, and the loss is the
soft cross-entropy against teacher n's own predictions on the same image, averaged over |C| (Eq. 7–8).
Only student block k and the filters f_n^k are updated. No label is used: the API takes images only.

Speed (CPU): the teachers' soft targets are computed once per pool image, and the frozen prefix
F_u^{k-1} once per block; each block trains on a seeded subset of the pool (``images_per_block``), and
its converged loss L_i^k is measured on a fixed held-out slice at the end of the pool that is never
trained on.

:func:`run` strings everything together for the CLI: block-wise training (resumable per block and per
epoch inside a block), Eq. 9 branch-out, Eq. 10 assembly (:mod:`kalib.branch`), fine-tuning (Alg. 1
line 14, resumable per epoch), and the evaluation on the test split (Fig. 3 curves, Table 1 APs).

Devices: networks move to ``device``; pool canvases, cached soft targets and cached prefix features stay
on the CPU and move batch by batch (bfloat16 autocast for forward passes on CUDA).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .augment import BatchAugment
from .branch import (assemble, branch_points, count_parameters, forced_branch_points, save_target,
                     tolerant_branch_points)
from .checkpoints import CheckpointError, ConfigMismatchError, _atomic_write, load_model, load_state, read_meta
from .config import changed_keys, digest, file_digest
from .device import as_device, autocast
from .filters import TaskPlan, TeacherFilter, select_tasks, task_plan
from .metrics import ap_voc07
from .models import BlockNet, build_backbone
from .parallel import run_parallel
from .train import Schedule, batches, fit, optimise, predict, to_input

INITS = ("generic", "random", "teacher1", "teacher-mean")
CL = torch.channels_last        # as kalib.train: ~1.5x faster convolutions on the CPU


# ------------------------------------------------------------------------------------ Eq. 6–8 pieces

def freeze(teachers: Sequence[BlockNet], device=None) -> list[BlockNet]:
    """Teachers are fixed during amalgamation: eval mode (BatchNorm uses its running statistics and
    never updates them) and no gradients for their weights; moved to ``device`` (default CPU)."""
    device = as_device(device)
    for t in teachers:
        t.to(device=device, memory_format=CL).eval().requires_grad_(False)
    return list(teachers)


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


def epochs_per_block(profile: Sequence[int], num_blocks: int) -> list[int]:
    """Epochs of each of ``num_blocks`` blocks from a per-block ``profile`` (``Preset.block_epochs``). A
    profile of another length is read as a depth profile: block k takes the entry at the same relative
    depth, so (1, 1, 2, 2, 4, 4, 8, 8) for ResNet-18's 8 blocks gives (1, 2, 4, 8) to a 4-block DenseNet."""
    if not profile or any(e < 0 for e in profile):
        raise ValueError(f"block_epochs must be non-negative epochs, one per block, got {list(profile)}")
    return [int(profile[-(-k * len(profile) // num_blocks) - 1]) for k in range(1, num_blocks + 1)]


def make_filters(student: BlockNet, teachers: Sequence[BlockNet], reduction: int = 4) -> nn.ModuleList:
    """f_n^k for every block k and teacher n (``filters[k-1][n]``), each starting as the identity."""
    for t in teachers:
        if t.num_blocks != student.num_blocks:
            raise ValueError(f"student has {student.num_blocks} blocks but a teacher ({t.arch}) has "
                             f"{t.num_blocks}; block-wise amalgamation needs the same block count")
    return nn.ModuleList(
        nn.ModuleList(TeacherFilter(student.out_channels[k], t.out_channels[k], reduction) for t in teachers)
        for k in range(student.num_blocks))


def init_student(init: str, teachers: Sequence[BlockNet], generic: BlockNet | None = None,
                 seed: int = 0) -> BlockNet:
    """The student T(θ_0) of Alg. 1 line 1.

    ``generic``: the shared generic backbone the teachers started from (docs/design.md §1, the default);
    ``random``: a fresh network of the teachers' architecture; ``teacher1``: a copy of teacher 1;
    ``teacher-mean`` (beyond the paper): the average of the teachers' weights and BatchNorm statistics, which
    sits between teachers fine-tuned from one shared start.
    """
    if init == "generic":
        if generic is None:
            raise ValueError("init='generic' needs the generic backbone the teachers started from")
        student = copy.deepcopy(generic)
    elif init == "random":
        torch.manual_seed(seed)
        student = build_backbone(**teachers[0].config)
    elif init == "teacher1":
        student = copy.deepcopy(teachers[0])
    elif init == "teacher-mean":      # the blocks' weights and statistics; the head (never used) is teacher 1's
        student = copy.deepcopy(teachers[0])
        states = [t.blocks.state_dict() for t in teachers]
        student.blocks.load_state_dict({k: (sum(s[k].double() for s in states) / len(states)).to(v.dtype)
                                        if v.is_floating_point() else v for k, v in states[0].items()})
    else:
        raise ValueError(f"unknown student init '{init}'; valid: {', '.join(INITS)}")
    return student.requires_grad_(True).train()


@torch.no_grad()
def _features(student: BlockNet, images: torch.Tensor, k: int, dtype: torch.dtype,
              batch_size: int = 250, device=None) -> torch.Tensor | None:
    """F_u^k of the (frozen, eval-mode) student for ``images`` (kept on the CPU as ``dtype``); ``None``
    for k = 0 (use the images)."""
    if k == 0:
        return None
    device = as_device(device)
    student.eval()
    with autocast(device):
        return torch.cat([student.prefix(to_input(images[idx].to(device, non_blocking=True)), k).to(dtype).cpu()
                          for idx in batches(len(images), batch_size)])


def _rows(feats: torch.Tensor | None, images: torch.Tensor, idx: torch.Tensor,
          device: torch.device = torch.device("cpu")) -> torch.Tensor:
    if feats is None:
        return to_input(images[idx].to(device, non_blocking=True))
    return feats[idx].to(device, non_blocking=True).float().contiguous(memory_format=CL)


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
            h = block(_rows(feats, images, idx, device))
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


def split_pool(n: int, heldout: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the training part and of the held-out slice (the last ``heldout`` pool images)."""
    if not 0 <= heldout < n:
        raise ValueError(f"held-out slice of {heldout} images needs a pool of more than {heldout}, got {n}")
    return torch.arange(n - heldout), torch.arange(n - heldout, n)


def block_subset(train_idx: torch.Tensor, k: int, images_per_block: int | None, seed: int) -> torch.Tensor:
    """The pool images block k trains on: a seeded random subset (the same on every rerun)."""
    if not images_per_block or images_per_block >= len(train_idx):
        return train_idx
    gen = torch.Generator().manual_seed(seed * 1009 + k)
    return train_idx[torch.randperm(len(train_idx), generator=gen)[:images_per_block]]


@torch.no_grad()
def _augmented_inputs(student: BlockNet, teachers: Sequence[BlockNet], plan: TaskPlan, x: torch.Tensor, k: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For one augmented batch ``x``: the frozen student prefix F_u^{k-1} and the teachers' logits for
    the tasks of C (Eq. 7's targets), both computed on the same images."""
    with autocast(device):
        h = student.prefix(x, k - 1)
    return h.float().contiguous(memory_format=CL), _teacher_logits(teachers, plan, x, device)


@torch.no_grad()
def _teacher_logits(teachers: Sequence[BlockNet], plan: TaskPlan, x: torch.Tensor,
                    device: torch.device) -> torch.Tensor:
    """The teachers' logits for the tasks of C on one batch of network input ``x`` (as soft_targets)."""
    target = torch.empty(len(x), len(plan.tasks), device=device)
    with autocast(device):
        for n in plan.active_teachers:
            target[:, plan.per_teacher[n]] = select_tasks(teachers[n](x), plan.local_per_teacher[n]).float()
    return target


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
    held_feats = (_features(student, held_images, start_block - 1, cache_dtype, device=device)
                  if start_block <= last_block else None)
    if state_dir is not None:           # epoch states of finished blocks (a kill right after the block was saved)
        for k in range(1, start_block):
            (Path(state_dir) / f"block{k:02d}.partial.pt").unlink(missing_ok=True)
    for k in range(start_block, last_block + 1):
        t0 = time.perf_counter()
        name = student.block_names[k - 1]
        idx = block_subset(train_idx, k, images_per_block, seed)
        block_images, block_soft = images[idx], soft[idx]
        feats = (_features(student, block_images, k - 1, cache_dtype, device=device)   # F_u^{k-1}, per block
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
                h, target = _rows(feats, block_images, b, device), block_soft[b].to(device, non_blocking=True)
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
             seed: int = 0, freeze_bn: bool = False, *, device=None, checkpoint: str | Path | None = None,
             fingerprint: str = "", augment=None, teachers: Sequence[BlockNet] = (),
             plan: TaskPlan | None = None) -> list[float]:
    """Alg. 1 line 14: fine-tune the whole assembled TargetNet against the teachers' soft predictions
    (``soft``, logits in C's order) on unlabeled ``images`` with the loss of Eq. 7 and the poly schedule.
    ``freeze_bn`` keeps the BatchNorm statistics (those of the teachers in the copied branches).
    ``checkpoint``: per-epoch resume file (:func:`kalib.train.optimise`).
    Every weight of ``target`` is trained: its parts are copies, and the copies of frozen parts (teacher
    blocks, student blocks and filters after their block) would otherwise stay frozen, and whether a part
    had been frozen would depend on whether its block was trained in this process or loaded on resume.
    With ``augment`` the targets come from ``teachers`` (task plan ``plan``) on each augmented batch.
    Returns the mean loss per epoch; ``target`` is left in eval mode."""
    target.requires_grad_(True)
    model = _FrozenBatchNorm(target) if freeze_bn else target
    if augment is None:
        history = fit(model, images, soft, lambda pred, t: filtered_loss(pred, t)[0], schedule, seed,
                      desc="finetune", checkpoint=checkpoint, fingerprint=fingerprint, device=device)
    else:
        device = as_device(device)
        model.to(device=device, memory_format=CL).train()

        def batch_loss(b):
            x = to_input(augment(images[b].to(device, non_blocking=True), b))
            return filtered_loss(model(x), _teacher_logits(teachers, plan, x, device))[0]

        history = optimise([p for p in target.parameters()], len(images), batch_loss, schedule, seed,
                           desc="finetune", checkpoint=checkpoint, state=model, fingerprint=fingerprint,
                           device=device)
    target.eval()
    return history


@torch.no_grad()
def heldout_loss(model: nn.Module, images: torch.Tensor, soft: torch.Tensor, device=None) -> np.ndarray:
    """Per-task Eq. 7 loss of a network with output in C's order on held-out pool images."""
    return task_losses(predict(model, images, device=device), soft).numpy()


# ------------------------------------------------------------------------------------------ the run

def teacher_files(preset, teachers_dir: str | Path, teacher_set: str = "2") -> tuple[str, list[Path], Path]:
    """(arch, teacher checkpoint paths, generic checkpoint path) of a teacher set in ``teachers_dir``."""
    groups, arch, _ = preset.teacher_set(teacher_set)
    d = Path(teachers_dir)
    paths = [d / f"teacher{len(groups)}-{arch}-{n}.pt" for n in range(1, len(groups) + 1)]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no teacher checkpoints {', '.join(missing)} in {d}; run "
                                f"`python -m kalib pretrain --preset {preset.name} --out {d} "
                                f"--teacher-sets {teacher_set}` first")
    return arch, paths, d / f"generic-{arch}.pt"


def check_teachers(paths: Sequence[Path], metas: Sequence[dict], arch: str, label_names: Sequence[str],
                   generic_path: Path | None = None, generic_meta: dict | None = None) -> None:
    """Refuse teachers that cannot be amalgamated together, with a one-line reason: another architecture
    than the teacher set's (or than each other's), a checkpoint that is not a teacher, labels the dataset
    does not have, or a generic backbone of another architecture."""
    for path, meta in zip(paths, metas):
        role = meta.get("role", "teacher")
        if role != "teacher":
            raise CheckpointError(f"{path} is a {role} checkpoint, not a teacher")
        got = meta.get("config", {}).get("arch")
        if got != arch:
            raise CheckpointError(f"teachers of different architectures: {path} is {got}, the teacher set needs "
                                  f"{arch} (amalgamation needs teachers of one architecture); rerun pretrain")
        unknown = [n for n in meta.get("labels", []) if n not in label_names]
        if unknown:
            raise CheckpointError(f"{path} is a teacher for labels {unknown} that the dataset does not have; "
                                  "use teachers pretrained on this preset's data")
    if generic_meta is not None and generic_meta.get("config", {}).get("arch") != arch:
        raise CheckpointError(f"{generic_path} is a {generic_meta.get('config', {}).get('arch')} network, "
                              f"not the {arch} the teachers started from; rerun pretrain or use --init random")


class BlockStore:
    """Per-block student + filter state in ``DIR/blocks/``, so a rerun resumes after the last finished
    block. A block counts only when its JSON (written after its weights) carries this run's fingerprint.
    ``blocks/config.json`` holds the fingerprint and the settings behind it; ``blockKK.partial.pt`` and
    ``finetune-*.partial.pt`` the per-epoch state of the unit in progress."""

    def __init__(self, out_dir: Path, fingerprint: str):
        self.dir = Path(out_dir) / "blocks"
        self.fingerprint = fingerprint

    def prepare(self, settings: dict, restart: bool = False, log: Callable[[str], None] | None = None) -> None:
        """Check that the saved state belongs to ``settings`` (:class:`ConfigMismatchError` naming the
        changed settings otherwise) and record them; ``restart`` first deletes this directory, and only
        it (teachers and other runs are never touched)."""
        config = self.dir / "config.json"
        if restart and self.dir.exists():
            shutil.rmtree(self.dir)
            if log:
                log(f"--restart: removed {self.dir}")
        if config.is_file():
            try:
                old = json.loads(config.read_text())
            except (OSError, json.JSONDecodeError):
                old = {}
            if old.get("fingerprint") != self.fingerprint:
                changed = changed_keys(old.get("settings", {}), json.loads(json.dumps(settings)))
                raise ConfigMismatchError(
                    f"{self.dir} holds the block states of another configuration (changed: "
                    f"{', '.join(changed) or 'unknown'}); rerun with --restart to discard them and start "
                    "over, or choose another --out directory")
        else:
            info = {"fingerprint": self.fingerprint, "settings": settings}
            _atomic_write(config, lambda p: p.write_text(json.dumps(info, indent=1, default=str)))
        for stale in self.dir.glob(".*.tmp*"):     # temporary files of a killed run
            stale.unlink(missing_ok=True)

    def _json(self, k: int) -> Path:
        return self.dir / f"block{k:02d}.json"

    def save(self, k: int, result: Amalgamation) -> None:
        state = {"student": result.student.state_dict(), "filters": result.filters.state_dict()}
        _atomic_write(self.dir / f"block{k:02d}.pt", lambda p: torch.save(state, p))
        info = {"fingerprint": self.fingerprint, "block": k, "losses": result.losses[:k].tolist(),
                "train_loss": result.train_loss[:k], "seconds": result.seconds[:k]}
        _atomic_write(self._json(k), lambda p: p.write_text(json.dumps(info)))

    def last_finished(self, num_blocks: int) -> int:
        done = 0
        for k in range(1, num_blocks + 1):
            try:
                info = json.loads(self._json(k).read_text())
            except (OSError, json.JSONDecodeError):
                break
            if info.get("fingerprint") != self.fingerprint:
                break
            done = k
        return done

    def load(self, k: int, result: Amalgamation) -> Amalgamation:
        state = load_state(self.dir / f"block{k:02d}.pt")
        result.student.load_state_dict(state["student"])
        result.filters.load_state_dict(state["filters"])
        info = json.loads(self._json(k).read_text())
        result.losses[:k] = np.asarray(info["losses"])
        result.train_loss, result.seconds = info["train_loss"], info["seconds"]
        return result


def cached_tensor(path: Path, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """The tensor saved at ``path``, or ``compute()`` saved there (atomically) when the file is missing or
    unreadable."""
    if path.is_file():
        try:
            return load_state(path)
        except Exception:
            pass
    value = compute()
    _atomic_write(path, lambda p: torch.save(value, p))
    return value


def _peak_rss_mb() -> int | None:
    """Peak resident memory of this process in MiB (Linux reports KiB; None where unavailable)."""
    try:
        import resource
    except ImportError:
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _ap_dict(names, scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    ap = ap_voc07(scores.numpy(), targets.numpy())
    out = {n: round(float(a), 3) for n, a in zip(names, ap)}
    out["mAP"] = round(float(np.nanmean(ap)), 3)
    return out


def run(bench, preset, teachers_dir: str | Path, out_dir: str | Path, *, teacher_set: str = "2",
        tasks=None, init: str | None = None, branch_at: str | None = None, evaluate: bool = True,
        branch_curves: bool = True, seed: int | None = None, log: Callable[[str], None] = print,
        device=None, restart: bool = False, eval_split: str = "test") -> dict:
    """The whole of Alg. 1 for the CLI: teachers of ``teacher_set`` from ``teachers_dir`` -> block-wise
    training on ``bench.pool_images`` (Eq. 6–8) -> branch-out (Eq. 9, or every task at ``branch_at``)
    -> TargetNet (Eq. 10) -> fine-tuning. The student starts as ``init`` (:func:`init_student`; default
    ``preset.student_init``). Branch-out follows ``preset.branch_tolerance``
    (:func:`~kalib.branch.tolerant_branch_points`; 0 is Eq. 9); where that rule differs from Eq. 9, the
    record's ``eq9`` entry holds the paper's own TargetNet, fine-tuned the same way. Training reads only
    ``bench.pool_images`` (the first ``preset.pool_images`` of them where set); with ``evaluate``
    the ``eval_split`` (``test``, or ``val`` when choosing settings) gives the APs of teachers and TargetNet,
    and with ``branch_curves`` also the Fig. 3 curves (AP at every branch-out block). Writes
    ``out_dir/targetnet.pt`` (+ JSON) and ``out_dir/run.json``; returns the run record. A finished run of
    the same settings is returned as it is, not run again.

    Resumable: finished blocks (and the epochs of the block or fine-tuning in progress) in
    ``out_dir/blocks`` are re-used by a rerun with the same settings; other settings raise
    :class:`~kalib.checkpoints.ConfigMismatchError` unless ``restart``, which deletes ``out_dir/blocks``
    first. ``device``: where the networks run (default CPU).
    """
    seed = preset.seed if seed is None else seed
    init = preset.student_init if init is None else init
    device = as_device(device)
    out_dir = Path(out_dir)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    arch, paths, generic_path = teacher_files(preset, teachers_dir, teacher_set)
    metas = [read_meta(p) for p in paths]
    generic_meta = read_meta(generic_path) if init == "generic" and generic_path.is_file() else None
    check_teachers(paths, metas, arch, bench.label_names, generic_path, generic_meta)
    loaded = [load_model(p) for p in paths]
    teachers = freeze([m for m, _ in loaded], device)
    labels = [meta["labels"] for _, meta in loaded]
    plan = task_plan(tasks, labels)
    eval_images, eval_y = _eval_split(bench, eval_split, plan) if evaluate else (None, None)   # before any work
    generic = None
    if init == "generic":
        if not generic_path.is_file():
            raise FileNotFoundError(f"{generic_path} (the generic backbone the teachers started from) is "
                                    "missing; use --init random or teacher1, or rerun pretrain")
        generic = load_model(generic_path)[0]
    student = init_student(init, teachers, generic, seed)
    # an unknown --branch-at is refused here, before any work
    forced = forced_branch_points(student, branch_at, len(plan.tasks)) if branch_at is not None else None
    pool = bench.pool_images[:preset.pool_images or None]
    cache_dtype = getattr(torch, preset.amalgamation_cache)
    settings = {"data": bench.spec.key(), "pool": len(pool), "teachers": [file_digest(p) for p in paths],
                "generic": file_digest(generic_path) if init == "generic" else None, "init": init,
                "tasks": list(plan.tasks), "block": dataclasses.asdict(preset.block),
                "block_images": preset.block_images, "loss_slice": preset.loss_slice, "seed": seed,
                **({"block_epochs": list(preset.block_epochs)} if preset.block_epochs else {}),
                "reduction": preset.filter_reduction, **({"augment": True} if preset.augment else {})}
    augment = BatchAugment(seed) if preset.augment else None
    store = BlockStore(out_dir, digest(settings))
    store.prepare(settings, restart, log)
    run_key = digest([store.fingerprint, branch_at, dataclasses.asdict(preset.finetune), preset.finetune_images,
                      preset.finetune_freeze_bn, evaluate, branch_curves, preset.branch_tolerance, eval_split])
    finished = out_dir / "run.json"
    if finished.is_file() and (out_dir / "targetnet.pt").is_file():
        record = json.loads(finished.read_text())
        if record.get("run_key") == run_key:
            log(f"re-using the finished run in {out_dir}")
            return record
    times["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # the teachers' logits for every label on the pool, computed once per teacher set and pool and shared by
    # every run that amalgamates these teachers (C = A, the Fig. 3 pairs); C's columns are picked from it
    every = task_plan(None, labels)
    soft_key = digest([settings["data"], settings["pool"], settings["teachers"]])
    soft = cached_tensor(Path(teachers_dir) / "soft-targets" / f"{soft_key}.pt",
                         lambda: soft_targets(teachers, pool, every, device=device))
    soft = soft[:, [every.tasks.index(t) for t in plan.tasks]]
    times["teacher_targets"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    torch.manual_seed(seed)             # the filters' initial weights: the same in every run of this seed
    filters = make_filters(student, teachers, preset.filter_reduction)
    result = Amalgamation(student, filters, plan, np.full((student.num_blocks, len(plan.tasks)), np.nan))
    done = store.last_finished(student.num_blocks)
    if done:
        store.load(done, result)
        log(f"resuming after block {student.block_names[done - 1]} ({done}/{student.num_blocks} finished)")
    result = amalgamate(student, teachers, plan, pool, preset.block, images_per_block=preset.block_images,
                        heldout=preset.loss_slice, seed=seed, soft=soft, filters=filters,
                        start_block=done + 1, previous=result, cache_dtype=cache_dtype,
                        on_block_end=store.save, log=log, device=device, state_dir=store.dir,
                        fingerprint=store.fingerprint, augment=augment, block_epochs=preset.block_epochs)
    times["blocks"] = time.perf_counter() - t0
    names = student.block_names

    chosen = branch_points(result.losses)
    points = tolerant_branch_points(result.losses, preset.branch_tolerance) if forced is None else forced
    record = {
        "run_key": run_key, "preset": preset.name, "teacher_set": teacher_set, "arch": arch, "init": init, "seed": seed,
        "teachers": [str(p) for p in paths], "tasks": list(plan.tasks),
        "task_teacher": [n + 1 for n in plan.teacher], "blocks": names,
        "pool": {"train": len(pool) - preset.loss_slice, "heldout": preset.loss_slice,
                 "images_per_block": preset.block_images, "block_epochs": list(preset.block_epochs)},
        "converged_loss": {t: {names[k]: round(float(result.losses[k, i]), 5) for k in range(len(names))}
                           for i, t in enumerate(plan.tasks)},
        "block_train_loss": {names[k]: [round(v, 5) for v in h] for k, h in enumerate(result.train_loss)},
        "chosen_block": {t: names[s - 1] for t, s in zip(plan.tasks, chosen)},
        "branch_block": {t: names[s - 1] for t, s in zip(plan.tasks, points)},
        "branch_at": branch_at, "branch_tolerance": preset.branch_tolerance, "evaluated_on": eval_split,
        "pairs": {name: list(pair) for name, pair in preset.pairs.items()
                  if teacher_set != "3" and all(t in plan.tasks for t in pair)},
    }
    # the TargetNet of the preset's rule, and where that is not Eq. 9 the paper's own as a second row
    variants = {"target": points}
    if points != chosen and branch_at is None:
        variants["eq9"] = chosen
    keys = {name: digest([store.fingerprint, pts, dataclasses.asdict(preset.finetune), preset.finetune_images,
                          preset.finetune_freeze_bn]) for name, pts in variants.items()}
    partials = {name: store.dir / f"finetune-{key}.partial.pt" for name, key in keys.items()}
    for stale in store.dir.glob("finetune-*.partial.pt"):   # of other branch points or fine-tuning settings
        if stale not in partials.values():
            stale.unlink(missing_ok=True)
    train_idx, held_idx = split_pool(len(pool), preset.loss_slice)
    ft_idx = block_subset(train_idx, 0, preset.finetune_images, seed)
    teachers_params = sum(count_parameters(t) for t in teachers)

    def assemble_and_finetune(name: str) -> tuple[dict, float]:
        """One TargetNet: Eq. 10 for the variant's branch blocks, Alg. 1 line 14, evaluation; saved as
        ``targetnet.pt`` (the preset's rule) or ``targetnet-NAME.pt``."""
        t0 = time.perf_counter()
        pts = variants[name]
        target = assemble(student, filters, teachers, plan, pts)
        pre_finetune = predict(target, eval_images, device=device) if evaluate else None
        held_before = heldout_loss(target, pool[held_idx], soft[held_idx], device=device)
        losses = finetune(target, pool[ft_idx], soft[ft_idx], preset.finetune, seed,
                          freeze_bn=preset.finetune_freeze_bn, device=device, checkpoint=partials[name],
                          fingerprint=keys[name], augment=augment, teachers=teachers, plan=plan)
        held_after = heldout_loss(target, pool[held_idx], soft[held_idx], device=device)
        entry = {"branch_block": {t: names[s - 1] for t, s in zip(plan.tasks, pts)},
                 "params": {"targetnet": count_parameters(target), "teachers": teachers_params,
                            "branches": target.branch_names},
                 "finetune_loss": [round(v, 5) for v in losses],
                 "heldout_loss": {"before_finetune": round(float(held_before.mean()), 5),
                                  "after_finetune": round(float(held_after.mean()), 5)}}
        if evaluate:
            entry["target_ap_before_finetune"] = _ap_dict(plan.tasks, pre_finetune, eval_y)
            entry["target_ap"] = _ap_dict(plan.tasks, predict(target, eval_images, device=device), eval_y)
        save_target(out_dir / ("targetnet.pt" if name == "target" else f"targetnet-{name}.pt"), target,
                    role="targetnet", preset=preset.name, init=init, teacher_set=teacher_set,
                    data=bench.spec.key(), **({f"{eval_split}_ap": entry["target_ap"]} if evaluate else {}))
        return entry, time.perf_counter() - t0

    for name, (entry, seconds) in zip(variants, run_parallel([lambda n=n: assemble_and_finetune(n) for n in variants],
                                                             device=device)):
        times["finetune" if name == "target" else f"finetune_{name}"] = seconds
        if name == "target":
            record.update(entry)
        else:
            record[name] = entry

    if evaluate:
        t0 = time.perf_counter()
        if branch_curves:
            curves = branch_logits(student, filters, teachers, plan, eval_images, device=device)
            branch_ap = np.stack([ap_voc07(c.numpy(), eval_y.numpy()) for c in curves])   # (B, |C|)
            record["branch_ap"] = {t: {names[k]: round(float(branch_ap[k, i]), 3) for k in range(len(names))}
                                   for i, t in enumerate(plan.tasks)}
            record["ap_best_block"] = {t: names[int(np.argmax(branch_ap[:, i]))] for i, t in enumerate(plan.tasks)}
            record["stage_map"] = {s: round(float(np.nanmean(branch_ap[k - 1])), 3)
                                   for s, k in student.stage_ends.items()}
            times["branch_curves"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        teacher_scores = torch.empty(len(eval_images), len(plan.tasks))
        for n in plan.active_teachers:
            teacher_scores[:, plan.per_teacher[n]] = select_tasks(
                predict(teachers[n], eval_images, device=device), plan.local_per_teacher[n])
        record["teacher_ap"] = _ap_dict(plan.tasks, teacher_scores, eval_y)
        times["evaluation"] = time.perf_counter() - t0
        if log:
            log(f"teachers mAP {record['teacher_ap']['mAP']:.2f}; TargetNet mAP "
                f"{record['target_ap_before_finetune']['mAP']:.2f} before / {record['target_ap']['mAP']:.2f} "
                f"after fine-tuning ({eval_split} split)")
    times["total"] = sum(times.values())
    record["peak_rss_mb"] = _peak_rss_mb()
    record["seconds"] = {k: round(v, 1) for k, v in times.items()}
    record["seconds"]["per_block"] = {names[k]: round(s, 1) for k, s in enumerate(result.seconds)}
    _atomic_write(out_dir / "run.json", lambda p: p.write_text(json.dumps(record, indent=1)))
    for partial in partials.values():
        partial.unlink(missing_ok=True)
    return record


def _eval_split(bench, split: str, plan: TaskPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels (tasks of C) of the split a run is evaluated on: ``test`` (reported numbers) or
    ``val`` (choosing settings)."""
    if split not in ("test", "val"):
        raise ValueError(f"unknown evaluation split '{split}'; valid: test, val")
    images, labels = getattr(bench, f"{split}_images", None), getattr(bench, f"{split}_labels", None)
    if images is None or labels is None:
        raise ValueError(f"this dataset has no '{split}' split; evaluate on 'test'")
    return images, labels[:, bench.label_indices(plan.tasks)]
