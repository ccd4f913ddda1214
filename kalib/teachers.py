"""Teacher pretraining (paper §3.3, Eq. 2) and the shared generic "ImageNet" stage (design.md §1).

Every teacher — and later the student — starts from one generic backbone, pretrained as a 20-way
softmax classifier on single-glyph canvases. The shared start keeps the teachers' block-k features
aligned channel by channel, which is what lets the paper's channel filters (Eq. 4) work.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoints import load_model, read_meta, save_model
from .data import Benchmark, resolve_tasks
from .metrics import ap_voc07
from .models import BlockNet, build_backbone
from .train import Schedule, fit, predict


def teacher_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Eq. 2: l_n = 1/T_n Σ_i ℓ(a_n^i, a_n^{i*}), ℓ the binary cross-entropy of task i (also averaged
    over the batch)."""
    return F.binary_cross_entropy_with_logits(logits, targets)


def train_generic(bench: Benchmark, arch: str, arch_kwargs: dict, schedule: Schedule,
                  seed: int = 0) -> BlockNet:
    """The shared initialisation: a 20-way softmax classifier on single-glyph train canvases."""
    torch.manual_seed(seed)
    model = build_backbone(arch, num_classes=len(bench.label_names), **arch_kwargs)
    fit(model, bench.generic_images, bench.generic_labels, F.cross_entropy, schedule, seed,
        desc=f"generic {arch}")
    return model.eval()


def train_teacher(generic: BlockNet, bench: Benchmark, labels: Sequence[str], schedule: Schedule,
                  seed: int = 0) -> BlockNet:
    """Teacher A_n for the label group ``labels``: the generic backbone with a new head, trained with
    Eq. 2 on the labeled train split."""
    idx = resolve_tasks(labels, bench.label_names)
    torch.manual_seed(seed)
    model = generic.with_new_head(len(idx))
    fit(model, bench.train_images, bench.train_labels[:, idx], teacher_loss, schedule, seed,
        desc=f"teacher[{labels[0]}…]")
    return model.eval()


def evaluate(model: BlockNet, images: torch.Tensor, targets: torch.Tensor,
             names: Sequence[str]) -> dict[str, float]:
    """Per-label 11-point AP (percent, VOC2007) of ``model`` and their mean under key ``"mAP"``."""
    ap = ap_voc07(predict(model, images).numpy(), targets.numpy())
    out = {n: float(a) for n, a in zip(names, ap)}
    out["mAP"] = float(ap.mean())
    return out


def pretrain(bench: Benchmark, groups: Sequence[Sequence[str]], arch: str, arch_kwargs: dict,
             generic_schedule: Schedule, teacher_schedule: Schedule, out_dir: str | Path,
             seed: int = 0, log=print) -> list[Path]:
    """Train the generic backbone (once per architecture) and one teacher per label group into
    ``out_dir``; finished checkpoints found there are re-used, not retrained."""
    out_dir = Path(out_dir)
    generic_path = out_dir / f"generic-{arch}.pt"
    if generic_path.is_file():
        generic, _ = load_model(generic_path)
    else:
        t0 = time.perf_counter()
        generic = train_generic(bench, arch, arch_kwargs, generic_schedule, seed)
        save_model(generic_path, generic, role="generic", labels=list(bench.label_names),
                   data=bench.spec.key(), seconds=round(time.perf_counter() - t0, 1))
        log(f"generic {arch}: {time.perf_counter() - t0:.0f} s")
    paths = []
    for n, labels in enumerate(groups, start=1):
        path = out_dir / f"teacher{len(groups)}-{arch}-{n}.pt"
        if path.is_file() and read_meta(path).get("labels") != list(labels):
            raise FileExistsError(f"{path} is a teacher for other labels ({read_meta(path).get('labels')}); "
                                  "choose another --out directory or delete it")
        if not path.is_file():
            t0 = time.perf_counter()
            teacher = train_teacher(generic, bench, labels, teacher_schedule, seed + n)
            seconds = time.perf_counter() - t0
            idx = resolve_tasks(labels, bench.label_names)
            ap = evaluate(teacher, bench.test_images, bench.test_labels[:, idx], labels)
            save_model(path, teacher, role="teacher", labels=list(labels), data=bench.spec.key(),
                       test_ap=ap, seconds=round(seconds, 1))
            log(f"teacher {n}/{len(groups)} ({arch}, {', '.join(labels)}): test mAP {ap['mAP']:.1f} "
                f"in {seconds:.0f} s")
        paths.append(path)
    return paths
