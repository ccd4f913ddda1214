"""Teacher pretraining (paper §3.3, Eq. 2) and the shared generic "ImageNet" stage (docs/design.md §1).

Every teacher, and later the student, starts from one generic backbone, pretrained as a softmax classifier
on single-glyph canvases (the embedded presets) or taken from ImageNet (the paper presets). The shared
start keeps the teachers' block-k features aligned channel by channel, which is what lets the paper's
channel filters (Eq. 4) work. The files, resume and re-use of pretraining are :mod:`kalib.runs.teachers`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..metrics import ap_dict
from ..models import BlockNet, build_backbone
from ..train import EpochStore, Schedule, fit, predict


def teacher_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 2: l_n = 1/T_n Σ_i ℓ(a_n^i, a_n^{i*}), ℓ the binary cross-entropy of task i (also averaged
    over the batch)."""
    return F.binary_cross_entropy_with_logits(logits, targets)


def train_generic(images: torch.Tensor, labels: torch.Tensor, num_classes: int, arch: str, arch_kwargs: dict,
                  schedule: Schedule, seed: int = 0, *, store: EpochStore | None = None, device=None,
                  precision: str | None = None) -> BlockNet:
    """The shared initialisation: a ``num_classes``-way softmax classifier of ``arch`` trained on ``images``
    (single-glyph canvases of the train split) with class indices ``labels``.
    ``store``: per-epoch resume, ``precision``: the training precision (:func:`kalib.train.optimise`)."""
    torch.manual_seed(seed)
    model = build_backbone(arch, num_classes=num_classes, **arch_kwargs)
    fit(model, images, labels, F.cross_entropy, schedule, seed,
        desc=f"generic {arch}", store=store, device=device, precision=precision)
    return model.eval()


def train_teacher(generic: BlockNet, images: torch.Tensor, targets: torch.Tensor, schedule: Schedule,
                  seed: int = 0, *, store: EpochStore | None = None, device=None, augment=None,
                  warm_start: BlockNet | None = None, desc: str = "teacher", precision: str | None = None) -> BlockNet:
    """Teacher A_n: the generic backbone with a new head of ``targets.shape[1]`` outputs (or a copy of
    ``warm_start``, a teacher for the same labels), trained with Eq. 2 on labelled ``images`` and their 0/1
    ``targets`` (the columns of its label group). ``store``: per-epoch resume; ``precision``: the training
    precision (:func:`kalib.train.optimise`)."""
    torch.manual_seed(seed)
    if warm_start is not None and warm_start.num_classes != targets.shape[1]:
        raise ConfigError(f"warm_start has {warm_start.num_classes} outputs, the label group {targets.shape[1]}")
    model = copy.deepcopy(warm_start) if warm_start is not None else generic.with_new_head(targets.shape[1])
    fit(model, images, targets, teacher_loss, schedule, seed, desc=desc, store=store, device=device,
        augment=augment, precision=precision)
    return model.eval()


def evaluate(model: BlockNet, images: torch.Tensor, targets: torch.Tensor,
             names: Sequence[str], device=None) -> dict[str, float]:
    """Per-label 11-point AP (percent, VOC2007) of ``model`` and their mean under key ``"mAP"``
    (:func:`kalib.metrics.ap_dict`: a label without positives is NaN and left out of the mean)."""
    return ap_dict(names, predict(model, images, device=device).numpy(), targets.numpy())
