"""Teacher alignment, a diagnostic for the teacher-level filter (Eq. 4, docs/design.md §1).

Eq. 4's filter f_n^k only re-weights the channels of the student's block-k features, so one student
feature map can serve two teachers only as far as their block-k channels still mean the same thing.
Teachers fine-tuned from one shared start begin perfectly aligned and drift apart as they train, most in
their deep blocks. :func:`block_correlation` measures that drift: per block, the Pearson correlation
between channel c of one network and channel c of the other over all images and positions, averaged
over the channels (1 = the same features up to a per-channel affine map, 0 = unrelated).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..device import as_device
from ..models.blocknet import BlockNet
from ..train import batches, to_input


@torch.no_grad()
def block_correlation(a: BlockNet, b: BlockNet, images: torch.Tensor, batch_size: int = 256,
                      device=None) -> dict[str, float]:
    """``{block name: mean over channels of corr(a's channel c, b's channel c)}`` on ``images`` (uint8
    canvases), for two networks of one architecture (run on ``device``, default CPU). Channels that are
    constant in either network are left out of the mean."""
    if a.block_names != b.block_names or a.out_channels != b.out_channels:
        raise ValueError("block_correlation needs two networks of one architecture (same blocks and widths)")
    device = as_device(device)
    a.to(device).eval(), b.to(device).eval()
    sums = [torch.zeros(5, c, dtype=torch.float64) for c in a.out_channels]   # Σx, Σy, Σx², Σy², Σxy
    positions = [0] * a.num_blocks                                              # N·H·W per block
    for idx in batches(len(images), batch_size):
        ha = hb = to_input(images[idx].to(device))
        for k, (block_a, block_b) in enumerate(zip(a.blocks, b.blocks)):
            ha, hb = block_a(ha), block_b(hb)
            fa = ha.transpose(0, 1).flatten(1).double().cpu()        # (C, N·H·W)
            fb = hb.transpose(0, 1).flatten(1).double().cpu()
            sums[k] += torch.stack([fa.sum(1), fb.sum(1), (fa * fa).sum(1), (fb * fb).sum(1), (fa * fb).sum(1)])
            positions[k] += fa.shape[1]
    out = {}
    for name, (sx, sy, sxx, syy, sxy), n in zip(a.block_names, sums, positions):
        cov = sxy / n - (sx / n) * (sy / n)
        var_x, var_y = sxx / n - (sx / n) ** 2, syy / n - (sy / n) ** 2
        ok = (var_x > 1e-12) & (var_y > 1e-12)
        out[name] = float((cov[ok] / (var_x[ok] * var_y[ok]).sqrt()).mean()) if ok.any() else float("nan")
    return out


def teacher_alignment(teachers: Mapping[str, BlockNet], start: BlockNet | None, images: torch.Tensor,
                      batch_size: int = 256, device=None) -> dict[str, dict[str, float]]:
    """The alignment table of a teacher set: every pair of teachers, and each teacher against the shared
    start they were fine-tuned from (where given). Keys like ``"teacher 1 vs teacher 2"``."""
    names = list(teachers)
    out = {f"{x} vs {y}": block_correlation(teachers[x], teachers[y], images, batch_size, device)
           for i, x in enumerate(names) for y in names[i + 1:]}
    if start is not None:
        out.update({f"{x} vs start": block_correlation(teachers[x], start, images, batch_size, device) for x in names})
    return out
