"""Training augmentation of the paper-scale presets, on whole batches of uint8 image tensors.

The usual ImageNet-style recipe — random resized crop and horizontal flip, as in torchvision's
``RandomResizedCrop`` + ``RandomHorizontalFlip`` — applied once per batch to the stored arrays
(:mod:`kalib.data.paper`): every crop of the batch is cut and resized in one ``torchvision.ops.roi_align``
call (bilinear, averaged over each output cell, so down-scaling is anti-aliased), on the CPU or the GPU.

Because one call augments the whole batch, the *same* augmented image can reach the student and every
teacher during amalgamation (the teachers' soft targets of Eq. 7 must then be computed on the augmented
batch, not taken from a per-image cache).
"""

from __future__ import annotations

import math

import torch
from torchvision.ops import roi_align

ATTEMPTS = 10


def sample_boxes(n: int, height: int, width: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """``(n, 4)`` crop boxes ``x1, y1, x2, y2`` (pixel edges, integers as floats) with torchvision's
    ``RandomResizedCrop.get_params`` rule: area fraction uniform in ``scale``, log aspect ratio uniform in
    ``log(ratio)``, up to 10 tries per image, else the largest centred crop with an aspect ratio in ``ratio``."""
    area = height * width
    u = torch.rand(n, ATTEMPTS, 4, generator=generator)
    target = area * (scale[0] + u[..., 0] * (scale[1] - scale[0]))
    log_r = math.log(ratio[0]) + u[..., 1] * (math.log(ratio[1]) - math.log(ratio[0]))
    aspect = torch.exp(log_r)
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    ok = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    y = torch.floor(u[..., 2] * (height - h + 1))
    x = torch.floor(u[..., 3] * (width - w + 1))
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.zeros(n, dtype=torch.long))
    pick = lambda t: t.gather(1, first[:, None])[:, 0]      # noqa: E731
    w, h, x, y = pick(w), pick(h), pick(x), pick(y)
    # fallback: centred crop (torchvision's rule)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        fw, fh = round(height * max(ratio)), height
    else:
        fw, fh = width, height
    none = ~ok.any(1)
    w = torch.where(none, torch.full_like(w, fw), w)
    h = torch.where(none, torch.full_like(h, fh), h)
    x = torch.where(none, torch.full_like(x, (width - fw) // 2), x)
    y = torch.where(none, torch.full_like(y, (height - fh) // 2), y)
    return torch.stack([x, y, x + w, y + h], dim=1)


def random_resized_crop_flip(images: torch.Tensor, size: int | None = None, scale=(0.08, 1.0),
                             ratio=(3 / 4, 4 / 3), flip: float = 0.5, generator: torch.Generator | None = None,
                             return_boxes: bool = False):
    """A random resized crop (to ``size``×``size``, default the input size) and a horizontal flip with
    probability ``flip`` for every image of the uint8 batch ``images`` ``(B, 3, H, W)``.

    Returns float images in [0, 1] (what :func:`kalib.train.to_input` accepts besides uint8) on the
    device of ``images``; with ``return_boxes`` also the crop boxes ``(B, 4)`` and the flip mask ``(B,)``.
    Random numbers come from ``generator`` (CPU), so a seed gives the same crops on any device.
    """
    if images.ndim != 4:
        raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(images.shape)}")
    b, _, height, width = images.shape
    size = size or height
    boxes = sample_boxes(b, height, width, scale, ratio, generator)
    flips = torch.rand(b, generator=generator) < flip
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    rois = torch.cat([torch.arange(b, dtype=torch.float32)[:, None], boxes], dim=1).to(x.device)
    out = roi_align(x.contiguous(), rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=-1,
                    aligned=True)
    out = torch.where(flips.to(x.device)[:, None, None, None], out.flip(-1), out)
    return (out, boxes, flips) if return_boxes else out


class BatchAugment:
    """Random resized crop + horizontal flip for a training batch, called as ``augment(images, idx)``.

    The random numbers are seeded by ``seed`` and the batch's image indices ``idx``, so a resumed epoch
    (same shuffle, same batches) sees exactly the crops of an uninterrupted one. ``scale`` is milder than
    ImageNet's (0.08, 1): a multi-label image keeps its labels, so most labelled objects should stay in view.
    """

    def __init__(self, seed: int = 0, scale=(0.5, 1.0), flip: float = 0.5):
        self.seed, self.scale, self.flip = seed, scale, flip

    def __call__(self, images: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        key = int((idx.to(torch.int64).cpu() * 2654435761 % 2147483647).sum()) % 2147483647
        gen = torch.Generator().manual_seed(self.seed * 1000003 + key)
        return random_resized_crop_flip(images, scale=self.scale, flip=self.flip, generator=gen)
