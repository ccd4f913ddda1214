"""kalib.data.COCOMultiLabel on tiny COCO JSON files written by the test (no real data)."""

import json

import pytest
import torch
from fake_trees import write_coco

from kalib.data import COCO_CATEGORIES, COCO_CLASSES, COCOMultiLabel
from kalib.errors import DataRootError, MissingSourceError

pytest.importorskip("pycocotools")


def col(cid):
    return [c for c, _ in COCO_CATEGORIES].index(cid)


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    # image 30 has no annotation; 90 (toothbrush) is the last column, 13 (stop sign) the 12th (id 12 unused)
    ann = [(10, 1), (10, 1), (10, 90), (20, 13), (20, 18), (40, 67)]
    write_coco(root, "val2014", [40, 10, 30, 20], ann)
    return root


def test_official_category_list_has_80_non_contiguous_ids():
    ids = [c for c, _ in COCO_CATEGORIES]
    assert len(ids) == 80 == len(set(ids)) and ids == sorted(ids)
    assert ids[0] == 1 and ids[-1] == 90 and 12 not in ids
    try:    # torchvision's own table (index = category id, 'N/A' for unused ids), where available
        from torchvision.models._meta import _COCO_CATEGORIES
    except ImportError:
        return
    theirs = [(i, n) for i, n in enumerate(_COCO_CATEGORIES) if n not in ("__background__", "N/A")]
    assert theirs == list(COCO_CATEGORIES)


def test_ids_map_to_columns_in_id_order_and_unannotated_images_stay(coco_root):
    ds = COCOMultiLabel(coco_root / "val2014", coco_root / "annotations" / "instances_val2014.json")
    assert ds.label_names == COCO_CLASSES and len(ds.label_names) == 80
    assert ds.category_ids == tuple(c for c, _ in COCO_CATEGORIES)
    assert ds.ids == (10, 20, 30, 40) and len(ds) == 4
    assert ds.targets.shape == (4, 80) and set(ds.targets.unique().tolist()) <= {0.0, 1.0}
    assert ds.targets[0].nonzero().flatten().tolist() == [0, 79]          # person (id 1), toothbrush (id 90)
    assert ds.targets[1].nonzero().flatten().tolist() == [col(13), col(18)] == [11, 16]   # stop sign, dog
    assert ds.targets[2].sum() == 0                                        # image 30: no annotation, kept
    assert ds.targets[3].nonzero().flatten().tolist() == [col(67)] == [60]  # dining table
    assert COCO_CLASSES[11] == "stop sign" and COCO_CLASSES[60] == "dining table"
    image, target = ds[2]
    assert image.mode == "RGB" and image.size == (48, 40) and torch.equal(target, torch.zeros(80))
    sized = COCOMultiLabel(coco_root / "val2014", coco_root / "annotations" / "instances_val2014.json",
                           transform=lambda im: im.size)
    assert sized[0][0] == (48, 40)


def test_a_file_with_other_categories_keeps_its_own_id_order(tmp_path):
    ann = write_coco(tmp_path, "train2014", [1, 2], [(1, 7), (2, 3), (2, 50)],
                     categories=[(50, "zebra-ish"), (3, "car"), (7, "train")])
    ds = COCOMultiLabel(tmp_path / "train2014", ann)
    assert ds.category_ids == (3, 7, 50) and ds.label_names == ("car", "train", "zebra-ish")
    assert ds.targets.tolist() == [[0, 1, 0], [1, 0, 1]]


def test_missing_files_name_the_path_and_the_layout(tmp_path, coco_root):
    with pytest.raises(DataRootError, match="instances_train2014.json not found") as err:
        COCOMultiLabel(coco_root / "train2014", coco_root / "annotations" / "instances_train2014.json")
    assert "annotations/instances_val2014.json" in str(err.value)       # the expected layout
    assert isinstance(err.value, MissingSourceError)
    with pytest.raises(DataRootError, match="image folder .*nowhere not found"):
        COCOMultiLabel(tmp_path / "nowhere", coco_root / "annotations" / "instances_val2014.json")
    (tmp_path / "bad.json").write_text(json.dumps({"images": []}))
    with pytest.raises(DataRootError, match="bad.json"):
        COCOMultiLabel(coco_root / "val2014", tmp_path / "bad.json")
    (coco_root / "val2014" / "COCO_val2014_000000000030.jpg").rename(tmp_path / "moved.jpg")
    try:
        ds = COCOMultiLabel(coco_root / "val2014", coco_root / "annotations" / "instances_val2014.json")
        with pytest.raises(DataRootError, match="COCO_val2014_000000000030.jpg .*missing"):
            ds[2]
    finally:
        (tmp_path / "moved.jpg").rename(coco_root / "val2014" / "COCO_val2014_000000000030.jpg")


def test_annotations_must_refer_to_known_images_and_categories(tmp_path):
    ann = write_coco(tmp_path, "val2014", [1], [(1, 12)])        # id 12 is not a COCO category
    with pytest.raises(DataRootError, match="category id 12"):
        COCOMultiLabel(tmp_path / "val2014", ann)
