"""What each block of Alg. 1 trains on: the split of the unlabeled pool into a training part and the
held-out slice that measures the converged losses L_i^k (Eq. 9's input), the seeded per-block subsets, the
epochs of each block, and the frozen student prefix F_u^{k-1}, computed once per block and kept on the CPU."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..device import as_device, autocast
from ..errors import ConfigError
from ..models.blocknet import BlockNet
from ..train import batches, to_input
from .student import CL


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


def block_inputs(feats: torch.Tensor | None, images: torch.Tensor, idx: torch.Tensor,
                 device: torch.device = torch.device("cpu")) -> torch.Tensor:
    """Block k's input rows ``idx``: the cached F_u^{k-1} on ``device``, or the images themselves for k = 1."""
    if feats is None:
        return to_input(images[idx].to(device, non_blocking=True))
    return feats[idx].to(device, non_blocking=True).float().contiguous(memory_format=CL)
