"""kalib.augment: batched random resized crop + flip (the paper presets' training augmentation)."""

import dataclasses
import math

import numpy as np
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


# ------------------------------------------------------------------------- augmentation in training

def test_batch_augment_is_seeded_by_the_batch_indices():
    from kalib.augment import BatchAugment
    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8)
    aug = BatchAugment(seed=3)
    a = aug(images, torch.tensor([5, 1, 7, 2]))
    assert a.shape == (4, 3, 16, 16) and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, BatchAugment(seed=3)(images, torch.tensor([5, 1, 7, 2])))   # a resumed epoch: same crops
    assert not torch.equal(a, aug(images, torch.tensor([0, 1, 7, 2])))
    assert not torch.equal(a, BatchAugment(seed=4)(images, torch.tensor([5, 1, 7, 2])))


def test_augmented_block_training_feeds_one_image_to_student_and_teachers():
    """With an augmentation that changes nothing (uint8 -> [0, 1] floats), the per-batch path that
    recomputes the student prefix and the teachers' targets on the augmented batch gives exactly the
    losses and weights of the cached path: the same image reaches both. A real augmentation is applied
    once per training batch and changes the result."""
    from test_amalgamate import TINY, pool, tiny_nets

    from kalib.augment import BatchAugment
    from kalib.method.blockwise import amalgamate
    from kalib.method.filters import task_plan
    from kalib.method.finetune import finetune
    from kalib.method.student import init_student
    from kalib.method.targetnet import assemble

    calls = []

    def identity(x, idx):
        calls.append(len(idx))
        return x.float() / 255.0

    results = {}
    for name, augment in (("cached", None), ("identity", identity), ("crops", BatchAugment(0))):
        generic, teachers = tiny_nets()
        plan = task_plan(None, [["a", "b", "c"], ["d", "e"]])
        torch.manual_seed(0)
        r = amalgamate(init_student("generic", teachers, generic), teachers, plan, pool(), TINY,
                       images_per_block=24, heldout=8, augment=augment)
        target = assemble(r.student, r.filters, teachers, plan, [2] * 5)
        history = finetune(target, pool()[:24], None, TINY, augment=augment, teachers=teachers, plan=plan) \
            if augment is not None else None
        results[name] = (r.losses.copy(), {k: v.clone() for k, v in r.student.state_dict().items()}, history)
    assert sum(calls) == 24 * r.student.num_blocks + 24        # every training image of every block, then fine-tuning
    np.testing.assert_allclose(results["identity"][0], results["cached"][0], rtol=1e-5, atol=1e-6)
    for k, v in results["cached"][1].items():
        assert torch.allclose(v.float(), results["identity"][1][k].float(), atol=1e-5), k
    assert not np.allclose(results["crops"][0], results["cached"][0])
    assert results["crops"][2] and np.isfinite(results["crops"][2]).all()


def test_pretrain_with_augment_records_it_in_the_config(tmp_path, smoke_bench):
    from kalib.runs.checkpoints import read_meta
    from kalib.runs.presets import get_preset
    from kalib.runs.teachers import pretrain
    p = get_preset("smoke")
    one = dataclasses.replace(p.pretraining.teacher, epochs=1)
    small = dataclasses.replace(smoke_bench, train_images=smoke_bench.train_images[:64],
                                train_labels=smoke_bench.train_labels[:64])
    plain = pretrain(small, p.labels.groups[:1], p.nets.arch, p.nets.arch_kwargs, one, one, tmp_path / "a", log=lambda m: None)
    aug = pretrain(small, p.labels.groups[:1], p.nets.arch, p.nets.arch_kwargs, one, one, tmp_path / "b", log=lambda m: None,
                   augment=True)
    assert read_meta(plain[0])["config_hash"] != read_meta(aug[0])["config_hash"]
    assert read_meta(plain[0])["test_ap"] != read_meta(aug[0])["test_ap"]
