"""A small generated example of teachers a user brings (notebook 07 and its tests): coloured shapes, folders of
PNG files, and torchvision teachers trained on them in seconds.

Each image shows one or two shapes (circle, square, triangle), each red, green or blue, on a noisy grey
background. One teacher learns the colours, another the shapes: two multi-label classifiers of one
torchvision architecture, fine-tuned from one shared start, as a practitioner's teachers would be from
ImageNet weights. :func:`train_torchvision_teacher` trains the plain torchvision model the way a user would,
on inputs normalised with ImageNet's mean and std, and the teacher is then saved with
``torch.save(model.state_dict(), PATH)``: exactly what ``kalib amalgamate --teacher`` reads.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image, ImageDraw
from torch import nn

from .models.blocknet import InputNorm
from .models.torchvision_teachers import IMAGENET_MEAN, IMAGENET_STD
from .train import Schedule, fit

TEACHER_SCHEDULE = Schedule(epochs=4, lr=0.05, batch_size=32, weight_decay=5e-4)    # from a random start
FINETUNE_SCHEDULE = Schedule(epochs=3, lr=0.02, batch_size=32, weight_decay=5e-4)   # from the shared start
START_SCHEDULE = Schedule(epochs=3, lr=0.05, batch_size=32, weight_decay=5e-4)
COLOURS = {"red": (215, 45, 40), "green": (40, 165, 60), "blue": (45, 75, 215)}
SHAPES = ("circle", "square", "triangle")


def _draw(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour) -> None:
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)


def coloured_shapes(n: int, size: int = 32, seed: int = 0,
                    objects: tuple[int, int] = (1, 2)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` generated images, uint8 ``(n, 3, size, size)``, with their multi-hot colour targets ``(n, 3)``
    (:data:`COLOURS` order) and shape targets ``(n, 3)`` (:data:`SHAPES` order)."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    colours, shapes = np.zeros((n, len(COLOURS)), np.float32), np.zeros((n, len(SHAPES)), np.float32)
    for i in range(n):
        grey = rng.integers(90, 170)
        noise = rng.integers(-18, 19, (size, size, 1))
        im = Image.fromarray(np.clip(grey + noise, 0, 255).repeat(3, axis=2).astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(rng.integers(objects[0], objects[1] + 1)):
            side = int(rng.integers(size * 2 // 5, size * 3 // 5 + 1))
            x, y = (int(v) for v in rng.integers(0, size - side, 2))
            c, s = int(rng.integers(len(COLOURS))), int(rng.integers(len(SHAPES)))
            _draw(draw, SHAPES[s], (x, y, x + side - 1, y + side - 1), list(COLOURS.values())[c])
            colours[i, c], shapes[i, s] = 1, 1
        images[i] = np.asarray(im).transpose(2, 0, 1)
    return torch.from_numpy(images), torch.from_numpy(colours), torch.from_numpy(shapes)


def write_images(folder: str | Path, images: torch.Tensor, prefix: str = "img") -> list[str]:
    """``images`` (uint8 ``(N, 3, H, W)``) as PNG files ``folder/PREFIX_00000.png``…; their names."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, image in enumerate(images):
        names.append(f"{prefix}_{i:05d}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / names[-1])
    return names


def write_labels(path: str | Path, names: Sequence[str]) -> Path:
    """A teacher's labels file: one name a line, in head order."""
    Path(path).write_text("".join(f"{n}\n" for n in names))
    return Path(path)


def write_label_csv(path: str | Path, files: Sequence[str], names: Sequence[str], targets) -> Path:
    """The ``--eval-labels`` CSV of an evaluation folder: header ``file,<label>,…``, one 0/1 row per file."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", *names])
        for file, row in zip(files, np.asarray(targets)):
            writer.writerow([file, *(int(v) for v in row)])
    return Path(path)


def shared_start(arch: str = "resnet18", seed: int = 0) -> dict:
    """A torchvision ``arch``'s weights from ``seed``: the one start both teachers are fine-tuned from (what
    ImageNet weights are to a practitioner's teachers)."""
    torch.manual_seed(seed)
    return getattr(torchvision.models, arch)(weights=None).state_dict()


def train_torchvision_teacher(arch: str, images: torch.Tensor, targets: torch.Tensor, *, start: dict | None = None,
                              schedule: Schedule = TEACHER_SCHEDULE,
                              softmax: bool = False, mean=IMAGENET_MEAN, std=IMAGENET_STD, seed: int = 0,
                              device=None) -> nn.Module:
    """A plain torchvision ``arch`` with ``targets.shape[1]`` outputs, its blocks from ``start`` (its classifier
    left fresh), trained on uint8 ``images`` normalised with ``mean``/``std`` (binary cross-entropy, or
    cross-entropy of the class ``targets.argmax(1)`` where ``softmax``). Returned in eval mode, on the CPU."""
    torch.manual_seed(seed)
    model = getattr(torchvision.models, arch)(weights=None, num_classes=targets.shape[1])
    if start is not None:
        model.load_state_dict({k: v for k, v in start.items() if not k.startswith(("fc.", "classifier."))},
                              strict=False)
    net = nn.Sequential(InputNorm(mean, std), model)     # kalib's input -> (x/255 - mean) / std

    def loss(logits, t):
        return F.cross_entropy(logits, t.argmax(1)) if softmax else F.binary_cross_entropy_with_logits(logits, t)
    fit(net, images, targets, loss, schedule, seed, desc=f"{arch} teacher", device=device)
    return model.cpu().eval()


def pretrained_start(arch: str = "resnet18", size: int = 32, images: int = 300, seed: int = 0,
                     schedule: Schedule = START_SCHEDULE) -> dict:
    """The shared start of the example's teachers, what ImageNet weights are to a practitioner's: a torchvision
    ``arch`` from ``seed`` trained briefly on other generated images to tell all six labels (teachers fine-tuned
    from a random start drift too far apart for Eq. 4's filters; kalib warns about such teachers)."""
    x, colours, shapes = coloured_shapes(images, size, seed=seed + 1000)
    net = train_torchvision_teacher(arch, x, torch.cat([colours, shapes], 1), start=shared_start(arch, seed),
                                    schedule=schedule, seed=seed)
    return {k: v for k, v in net.state_dict().items() if not k.startswith(("fc.", "classifier."))}


def write_example(folder: str | Path, size: int = 32, train: int = 300, pool: int = 240, test: int = 160,
                  seed: int = 0, schedule: Schedule = FINETUNE_SCHEDULE,
                  broken: bool = True, start_images: int = 300) -> dict[str, Path]:
    """The whole example in ``folder``: two resnet18 teachers (colours, shapes) fine-tuned from one
    :func:`pretrained_start` (``colours.pt``/``colours.txt``, ``shapes.pt``/``shapes.txt``; the start itself as
    ``start.pt``), a ``pool`` folder of
    unlabelled PNGs (with one broken file where ``broken``), a labelled ``test`` folder and its ``test.csv``.
    Returns those paths by name."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    start = pretrained_start("resnet18", size, start_images, seed=seed)
    torch.save(start, folder / "start.pt")        # θ₀ (no classifier), for `kalib merge --start`
    x, colours, shapes = coloured_shapes(train, size, seed=seed + 1)
    out = {"start": folder / "start.pt"}
    for n, (name, targets, labels) in enumerate((("colours", colours, COLOURS), ("shapes", shapes, SHAPES))):
        model = train_torchvision_teacher("resnet18", x, targets, start=start, schedule=schedule, seed=seed + n)
        torch.save(model.state_dict(), folder / f"{name}.pt")
        out[name], out[f"{name}_labels"] = folder / f"{name}.pt", write_labels(folder / f"{name}.txt", list(labels))
    write_images(folder / "pool", coloured_shapes(pool, size, seed=seed + 2)[0])
    if broken:
        (folder / "pool" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    xt, ct, st = coloured_shapes(test, size, seed=seed + 3)
    files = write_images(folder / "test", xt)
    out["pool"], out["test"] = folder / "pool", folder / "test"
    out["test_labels"] = write_label_csv(folder / "test.csv", files, [*COLOURS, *SHAPES], torch.cat([ct, st], 1))
    return out
