"""What each block of Alg. 1 trains on: the split of the unlabeled pool into a training part and the
held-out slice that measures the converged losses L_i^k (Eq. 9's input), the seeded per-block subsets, the
epochs of each block, and the frozen student prefix F_u^{k-1}, computed once per block and kept on the CPU
(or, where that would take more than :data:`FEATURE_CACHE_BYTES`, recomputed batch by batch:
:class:`PrefixFeatures`).

The pool may be a tensor or anything that gives its rows batch by batch (``len(images)``, ``images[idx]``
and ``.to(device)`` of those rows, e.g. :class:`kalib.data.folder.ImageRows` over a memory-mapped folder):
nothing here holds the whole pool in memory.

Under torchrun (:mod:`kalib.distributed`) no process caches F_u^{k-1} of the images it trains on: its share of
every batch changes from batch to batch, so each process computes the prefix of its share when the batch
comes (:class:`PrefixFeatures`), the same work per epoch as one process caching the whole set once per
block when the block trains one epoch."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .. import distributed
from ..device import as_device, autocast
from ..errors import ConfigError
from ..models.blocknet import BlockNet
from ..train import batches, to_input
from .student import CL

FEATURE_CACHE_BYTES = 4 << 30     # F_u^{k-1} of more images than fit in 4 GiB is recomputed per batch instead


def split_pool(n: int, heldout: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the training part and of the held-out slice (the last ``heldout`` pool images)."""
    if not 0 <= heldout < n:
        raise ConfigError(f"held-out slice of {heldout} images needs a pool of more than {heldout}, got {n}")
    return torch.arange(n - heldout), torch.arange(n - heldout, n)


def block_subset(train_idx: torch.Tensor, k: int, images_per_block: int | None, seed: int) -> torch.Tensor:
    """The pool images block k trains on: a seeded random subset (the same on every rerun)."""
    if not images_per_block or images_per_block >= len(train_idx):
        return train_idx
    gen = torch.Generator().manual_seed(seed * 1009 + k)
    return train_idx[torch.randperm(len(train_idx), generator=gen)[:images_per_block]]


def epochs_per_block(profile: Sequence[int], num_blocks: int) -> list[int]:
    """Epochs of each of ``num_blocks`` blocks from a per-block ``profile`` (``Preset.block_epochs``). A
    profile of another length is read as a depth profile: block k takes the entry at the same relative
    depth, so (1, 1, 2, 2, 4, 4, 8, 8) for ResNet-18's 8 blocks gives (1, 2, 4, 8) to a 4-block DenseNet."""
    if not profile or any(e < 0 for e in profile):
        raise ConfigError(f"block_epochs must be non-negative epochs, one per block, got {list(profile)}")
    return [int(profile[-(-k * len(profile) // num_blocks) - 1]) for k in range(1, num_blocks + 1)]


@torch.no_grad()
def prefix_features(student: BlockNet, images: torch.Tensor, k: int, dtype: torch.dtype,
                    batch_size: int = 250, device=None, max_bytes: int | None = None):
    """F_u^k of the (frozen, eval-mode) student for ``images`` (kept on the CPU as ``dtype``); ``None``
    for k = 0 (use the images). Where all of them would take more than ``max_bytes`` (default
    :data:`FEATURE_CACHE_BYTES`), and under torchrun (module docstring), they are not kept but recomputed batch
    by batch (:class:`PrefixFeatures`, the same numbers)."""
    if k == 0:
        return None
    device = as_device(device)
    student.eval()
    if distributed.active():
        return PrefixFeatures(student, images, k, dtype, device)
    limit = FEATURE_CACHE_BYTES if max_bytes is None else max_bytes
    out = []
    for idx in batches(len(images), batch_size):
        with autocast(device):
            out.append(student.prefix(to_input(images[idx].to(device, non_blocking=True)), k).to(dtype).cpu())
        if len(out) == 1 and out[0][0].numel() * out[0].element_size() * len(images) > limit:
            return PrefixFeatures(student, images, k, dtype, device)
    return torch.cat(out)


class PrefixFeatures:
    """F_u^k of ``images`` computed when asked, batch by batch (``feats[idx]``: rows ``idx`` on ``device``,
    as ``dtype``), for a pool whose features would not fit in memory: what :func:`prefix_features` gives
    there. The student's blocks 1..k must stay frozen while it is in use (they are, during block k+1)."""

    def __init__(self, student: BlockNet, images, k: int, dtype: torch.dtype, device: torch.device):
        self.student, self.images, self.k, self.dtype, self.device = student, images, k, dtype, device

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx) -> torch.Tensor:
        device = self.device
        # the features of the cached path: the device's default autocast, whatever the caller's precision
        with torch.no_grad(), torch.autocast(device.type, enabled=False), autocast(device):
            return self.student.prefix(to_input(self.images[idx].to(device, non_blocking=True)), self.k).to(self.dtype)


def block_inputs(feats: torch.Tensor | None, images: torch.Tensor, idx: torch.Tensor,
                 device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """Block k's input rows ``idx``: the cached F_u^{k-1} on ``device``, or the images themselves for k = 1."""
    if feats is None:
        return to_input(images[idx].to(device, non_blocking=True))
    return feats[idx].to(device, non_blocking=True).float().contiguous(memory_format=CL)
