"""Training compute in multiply-accumulates (docs/design.md §7): what block-wise amalgamation and fine-tuning
cost, and how many image passes give a KD student the same budget.

Every count is the MACs of one image's work, measured by :mod:`kalib.macs` on a small batch of real pool
images with the networks of the run, times the images that work is done for. What is counted, per arm:

* both arms: the teachers' soft targets on every image the arm trains on (amalgamation also on the held-out
  slice, whose losses L_i^k Eq. 9 needs);
* amalgamation (Alg. 1): for every block k, the frozen prefix F_u^{k-1} of the block's images (computed once
  per block and cached: a cache that really saves work is credited), every training step (student block k,
  the filters f_n^k and the teachers' frozen blocks k+1..B and heads, forward and backward), the held-out
  losses L_i^k; then fine-tuning the TargetNet (forward and backward);
* KD: the student's training steps (forward and backward).

Evaluation on the validation and test splits is not training and is left out for every arm.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..macs import counted_macs, forward_macs_per_image, passes, step_macs_per_image
from ..method.blockwise import entangled_predictions, filtered_loss, teacher_logits
from ..method.filters import TaskPlan
from ..method.pool import epochs_per_block
from ..method.student import init_student, make_filters
from ..method.targetnet import assemble
from ..models import BlockNet
from ..train import to_input


def teacher_macs(teachers: Sequence[BlockNet], plan: TaskPlan, x: torch.Tensor) -> float:
    """MACs per image of the soft targets: a forward pass of every teacher with a task in C."""
    return sum(forward_macs_per_image(teachers[n], x) for n in plan.active_teachers)


def block_macs(student: BlockNet, filters_k: Sequence[nn.Module], teachers: Sequence[BlockNet], plan: TaskPlan,
               x: torch.Tensor, k: int) -> dict[str, float]:
    """Per image, for block k of Alg. 1: ``prefix`` (F_u^{k-1} through the frozen blocks 1..k-1), ``step``
    (one training step of Eq. 6–7: block k, filters and teacher suffixes, forward and backward) and
    ``heldout`` (the same forward pass without the backward, for L_i^k)."""
    block = student.blocks[k - 1]
    with torch.no_grad():
        h = student.prefix(x, k - 1)
        target = teacher_logits(teachers, plan, x, x.device)
        prefix = counted_macs(lambda: student.prefix(x, k - 1)) / len(x) if k > 1 else 0.0
        held = counted_macs(lambda: entangled_predictions(block(h), k, filters_k, teachers, plan)) / len(x)
    active = [filters_k[n] for n in plan.active_teachers]
    params = [p for part in (block, *active) for p in part.parameters()]
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    step = step_macs_per_image(
        lambda: filtered_loss(entangled_predictions(block(h), k, filters_k, teachers, plan), target)[0], len(x), params)
    for p, flag in zip(params, flags):
        p.requires_grad_(flag)
    return {"prefix": prefix, "step": step, "heldout": held}


def network_step_macs(net: nn.Module, x: torch.Tensor, outputs: int) -> float:
    """MACs per image of one training step of ``net`` (forward and backward, every weight trainable) against
    soft targets with ``outputs`` columns (Eq. 7)."""
    params = list(net.parameters())
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(True)
    target = torch.zeros(len(x), outputs)
    macs = step_macs_per_image(lambda: filtered_loss(net(x), target)[0], len(x), params)
    for p, flag in zip(params, flags):
        p.requires_grad_(flag)
    return macs


def alg1_costs(student: BlockNet, filters, teachers: Sequence[BlockNet], plan: TaskPlan,
               sample: torch.Tensor) -> dict:
    """Per image, what Alg. 1's MACs are made of: the teachers' soft targets (``soft_targets``) and every
    block's :func:`block_macs` (``blocks``), measured on a uint8 ``sample`` batch of pool images. They depend on
    the networks' architectures and the image size, not on the weights: a study counts them once and re-uses
    them for every run on the same teachers and task set."""
    x = to_input(sample)
    was = [m.training for m in (student, filters)]
    student.eval(), filters.eval()
    costs = {"soft_targets": teacher_macs(teachers, plan, x),
             "blocks": [block_macs(student, filters[k - 1], teachers, plan, x, k)
                        for k in range(1, len(student.block_names) + 1)]}
    for m, flag in zip((student, filters), was):
        m.train(flag)
    return costs


def amalgamation_macs(student: BlockNet, filters, teachers: Sequence[BlockNet], plan: TaskPlan, sample: torch.Tensor,
                      *, block_images: int, block_epochs: Sequence[int], block_batch: int, train_images: int,
                      heldout: int, target: nn.Module, finetune_images: int, finetune_epochs: int,
                      finetune_batch: int, heldout_losses: bool = True, costs: dict | None = None) -> dict[str, int]:
    """Training MACs of one amalgamation (Alg. 1 and fine-tuning), by part and in ``total``: the student
    and filters as trained (any block), the teachers, a uint8 ``sample`` batch of pool images to measure on,
    ``block_images`` per block for ``block_epochs[k-1]`` epochs, ``train_images`` and ``heldout`` pool
    images with soft targets, and the assembled TargetNet ``target`` fine-tuned over ``finetune_images``.
    ``heldout_losses=False``: a TargetNet whose branch blocks no rule chose (every task at the last block)
    needs no held-out losses L_i^k, and they are not counted. ``costs``: :func:`alg1_costs` of these networks,
    where they were counted before."""
    costs = costs or alg1_costs(student, filters, teachers, plan, sample)
    x = to_input(sample)
    parts = {"soft_targets": (train_images + heldout) * costs["soft_targets"], "prefix": 0.0, "blocks": 0.0,
             "heldout": 0.0}
    for epochs, cost in zip(block_epochs, costs["blocks"], strict=True):
        parts["prefix"] += block_images * cost["prefix"]
        parts["blocks"] += passes(block_images, epochs, block_batch) * cost["step"]
        parts["heldout"] += heldout * cost["heldout"] if heldout_losses else 0.0
    was = target.training
    target.eval()
    parts["finetune"] = passes(finetune_images, finetune_epochs, finetune_batch) * network_step_macs(
        target, x, len(plan.tasks))
    target.train(was)
    out = {name: int(v) for name, v in parts.items()}
    out["total"] = sum(out.values())
    return out


def kd_costs(net: nn.Module, teachers: Sequence[BlockNet], plan: TaskPlan, sample: torch.Tensor) -> dict[str, float]:
    """Per image, what a KD student's MACs are made of: the teachers' soft targets and one training step of
    ``net`` (like :func:`alg1_costs`, they do not depend on the weights). The step is counted on a copy, so that
    its forward pass in training mode leaves ``net``'s BatchNorm statistics as they were."""
    x = to_input(sample)
    return {"soft_targets": teacher_macs(teachers, plan, x),
            "step": network_step_macs(copy.deepcopy(net), x, len(plan.tasks))}


