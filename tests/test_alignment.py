"""Teacher alignment (kalib.report.alignment): per-block channel correlation against a hand computation."""

import copy

import numpy as np
import pytest
import torch

from kalib.models import build_backbone
from kalib.report.alignment import block_correlation, teacher_alignment
from kalib.train import to_input


def _nets(seed_a=0, seed_b=1):
    torch.manual_seed(seed_a)
    a = build_backbone("resnet18_narrow", 4, width=8).eval()
    torch.manual_seed(seed_b)
    b = build_backbone("resnet18_narrow", 4, width=8).eval()
    return a, b


def _images(n=6, seed=0):
    return torch.randint(0, 256, (n, 3, 32, 32), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def test_a_network_is_perfectly_aligned_with_its_copy():
    a, _ = _nets()
    corr = block_correlation(a, copy.deepcopy(a), _images())
    assert list(corr) == a.block_names
    assert all(abs(v - 1) < 1e-9 for v in corr.values())


def test_correlation_matches_numpy_per_channel_pearson_averaged_over_channels():
    a, b = _nets()
    images = _images(5)
    corr = block_correlation(a, b, images, batch_size=2)            # batched sums must equal one pass
    with torch.no_grad():
        for k, name in enumerate(a.block_names, start=1):
            fa = a.prefix(to_input(images), k).transpose(0, 1).flatten(1).double().numpy()
            fb = b.prefix(to_input(images), k).transpose(0, 1).flatten(1).double().numpy()
            per_channel = [np.corrcoef(x, y)[0, 1] for x, y in zip(fa, fb) if x.std() > 0 and y.std() > 0]
            assert corr[name] == pytest.approx(np.mean(per_channel), abs=1e-6), name


def test_teacher_alignment_names_every_pair_and_the_start():
    a, b = _nets()
    start, _ = _nets(2, 3)
    table = teacher_alignment({"teacher 1": a, "teacher 2": b}, start, _images())
    assert set(table) == {"teacher 1 vs teacher 2", "teacher 1 vs start", "teacher 2 vs start"}


def test_networks_of_other_architectures_are_refused():
    a, _ = _nets()
    other = build_backbone("resnet18_narrow", 4, width=16)
    with pytest.raises(ValueError, match="one architecture"):
        block_correlation(a, other, _images())
