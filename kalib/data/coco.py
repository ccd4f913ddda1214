"""MS-COCO as a multi-label classification dataset (paper §4.1, Table 3; docs/design.md §2).

The standard layout of the 2014 release (the paper trains on train2014 and evaluates on val2014, since the
test labels are not public)::

    ROOT/train2014/COCO_train2014_000000000009.jpg
    ROOT/val2014/COCO_val2014_000000000042.jpg
    ROOT/annotations/instances_train2014.json
    ROOT/annotations/instances_val2014.json

Targets: 80 entries, one per category of the annotation file, the category ids (1..90 with gaps) mapped
to 0..79 in increasing id order (:data:`COCO_CATEGORIES` for the official file). An entry is 1 when
the image has at least one instance annotation of the category (crowd annotations included), 0
otherwise; COCO has no "difficult" flag, so there is no -1. Images without any annotation are kept, with
an all-zero target. Needs ``pycocotools`` (``pip install pycocotools``, extra ``kalib[paper]``).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
from PIL import Image

from ..errors import DataRootError

# (category id, name) of the official instances_*2014/2017.json files, in id order
COCO_CATEGORIES: tuple[tuple[int, str], ...] = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"),
    (14, "parking meter"), (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"),
    (21, "cow"), (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"),
    (28, "umbrella"), (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"),
    (36, "snowboard"), (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"),
    (41, "skateboard"), (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"),
    (47, "cup"), (48, "fork"), (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"),
    (54, "sandwich"), (55, "orange"), (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"),
    (60, "donut"), (61, "cake"), (62, "chair"), (63, "couch"), (64, "potted plant"), (65, "bed"),
    (67, "dining table"), (70, "toilet"), (72, "tv"), (73, "laptop"), (74, "mouse"), (75, "remote"),
    (76, "keyboard"), (77, "cell phone"), (78, "microwave"), (79, "oven"), (80, "toaster"), (81, "sink"),
    (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"), (87, "scissors"), (88, "teddy bear"),
    (89, "hair drier"), (90, "toothbrush"))
COCO_CLASSES: tuple[str, ...] = tuple(name for _, name in COCO_CATEGORIES)
COCO_LAYOUT = ("ROOT/train2014/*.jpg, ROOT/val2014/*.jpg, ROOT/annotations/instances_train2014.json and "
               "ROOT/annotations/instances_val2014.json (the official 2014 zip files unpacked into ROOT)")


def _pycocotools():
    try:
        from pycocotools.coco import COCO
    except ImportError:
        raise DataRootError("the COCO loader needs pycocotools: pip install pycocotools "
                            "(or pip install -e '.[paper]')") from None
    return COCO


class COCOMultiLabel(torch.utils.data.Dataset):
    """MS-COCO images in ``root`` (e.g. ``ROOT/train2014``) with the instance annotations ``ann_file``, as
    ``(image, target)`` pairs: a PIL RGB image (or ``transform(image)``) and a float tensor with one
    entry per category (80 for the official files), see the module docstring.

    ``ids`` are the image ids (sorted), ``category_ids`` the COCO ids of the label columns,
    ``label_names`` their names, ``targets`` the ``(N, 80)`` tensor.
    """

    def __init__(self, root: str | Path, ann_file: str | Path, transform=None):
        self.root, self.ann_file, self.transform = Path(root).expanduser(), Path(ann_file).expanduser(), transform
        if not self.ann_file.is_file():
            raise DataRootError(f"COCO annotation file {self.ann_file} not found; expected " + COCO_LAYOUT)
        if not self.root.is_dir():
            raise DataRootError(f"COCO image folder {self.root} not found; expected " + COCO_LAYOUT)
        COCO = _pycocotools()
        try:
            with contextlib.redirect_stdout(io.StringIO()):       # pycocotools prints progress lines
                coco = COCO(str(self.ann_file))
            cats = sorted(coco.loadCats(coco.getCatIds()), key=lambda c: c["id"])
        except (ValueError, KeyError, TypeError) as err:
            raise DataRootError(f"{self.ann_file} is not a COCO instance annotation file "
                                f"({type(err).__name__}: {err})") from None
        if not cats:
            raise DataRootError(f"{self.ann_file} defines no categories; expected an instances_*.json file")
        self.category_ids = tuple(int(c["id"]) for c in cats)
        self.label_names = tuple(c["name"] for c in cats)
        column = {cid: j for j, cid in enumerate(self.category_ids)}
        self.ids = tuple(sorted(coco.getImgIds()))
        row = {image_id: i for i, image_id in enumerate(self.ids)}
        self.targets = torch.zeros(len(self.ids), len(cats))
        for ann in coco.dataset.get("annotations", []):
            if ann["category_id"] not in column:
                raise DataRootError(f"{self.ann_file}: annotation {ann.get('id')} has category id "
                                    f"{ann['category_id']}, which the file does not define")
            if ann["image_id"] not in row:
                raise DataRootError(f"{self.ann_file}: annotation {ann.get('id')} refers to image id "
                                    f"{ann['image_id']}, which the file does not list")
            self.targets[row[ann["image_id"]], column[ann["category_id"]]] = 1.0
        self.files = tuple(coco.imgs[i]["file_name"] for i in self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, i: int) -> Path:
        return self.root / self.files[i]

    def __getitem__(self, i: int):
        path = self.image_path(i)
        if not path.is_file():
            raise DataRootError(f"COCO image {path} (image id {self.ids[i]} of {self.ann_file.name}) is "
                                "missing; expected " + COCO_LAYOUT)
        image = Image.open(path).convert("RGB")
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[i].clone()
