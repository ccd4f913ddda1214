"""kalib.augment: batched random resized crop + flip (the paper presets' training augmentation)."""

import math

import pytest
import torch

from kalib.augment import random_resized_crop_flip, sample_boxes


def gradient(b=3, h=20, w=30):
    """Images whose value is linear in x and y (bilinear sampling reproduces them exactly): channel c of
    image i is 2x + 3y + 10c + 40i (below 255 for these sizes)."""
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    return torch.stack([torch.stack([2 * x + 3 * y + 10 * c + 40 * i for c in range(3)]) for i in range(b)])


def test_boxes_follow_torchvision_rule():
    boxes = sample_boxes(4000, 60, 80, scale=(0.2, 0.9), ratio=(0.5, 2.0), generator=torch.Generator().manual_seed(0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 60).all()
    assert torch.equal(boxes, boxes.round()) and (w > 0).all() and (h > 0).all()
    area = w * h / (60 * 80)
    assert area.min() > 0.2 - 0.03 and area.max() < 0.9 + 0.03        # rounding of w and h aside
    assert (w / h).min() > 0.5 * 0.9 and (w / h).max() < 2.0 * 1.1
    assert 0.2 < area.mean() < 0.9
    # impossible requests fall back to the largest centred crop with an allowed aspect ratio
    fallback = sample_boxes(5, 10, 40, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert fallback.tolist() == [[15.0, 0.0, 25.0, 10.0]] * 5


def test_identity_crop_and_flip():
    img = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    out = random_resized_crop_flip(img, scale=(1, 1), ratio=(1, 1), flip=0.0)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 16, 16)
    assert torch.allclose(out, img.float() / 255, atol=1e-6)
    flipped = random_resized_crop_flip(img, scale=(1, 1), ratio=(1, 1), flip=1.0)
    assert torch.allclose(flipped, img.float().flip(-1) / 255, atol=1e-6)


def test_crop_geometry_on_linear_images():
    """Output pixel (u, v) of a crop (x1, y1, x2, y2) to S px samples the input at
    x = x1 + (u + 0.5) (x2 - x1) / S - 0.5 (same for y); a linear image makes that exact away from the
    border (each output cell averages a few samples; those that fall outside the image are clamped)."""
    img = gradient().to(torch.uint8)
    gen = torch.Generator().manual_seed(3)
    out, boxes, flips = random_resized_crop_flip(img, size=12, scale=(0.3, 0.8), flip=0.5, generator=gen,
                                                 return_boxes=True)
    assert out.shape == (3, 3, 12, 12)
    u = torch.arange(12, dtype=torch.float32)
    for i in range(3):
        x1, y1, x2, y2 = boxes[i].tolist()
        xs = x1 + (u + 0.5) * (x2 - x1) / 12 - 0.5
        ys = y1 + (u + 0.5) * (y2 - y1) / 12 - 0.5
        if flips[i]:
            xs = xs.flip(0)
        expect = torch.stack([2 * xs[None, :] + 3 * ys[:, None] + 10 * c + 40 * i for c in range(3)]) / 255
        assert torch.allclose(out[i, :, 1:-1, 1:-1], expect[:, 1:-1, 1:-1], atol=1e-4), (i, boxes[i])
        assert torch.allclose(out[i], expect, atol=2 / 255), (i, boxes[i])


def test_seeded_and_per_image():
    img = torch.randint(0, 256, (8, 3, 24, 24), dtype=torch.uint8)
    a = random_resized_crop_flip(img, 16, generator=torch.Generator().manual_seed(5))
    b = random_resized_crop_flip(img, 16, generator=torch.Generator().manual_seed(5))
    c = random_resized_crop_flip(img, 16, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    _, boxes, flips = random_resized_crop_flip(img, 16, generator=torch.Generator().manual_seed(5), return_boxes=True)
    assert len(set(map(tuple, boxes.tolist()))) > 1 and 0 < flips.sum() < 8   # each image its own crop
    with pytest.raises(ValueError, match="batch"):
        random_resized_crop_flip(img[0])


def test_default_scale_and_ratio_are_torchvision_s():
    boxes = sample_boxes(2000, 224, 224, generator=torch.Generator().manual_seed(1))
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / 224 ** 2
    ratio = (boxes[:, 2] - boxes[:, 0]) / (boxes[:, 3] - boxes[:, 1])
    assert area.min() >= 0.07 and area.max() <= 1.0
    assert ratio.min() > 3 / 4 * 0.95 and ratio.max() < 4 / 3 * 1.05
    assert math.isclose(float(ratio.log().mean()), 0.0, abs_tol=0.05)
