"""kalib.data.VOCMultiLabel on a tiny VOC tree written by the test (no real data)."""

import numpy as np
import pytest
import torch
from fake_trees import write_voc

from kalib.data import VOC_CLASSES, VOCMultiLabel
from kalib.errors import DataRootError, MissingSourceError
from kalib.metrics import ap_voc07

IMAGES = {
    "000001": [("dog", True), ("person", False)],               # dog only as difficult -> -1
    "000002": [("dog", False), ("cat", True)],                  # cat -> -1
    "000003": [("bus", True), ("bus", False), ("chair", True)],  # bus: one non-difficult -> 1; chair -> -1
    "000004": [("dog", True), ("dog", False), ("diningtable", False)],
}


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("voc")
    write_voc(root, "2007", {"trainval": IMAGES, "test": {"000010": [("horse", False)]}})
    return root


def expected(positives=(), difficult=()):
    t = torch.zeros(20)
    for name in positives:
        t[VOC_CLASSES.index(name)] = 1
    for name in difficult:
        t[VOC_CLASSES.index(name)] = -1
    return t


def test_targets_are_1_0_minus1_in_voc_class_order(voc_root):
    ds = VOCMultiLabel(voc_root, "2007", "trainval")
    assert ds.label_names == VOC_CLASSES and len(VOC_CLASSES) == 20
    assert VOC_CLASSES[:3] == ("aeroplane", "bicycle", "bird") and VOC_CLASSES[-1] == "tvmonitor"
    assert ds.ids == ("000001", "000002", "000003", "000004") and len(ds) == 4
    assert torch.equal(ds.targets[0], expected(["person"], difficult=["dog"]))
    assert torch.equal(ds.targets[1], expected(["dog"], difficult=["cat"]))
    assert torch.equal(ds.targets[2], expected(["bus"], difficult=["chair"]))
    assert torch.equal(ds.targets[3], expected(["dog", "diningtable"]))


def test_getitem_gives_the_image_and_a_float_target(voc_root):
    ds = VOCMultiLabel(voc_root, "2007", "trainval")
    image, target = ds[1]
    assert image.mode == "RGB" and image.size == (48, 40)
    assert target.dtype == torch.float32 and target.shape == (20,)
    assert torch.equal(target, expected(["dog"], difficult=["cat"]))
    shape_of = VOCMultiLabel(voc_root, 2007, "test", transform=lambda im: np.asarray(im).shape)
    assert shape_of[0][0] == (40, 48, 3)
    assert torch.equal(shape_of[0][1], expected(["horse"]))


@pytest.mark.parametrize("sub", ["", "VOCdevkit", "VOCdevkit/VOC2007"])
def test_root_may_be_the_parent_the_devkit_or_the_year_folder(voc_root, sub):
    assert len(VOCMultiLabel(voc_root / sub, "2007", "trainval")) == 4


def test_missing_tree_names_the_path_and_the_layout(tmp_path, voc_root):
    with pytest.raises(DataRootError, match="no PASCAL VOC 2012 tree") as err:
        VOCMultiLabel(voc_root, "2012", "train")
    assert str(voc_root) in str(err.value) and "JPEGImages" in str(err.value)
    assert isinstance(err.value, MissingSourceError)       # the CLI's one-line error path
    with pytest.raises(DataRootError, match=r"ImageSets/Main/val\.txt is missing"):
        VOCMultiLabel(voc_root, "2007", "val")
    with pytest.raises(ValueError, match="unknown VOC year"):
        VOCMultiLabel(voc_root, "2010", "train")


def test_missing_annotation_or_image_is_reported(tmp_path):
    d = write_voc(tmp_path, "2012", {"train": {"000001": [("cat", False)], "000002": [("dog", False)]}})
    (d / "JPEGImages" / "000002.jpg").unlink()
    ds = VOCMultiLabel(tmp_path, "2012", "train")
    with pytest.raises(DataRootError, match="000002.jpg is missing"):
        ds[1]
    (d / "Annotations" / "000001.xml").unlink()
    with pytest.raises(DataRootError, match=r"Annotations/000001\.xml .*is missing"):
        VOCMultiLabel(tmp_path, "2012", "train")


def test_unknown_class_in_an_annotation_is_an_error(tmp_path):
    write_voc(tmp_path, "2007", {"train": {"000001": [("unicorn", False)]}})
    with pytest.raises(DataRootError, match="unknown VOC class 'unicorn'"):
        VOCMultiLabel(tmp_path, "2007", "train")


def test_metrics_ignore_difficult_only_entries_of_the_loader(voc_root):
    """The loader's 'dog' column is [-1, 1, 0, 1]. With scores ranking the images in order, the -1 image is
    dropped (VOC protocol): P N P, so precision is 1 up to recall 0.5 (11-point t = 0 .. 0.5, six points)
    and 2/3 at recall 1 (t = 0.6 .. 1, five points)."""
    ds = VOCMultiLabel(voc_root, "2007", "trainval")
    dog = ds.targets[:, VOC_CLASSES.index("dog")]
    assert dog.tolist() == [-1, 1, 0, 1]
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert ap_voc07(scores, dog)[0] == pytest.approx(100 * (6 * 1 + 5 * 2 / 3) / 11)
    assert ap_voc07(scores, dog.clamp(min=0))[0] == pytest.approx(50.0)   # -1 as negative: N P N P
    assert np.isnan(ap_voc07(scores, ds.targets[:, VOC_CLASSES.index("cat")])[0])   # only -1: no positive
