"""Paper-scale data — PASCAL VOC 2007, VOC 2012, MS-COCO 2014 — as arrays the training code already reads.

:func:`load_paper` gives, for a paper dataset, an object with the interface of the embedded
:class:`~kalib.data.Benchmark` (``train_images``/``pool_images``/``test_images`` as uint8 ``(N, 3, S, S)``
tensors, float ``train_labels``/``test_labels``, ``label_names``, ``label_indices``, ``spec.key()``), so
:func:`kalib.runs.teachers.pretrain` and :func:`kalib.runs.amalgamation.run` run unchanged on the real datasets
(a preset's data, embedded or paper, is loaded by :func:`kalib.runs.data.load_data`).

Splits (paper §4.1: "We use the training set for pre-training the teachers. For TargetNet, we use the
unlabeled images"):

=========== ======================== ============================ ====================
preset      train (teachers, labels)  pool (student, no labels)    test (AP, mAP)
=========== ======================== ============================ ====================
paper-voc07 VOC2007 trainval (5,011)  the same images, unlabeled   VOC2007 test (4,952)
paper-voc12 VOC2012 train (5,717)     the same images, unlabeled   VOC2012 val (5,823)
paper-coco  COCO train2014 (82,783)   the same images, unlabeled   COCO val2014 (40,504)
=========== ======================== ============================ ====================

``pool_images`` *is* ``train_images`` (one array, no copy); :func:`kalib.runs.amalgamation.run` never reads a
label. VOC2012's test labels are not public (the paper's Table 2 used the evaluation server), so
paper-voc12 tests on val; COCO tests on val2014, as the paper does.

Images are decoded once, resized to ``image_size``×``image_size`` *without* keeping the aspect ratio (a
warp, as ML-GCN does for VOC/COCO: a centre crop could cut off labelled objects), and stored as uint8
``.npy`` files in the cache directory (``$KALIB_CACHE`` or ``.cache/kalib``), read back memory-mapped:
COCO's train2014 at 224 px is 12.5 GB. The paper's random-resized-crop augmentation is not part of the
stored arrays; :mod:`kalib.augment` applies it batch by batch.

Labels: test labels keep VOC's -1 for difficult-only classes (ignored by :mod:`kalib.metrics`); train
labels turn -1 into 1 (the object is in the image, only hard to see; ML-GCN's convention), because the
teacher loss (Eq. 2) is a plain binary cross-entropy. The raw 1/0/-1 train targets stay in
``train_targets``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, DataRootError, GenericStageError
from ..progress import progress_bar
from ..resources import check_disk
from .coco import COCO_CLASSES, COCO_LAYOUT, COCOMultiLabel
from .sources import cache_dir
from .voc import VOC_CLASSES, VOC_LAYOUT, VOCMultiLabel, find_voc_dir

FORMAT_VERSION = 1
DECODE_BATCH = 64           # images decoded per batch (per worker)
# dataset -> (loader, VOC year, train split, test split)
PAPER_DATASETS = {
    "voc07": ("voc", "2007", "trainval", "test"),
    "voc12": ("voc", "2012", "train", "val"),
    "coco": ("coco", None, "train2014", "val2014"),
}


@dataclass(frozen=True)
class PaperSpec:
    """Which real dataset and at which size; ``root`` and ``fingerprint`` are filled in by
    :func:`load_paper` (absolute data root; sizes and times of the split and annotation files)."""
    dataset: str                 # "voc07" | "voc12" | "coco"
    image_size: int = 224
    root: str = ""
    fingerprint: str = ""

    def __post_init__(self):
        if self.dataset not in PAPER_DATASETS:
            raise ConfigError(f"unknown paper dataset {self.dataset!r}; valid: {', '.join(PAPER_DATASETS)}")
        if not 16 <= self.image_size <= 4096:
            raise ConfigError(f"image_size must be between 16 and 4096 px, got {self.image_size}")

    @property
    def label_names(self) -> tuple[str, ...]:
        return COCO_CLASSES if self.dataset == "coco" else VOC_CLASSES

    @property
    def splits(self) -> tuple[str, str]:
        """(train split, test split) names, e.g. ("trainval", "test") for VOC2007."""
        return PAPER_DATASETS[self.dataset][2:]

    def key(self) -> str:
        """The data's identity in checkpoints and run settings: dataset and image size (the same on every
        machine, wherever the data lies; equal to the key of the preset's unresolved spec)."""
        blob = json.dumps({"v": FORMAT_VERSION, "dataset": self.dataset, "size": self.image_size}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def cache_key(self) -> str:
        """Name of the cached arrays: also the data root and the fingerprint of its index files."""
        blob = json.dumps({"v": FORMAT_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


@dataclass(eq=False)
class PaperBenchmark:
    """The arrays of a paper dataset, with the attributes of :class:`~kalib.data.Benchmark` that the
    training code reads. ``pool_images`` is ``train_images``; images are memory-mapped uint8."""
    spec: PaperSpec
    train_images: torch.Tensor = field(repr=False)
    train_labels: torch.Tensor = field(repr=False)     # 0/1 (difficult-only counted as present)
    test_images: torch.Tensor = field(repr=False)
    test_labels: torch.Tensor = field(repr=False)      # 1/0/-1 (-1: difficult only, ignored by the metrics)
    label_names: tuple[str, ...] = ()
    train_targets: torch.Tensor = field(default=None, repr=False)   # raw 1/0/-1 train targets
    train_ids: tuple = field(default=(), repr=False)
    test_ids: tuple = field(default=(), repr=False)
    cache: Path | None = None

    @property
    def pool_images(self) -> torch.Tensor:
        return self.train_images

    @property
    def generic_images(self):
        raise GenericStageError(
            f"preset data {self.spec.dataset} has no generic stage: teachers and student start from ImageNet "
            "weights. Write the generic checkpoint first with kalib.models.pretrained.prepare_generic(...) "
            "(the CLI does this for paper presets), or use --init random")

    generic_labels = generic_images

    def label_indices(self, names) -> list[int]:
        from ..labels import resolve_tasks
        return resolve_tasks(names, self.label_names)


# ------------------------------------------------------------------------------------------ sources

def _stat(path: Path) -> list:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def _locate(spec: PaperSpec, root: Path) -> tuple[dict, str]:
    """Paths of the train/test sources under ``root`` and a fingerprint of their index files; raises
    :class:`DataRootError` (naming the path and the expected layout) when one is missing."""
    kind, year, train, test = PAPER_DATASETS[spec.dataset]
    if kind == "voc":
        voc = find_voc_dir(root, year)
        files = {}
        for split in (train, test):
            f = voc / "ImageSets" / "Main" / f"{split}.txt"
            if not f.is_file():
                raise DataRootError(f"VOC {year} split file {f} is missing; expected "
                                    + VOC_LAYOUT.format(year=year, image_set=split))
            files[split] = f
        return {"voc": voc, **files}, json.dumps([_stat(f) for f in files.values()])
    out = {}
    for split in (train, test):
        ann = root / "annotations" / f"instances_{split}.json"
        images = root / split
        if not ann.is_file():
            raise DataRootError(f"COCO annotation file {ann} not found; expected " + COCO_LAYOUT)
        if not images.is_dir():
            raise DataRootError(f"COCO image folder {images} not found; expected " + COCO_LAYOUT)
        out[split] = (images, ann)
    return out, json.dumps([_stat(a) for _, a in out.values()])


def open_split(spec: PaperSpec, split: str, transform=None):
    """The :class:`VOCMultiLabel` / :class:`COCOMultiLabel` of one split of ``spec`` (``spec.root`` set)."""
    kind, year, *_ = PAPER_DATASETS[spec.dataset]
    root = Path(spec.root)
    if kind == "voc":
        return VOCMultiLabel(root, year, split, transform)
    return COCOMultiLabel(root / split, root / "annotations" / f"instances_{split}.json", transform)


# ------------------------------------------------------------------------------------ decode + cache

def decode_image(path: str | Path, size: int) -> np.ndarray:
    """The image at ``path`` warped to ``size``×``size`` RGB, as a uint8 ``(3, size, size)`` array (raises
    whatever PIL raises for a file that is not a readable image). Images of more than 8 bits per channel are
    scaled by their real range (:func:`to_8bit`), not clipped at 255; PIL's warnings (a palette's transparency,
    a very large image) stay quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with Image.open(path) as im:
            im.draft("RGB", (size, size))   # JPEG: let libjpeg decode at a reduced scale >= size
            im = to_8bit(im).convert("RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(im).transpose(2, 0, 1).copy()


def to_8bit(im: Image.Image) -> Image.Image:
    """A single-channel image of more than 8 bits as 8-bit greyscale, scaled by its real range: 16-bit
    (``I;16*``, and ``I`` whose values fit 0..65535) by 255/65535, floating point (``F``) in 0..1 by 255.
    Other modes are returned as they are (PIL converts them to RGB correctly; 16-bit RGB PNGs are read as
    8-bit RGB). A ``ValueError`` for an ``I`` or ``F`` image outside those ranges (its scale is unknown)."""
    if not (im.mode.startswith("I") or im.mode == "F"):
        return im
    values = np.asarray(im).astype(np.float64)
    if im.mode == "F":
        top = 1.0
    elif im.mode.startswith("I;16") or (values.size and values.min() >= 0 and values.max() <= 65535):
        top = 65535.0
    else:
        top = None
    if top is None or not np.isfinite(values).all() or (values.size and not 0 <= values.min() <= values.max() <= top):
        raise ValueError(f"{im.mode} image with values outside 0..{top or 65535:g}: its scale is unknown")
    return Image.fromarray(np.rint(values * (255.0 / top)).astype(np.uint8))


class _Decode(torch.utils.data.Dataset):
    """Image ``i`` decoded and warped to ``size``×``size``, as a uint8 ``(3, size, size)`` tensor; with
    ``skip_broken`` a file PIL cannot read gives zeros and ``ok`` False instead of an exception."""

    def __init__(self, paths: list[Path], size: int, skip_broken: bool = False):
        self.paths, self.size, self.skip_broken = paths, size, skip_broken

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            return i, torch.from_numpy(decode_image(self.paths[i], self.size)), True
        except Exception:       # PIL's errors for a broken or non-image file are many (OSError, ValueError, ...)
            if not self.skip_broken:
                raise
            return i, torch.zeros(3, self.size, self.size, dtype=torch.uint8), False


def decode_images(paths: list[Path], size: int, out: np.ndarray, workers: int = 0,
                  desc: str = "decode", skip_broken: bool = False) -> list[int]:
    """Decode ``paths`` into ``out`` (uint8 ``(N, 3, size, size)``, e.g. a memmap), ``workers`` processes.
    Returns the indices of the files that are not readable images (their rows are zeros) with
    ``skip_broken``; without it such a file raises."""
    loader = torch.utils.data.DataLoader(_Decode(paths, size, skip_broken), batch_size=DECODE_BATCH,
                                         num_workers=workers)
    broken = []
    for idx, batch, ok in progress_bar(loader, desc=desc):
        out[idx.numpy()] = batch.numpy()
        broken += idx[~ok].tolist()
    return broken


def _build(spec: PaperSpec, directory: Path, workers: int, log) -> None:
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta = {"spec": dataclasses.asdict(spec), "format": FORMAT_VERSION}
    for role, split in zip(("train", "test"), spec.splits):
        ds = open_split(spec, split)
        if tuple(ds.label_names) != spec.label_names:
            raise DataRootError(f"{getattr(ds, 'ann_file', spec.root)}: categories {list(ds.label_names)[:5]}… "
                                f"are not the {len(spec.label_names)} official ones of {spec.dataset}")
        if len(ds) == 0:
            raise DataRootError(f"split {split} of {spec.dataset} under {spec.root} lists no images")
        paths = [ds.image_path(i) for i in range(len(ds))]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            layout = COCO_LAYOUT if spec.dataset == "coco" else VOC_LAYOUT.format(year=ds.year, image_set=split)
            raise DataRootError(f"{len(missing)} of {len(paths)} images of split {split} are missing, e.g. "
                                f"{missing[0]}; expected " + layout)
        check_disk(len(paths) * 3 * spec.image_size ** 2, directory.parent, f"the decoded {spec.dataset} {split} "
                   f"images ({len(paths)} at {spec.image_size} px)", "lower data.image_size (--set), or set "
                   "KALIB_CACHE to a folder on a larger disk")
        log(f"{spec.dataset} {split}: decoding {len(paths)} images to {spec.image_size} px (once; cached in "
            f"{directory})")
        images = np.lib.format.open_memmap(tmp / f"{role}_images.npy", mode="w+", dtype=np.uint8,
                                           shape=(len(paths), 3, spec.image_size, spec.image_size))
        decode_images(paths, spec.image_size, images, workers, desc=f"{spec.dataset} {split}")
        images.flush()
        del images
        np.save(tmp / f"{role}_targets.npy", ds.targets.numpy().astype(np.int8))
        meta[f"{role}_ids"] = [str(i) for i in ds.ids]
    (tmp / "meta.json").write_text(json.dumps(meta))
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


def load_paper(spec: PaperSpec, data_root: str | Path | None = None, *, workers: int | None = None,
               log=print) -> PaperBenchmark:
    """The :class:`PaperBenchmark` of ``spec`` from ``data_root`` (default ``$KALIB_DATA_ROOT``), decoding
    and caching the images on first use (``workers`` decoding processes, default up to 8)."""
    data_root = data_root or os.environ.get("KALIB_DATA_ROOT")
    if not data_root:
        layout = COCO_LAYOUT if spec.dataset == "coco" else VOC_LAYOUT.format(year=PAPER_DATASETS[spec.dataset][1],
                                                                              image_set=spec.splits[0])
        raise DataRootError(f"dataset {spec.dataset} needs its data: pass --data-root DIR (or set "
                            f"KALIB_DATA_ROOT), DIR holding " + layout)
    root = Path(data_root).expanduser().resolve()
    if not root.is_dir():
        raise DataRootError(f"data root {root} is not a directory")
    _, fingerprint = _locate(spec, root)
    spec = dataclasses.replace(spec, root=str(root), fingerprint=fingerprint)
    directory = cache_dir() / f"{spec.dataset}-{spec.image_size}px-{spec.cache_key()}"
    if not (directory / "meta.json").is_file():
        _build(spec, directory, default_workers() if workers is None else workers, log)
    meta = json.loads((directory / "meta.json").read_text())

    def array(name):   # copy-on-write memory map: pages are read lazily, the file is never written
        return torch.from_numpy(np.load(directory / f"{name}.npy", mmap_mode="c"))

    train_targets = array("train_targets").float()
    test_targets = array("test_targets").float()
    return PaperBenchmark(spec=spec, train_images=array("train_images"), train_labels=train_targets.abs(),
                          test_images=array("test_images"), test_labels=test_targets,
                          label_names=spec.label_names, train_targets=train_targets,
                          train_ids=tuple(meta["train_ids"]), test_ids=tuple(meta["test_ids"]), cache=directory)
