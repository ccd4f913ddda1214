"""PASCAL VOC 2007 / 2012 as a multi-label classification dataset (paper §4.1, docs/design.md §2).

The standard devkit tree, as torchvision's ``VOCDetection`` expects it (nothing is downloaded)::

    ROOT/VOCdevkit/VOC2007/JPEGImages/000005.jpg
                          /Annotations/000005.xml
                          /ImageSets/Main/trainval.txt   (and train.txt, val.txt, test.txt)

``ROOT`` may also be the ``VOCdevkit`` folder or the ``VOC2007`` folder itself.

Targets follow the VOC classification protocol: for each of the 20 classes (in :data:`VOC_CLASSES`
order) 1 if the image holds a non-difficult object of the class, -1 if it holds only ``difficult``
objects of it (ignored by :mod:`kalib.metrics`), 0 otherwise — the devkit's ImageSets/Main/*_CLS.txt
files encode the same information as 1 / 0 / -1.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import torch
from PIL import Image

from ..errors import ConfigError, DataRootError

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor")
VOC_YEARS = ("2007", "2012")
VOC_LAYOUT = ("ROOT/VOCdevkit/VOC{year}/JPEGImages/*.jpg, ROOT/VOCdevkit/VOC{year}/Annotations/*.xml and "
              "ROOT/VOCdevkit/VOC{year}/ImageSets/Main/{image_set}.txt (the layout of the official VOC tar "
              "files; the VOC2007 test images come in the separate VOCtest_06-Nov-2007.tar)")


def find_voc_dir(root: str | Path, year: str) -> Path:
    """The ``VOC{year}`` folder under ``root`` (``root/VOCdevkit/VOC{year}``, ``root/VOC{year}`` or
    ``root`` itself); :class:`DataRootError` naming every place looked at otherwise."""
    root = Path(root).expanduser()
    candidates = [root / "VOCdevkit" / f"VOC{year}", root / f"VOC{year}", root]
    for d in candidates:
        if (d / "Annotations").is_dir() and (d / "ImageSets" / "Main").is_dir():
            return d
    raise DataRootError(f"no PASCAL VOC {year} tree under {root} (looked for Annotations/ and "
                        f"ImageSets/Main/ in {', '.join(str(c) for c in candidates)}); expected "
                        + VOC_LAYOUT.format(year=year, image_set="trainval"))


def parse_annotation(path: str | Path) -> list[tuple[str, bool]]:
    """``(class name, difficult)`` of every object in one VOC annotation XML file."""
    try:
        tree = ET.parse(path)
    except (OSError, ET.ParseError) as err:
        raise DataRootError(f"cannot read VOC annotation {path}: {err}") from None
    out = []
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        difficult = (obj.findtext("difficult") or "0").strip()
        out.append((name, difficult not in ("0", "")))
    return out


def voc_target(objects: list[tuple[str, bool]], path: str | Path = "") -> torch.Tensor:
    """The 20-entry VOC classification target of one image: 1 positive, -1 difficult only, 0 negative."""
    target = torch.zeros(len(VOC_CLASSES))
    for name, difficult in objects:
        if name not in VOC_CLASSES:
            raise DataRootError(f"{path}: unknown VOC class '{name}'; valid: {', '.join(VOC_CLASSES)}")
        c = VOC_CLASSES.index(name)
        if not difficult:
            target[c] = 1.0
        elif target[c] == 0:
            target[c] = -1.0
    return target


class VOCMultiLabel(torch.utils.data.Dataset):
    """PASCAL VOC ``year`` ("2007" or "2012"), split ``image_set`` ("train", "val", "trainval", "test"),
    as ``(image, target)`` pairs: a PIL RGB image (or ``transform(image)``) and a float tensor of 20
    entries in :data:`VOC_CLASSES` order (1 / 0 / -1, see the module docstring).

    All annotations are parsed once at construction: ``targets`` is the ``(N, 20)`` tensor, ``ids`` the
    image ids, ``label_names`` the class names.
    """

    label_names = VOC_CLASSES

    def __init__(self, root: str | Path, year: str = "2007", image_set: str = "trainval", transform=None):
        year = str(year)
        if year not in VOC_YEARS:
            raise ConfigError(f"unknown VOC year {year!r}; valid: {', '.join(VOC_YEARS)}")
        self.year, self.image_set, self.transform = year, image_set, transform
        self.dir = find_voc_dir(root, year)
        split_file = self.dir / "ImageSets" / "Main" / f"{image_set}.txt"
        if not split_file.is_file():
            raise DataRootError(f"VOC {year} split file {split_file} is missing; expected "
                                + VOC_LAYOUT.format(year=year, image_set=image_set))
        self.split_file = split_file
        self.ids = tuple(line.split()[0] for line in split_file.read_text().splitlines() if line.strip())
        targets = []
        for image_id in self.ids:
            xml = self.dir / "Annotations" / f"{image_id}.xml"
            if not xml.is_file():
                raise DataRootError(f"VOC annotation {xml} (listed in {split_file}) is missing; expected "
                                    + VOC_LAYOUT.format(year=year, image_set=image_set))
            targets.append(voc_target(parse_annotation(xml), xml))
        self.targets = torch.stack(targets) if targets else torch.zeros(0, len(VOC_CLASSES))

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, i: int) -> Path:
        return self.dir / "JPEGImages" / f"{self.ids[i]}.jpg"

    def __getitem__(self, i: int):
        path = self.image_path(i)
        if not path.is_file():
            raise DataRootError(f"VOC image {path} is missing; expected "
                                + VOC_LAYOUT.format(year=self.year, image_set=self.image_set))
        image = Image.open(path).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[i].clone()
