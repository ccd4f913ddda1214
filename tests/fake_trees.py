"""Tiny PASCAL VOC and MS-COCO trees written by the tests themselves (no real data needed): a few
generated JPEGs, VOC annotation XML with ``difficult`` flags, ImageSets/Main split files, COCO instance
JSON files with non-contiguous category ids and an image without annotations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from kalib.data import COCO_CATEGORIES, VOC_CLASSES


def write_jpeg(path: Path, seed: int, size=(48, 40)) -> None:
    """A noisy colour image with two rectangles (JPEG, ``size`` = (width, height))."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = rng.integers(0, 80, size=(h, w, 3), dtype=np.uint8)
    for _ in range(2):
        x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
        img[y0:y0 + h // 3, x0:x0 + w // 3] = rng.integers(120, 255, size=3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, quality=90)


def voc_xml(image_id: str, objects, size=(48, 40)) -> str:
    """Annotation XML in the VOC format; ``objects`` are ``(class name, difficult)``."""
    objs = "".join(
        f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>"
        f"<difficult>{int(difficult)}</difficult><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax>"
        f"<ymax>10</ymax></bndbox></object>" for name, difficult in objects)
    return (f"<annotation><folder>VOC</folder><filename>{image_id}.jpg</filename><size><width>{size[0]}</width>"
            f"<height>{size[1]}</height><depth>3</depth></size><segmented>0</segmented>{objs}</annotation>")


def write_voc(root: Path, year: str, splits: dict[str, dict[str, list]], size=(48, 40)) -> Path:
    """``root/VOCdevkit/VOC{year}`` with ``splits``: split name -> {image id: [(class, difficult), ...]}."""
    d = root / "VOCdevkit" / f"VOC{year}"
    (d / "Annotations").mkdir(parents=True, exist_ok=True)
    (d / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for split, images in splits.items():
        for image_id, objects in images.items():
            write_jpeg(d / "JPEGImages" / f"{image_id}.jpg", seed=int(image_id), size=size)
            (d / "Annotations" / f"{image_id}.xml").write_text(voc_xml(image_id, objects, size))
        (d / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
    return d


def cycling_voc_split(first_id: int, n: int, per_image: int = 3, difficult_every: int = 5) -> dict:
    """``n`` images whose objects cycle through the 20 classes (every class appears once ``n * per_image``
    >= 20); every ``difficult_every``-th object is difficult."""
    out, k = {}, 0
    for i in range(n):
        objects = []
        for _ in range(per_image):
            objects.append((VOC_CLASSES[k % 20], k % difficult_every == difficult_every - 1))
            k += 1
        out[f"{first_id + i:06d}"] = objects
    return out


def coco_json(images: list[tuple[int, str]], annotations: list[tuple[int, int]],
              categories=COCO_CATEGORIES) -> dict:
    """An instances_*.json: ``images`` (id, file name), ``annotations`` (image id, category id)."""
    return {
        "info": {"description": "kalib test"}, "licenses": [],
        "images": [{"id": i, "file_name": f, "width": 48, "height": 40} for i, f in images],
        "annotations": [{"id": n + 1, "image_id": i, "category_id": c, "bbox": [1.0, 1.0, 8.0, 8.0],
                         "area": 64.0, "iscrowd": 0} for n, (i, c) in enumerate(annotations)],
        "categories": [{"id": cid, "name": name, "supercategory": "thing"} for cid, name in categories],
    }


def write_coco(root: Path, split: str, image_ids: list[int], annotations: list[tuple[int, int]],
               categories=COCO_CATEGORIES) -> Path:
    """``root/{split}/*.jpg`` and ``root/annotations/instances_{split}.json``; returns the JSON path."""
    images = []
    for image_id in image_ids:
        name = f"COCO_{split}_{image_id:012d}.jpg"
        write_jpeg(root / split / name, seed=image_id)
        images.append((image_id, name))
    ann = root / "annotations" / f"instances_{split}.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps(coco_json(images, annotations, categories)))
    return ann


def cycling_coco_annotations(image_ids: list[int], per_image: int, first: int = 0) -> list[tuple[int, int]]:
    """Annotations whose categories cycle through all 80 (each image gets ``per_image``)."""
    out, k = [], first
    for i in image_ids:
        for _ in range(per_image):
            out.append((i, COCO_CATEGORIES[k % 80][0]))
            k += 1
    return out