def kd_macs(costs: dict[str, float], *, train_images: int, image_passes: int) -> dict[str, int]:
    """Training MACs of a KD student of :func:`kd_costs` ``costs``: soft targets on its ``train_images`` and
    ``image_passes`` training steps' worth of images."""
    parts = {"soft_targets": int(train_images * costs["soft_targets"]), "steps": int(image_passes * costs["step"])}
    return {**parts, "total": sum(parts.values())}


def kd_passes(budget: int, costs: dict[str, float], *, train_images: int, batch_size: int) -> int:
    """The image passes (a whole number of batches, at least one) that give a KD student of :func:`kd_costs`
    ``costs``, on ``train_images`` pool images, ``budget`` training MACs in all (:func:`kd_macs`)."""
    left = budget - train_images * costs["soft_targets"]
    steps = round(left / (costs["step"] * batch_size))
    return max(steps, 1) * batch_size


def run_macs(preset, teachers: Sequence[BlockNet], plan: TaskPlan, branch_blocks: Sequence[str], sample: torch.Tensor,
             *, train_images: int) -> dict[str, int]:
    """Training MACs of an amalgamation run of ``preset`` (Alg. 1 with its block schedule and fine-tuning)
    on ``train_images`` pool images whose TargetNet branches out at ``branch_blocks`` (one block name per
    task of C, as a run record's ``branch_block`` holds them). The MACs do not depend on the weights, so the
    networks are built fresh from the teachers' architecture."""
    s = preset.student
    student = init_student("teacher1", teachers)
    filters = make_filters(student, teachers, s.filter_reduction)
    points = [student.block_index(b) for b in branch_blocks]
    epochs = (epochs_per_block(s.block_epochs, student.num_blocks) if s.block_epochs
              else [s.block.epochs] * student.num_blocks)
    return amalgamation_macs(
        student, filters, teachers, plan, sample, block_images=min(s.block_images or train_images, train_images),
        block_epochs=epochs, block_batch=s.block.batch_size, train_images=train_images, heldout=s.loss_slice,
        target=assemble(student, filters, teachers, plan, points),
        finetune_images=min(s.finetune_images or train_images, train_images), finetune_epochs=s.finetune.epochs,
        finetune_batch=s.finetune.batch_size)
