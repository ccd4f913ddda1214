"""A folder of images as kalib reads it: the unlabelled pool of ``kalib amalgamate --pool DIR`` and the
labelled images of ``--eval DIR --eval-labels FILE.csv``.

Every file under the folder, recursively, is a candidate (names starting with a dot, and everything inside
such folders, are left out); what PIL cannot open and decode is skipped and reported (:attr:`FolderImages.skipped`).
The images are decoded once, warped to ``image_size``×``image_size`` RGB without keeping the aspect ratio
(as the VOC/COCO arrays: :func:`kalib.data.paper.decode_images`), and stored as one uint8 ``.npy`` file in the
cache directory (``$KALIB_CACHE`` or ``.cache/kalib``, under ``folders/``), read back memory-mapped: a pool of
100,000 images at 224 px is 15 GB on disk and never a tensor in memory. :class:`ImageRows` hands its rows out
batch by batch. The folder's fingerprint (:func:`folder_fingerprint`: its file list, sizes and modification
times) names the cached array and tells a resumed run whether the pool is still the same.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..errors import ImageFolderError
from ..resources import check_disk, check_memory
from .paper import DECODE_BATCH, decode_images, default_workers
from .sources import cache_dir

FORMAT_VERSION = 1
MAX_IMAGE_SIZE = 4096       # --image-size: 50 MB per decoded image; ImageNet models are trained at 224-600 px


class ImageRows:
    """Rows ``index`` of a uint8 image array ``(N, 3, S, S)`` (typically memory-mapped), read only when asked:
    ``rows[idx]`` is another :class:`ImageRows` (nothing is read), ``rows[idx].to(device)`` or
    :meth:`tensor` reads those rows. kalib's training and prediction loops take it wherever they take a tensor of
    images, since they only ever move ``images[batch]`` to the device (:mod:`kalib.method.pool`)."""

    def __init__(self, array: torch.Tensor, index=None):
        self.array = array
        self.index = torch.arange(len(array)) if index is None else torch.as_tensor(index, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.array.shape[1:])

    @property
    def dtype(self) -> torch.dtype:
        return self.array.dtype

    def __getitem__(self, idx):
        if isinstance(idx, int):
            return self.array[int(self.index[idx])]
        if not isinstance(idx, slice):
            idx = torch.as_tensor(idx, dtype=torch.long)
        return ImageRows(self.array, self.index[idx])

    def tensor(self) -> torch.Tensor:
        """These rows as one tensor (read from the array now)."""
        return self.array[self.index]

    def to(self, *args, **kwargs) -> torch.Tensor:
        return self.tensor().to(*args, **kwargs)

    def __repr__(self) -> str:
        return f"ImageRows({len(self)} of {len(self.array)} images, {tuple(self.array.shape[1:])})"


@dataclass(frozen=True)
class FolderImages:
    """The readable images of a folder: ``files`` (paths relative to ``root``, ``/``-separated) in the order
    of ``rows``, the ``skipped`` files that are not readable images, the folder's ``fingerprint`` and the
    ``image_size`` the images were warped to; ``cache``: the directory of the decoded array."""
    root: Path
    files: tuple[str, ...]
    rows: ImageRows = field(repr=False)
    skipped: tuple[str, ...]
    fingerprint: str
    image_size: int
    cache: Path

    def skipped_note(self, shown: int = 3) -> str:
        """One line naming the skipped files (their count and the first ``shown``); empty when none."""
        if not self.skipped:
            return ""
        first = ", ".join(self.skipped[:shown]) + (", …" if len(self.skipped) > shown else "")
        return (f"skipped {len(self.skipped)} file{'s' if len(self.skipped) > 1 else ''} of {self.root} that "
                f"{'are' if len(self.skipped) > 1 else 'is'} not a readable image: {first}")


def list_files(root: str | Path) -> list[str]:
    """Every file under ``root``, recursively, as a sorted ``/``-separated path relative to it (hidden names,
    those starting with a dot, and what lies inside hidden folders left out). Links to folders are followed
    once: a folder reached again (a link back to a parent, a second link to one folder) is not entered again,
    so a loop of links ends and every file is listed once."""
    root = Path(root)
    out, seen = [], set()
    for directory, dirs, files in os.walk(root, followlinks=True):
        st = os.stat(directory)
        if (st.st_dev, st.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(directory).relative_to(root)
        out += [(rel / f).as_posix() for f in files if not f.startswith(".") and (Path(directory) / f).is_file()]
    return sorted(out)


def check_folder(root: str | Path, what: str = "--pool") -> list[str]:
    """The files of the folder ``root`` (:func:`list_files`); :class:`~kalib.errors.ImageFolderError` when it is
    not a folder or holds no file (``what`` names the option)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ImageFolderError(f"{what} {root} is not a folder of images")
    files = list_files(root)
    if not files:
        raise ImageFolderError(f"{what} {root} holds no files; give a folder of images (searched recursively)")
    return files


def folder_fingerprint(root: str | Path, files: list[str], image_size: int) -> str:
    """A digest of the folder's file list, each file's size and modification time, and the image size."""
    entries = []
    for rel in files:
        st = (Path(root) / rel).stat()
        entries.append([rel, st.st_size, st.st_mtime_ns])
    blob = json.dumps({"v": FORMAT_VERSION, "size": image_size, "files": entries})
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def load_folder(root: str | Path, image_size: int, *, what: str = "--pool", workers: int | None = None,
                log=print) -> FolderImages:
    """The readable images of ``root`` at ``image_size`` px, decoded once and cached memory-mapped
    (:mod:`kalib.data.folder`) by ``workers`` processes (default: none for up to 2,000 files, else up to 8).
    :class:`~kalib.errors.ImageFolderError` when ``root`` is not a folder, holds no file, or no file in it is
    a readable image (nothing is left behind then); ``what`` names the option in those messages."""
    root = Path(root).expanduser()
    if not 1 <= image_size <= MAX_IMAGE_SIZE:
        raise ImageFolderError(f"--image-size {image_size}: must be between 1 and {MAX_IMAGE_SIZE} px (the size "
                               "the teachers were trained at, e.g. 224)")
    files = check_folder(root, what)
    fingerprint = folder_fingerprint(root, files, image_size)
    directory = _cache_directory(root, fingerprint, image_size)
    if not (directory / "meta.json").is_file():
        workers = workers if workers is not None else 0 if len(files) <= 2000 else default_workers()
        check_room(root, image_size, what, workers, files)
        _build(root, files, image_size, directory, what, workers, log)
    meta = json.loads((directory / "meta.json").read_text())
    array = torch.from_numpy(np.load(directory / "images.npy", mmap_mode="c"))
    ok = meta["readable"]
    return FolderImages(root, tuple(files[i] for i in ok), ImageRows(array, ok),
                        tuple(files[i] for i in meta["skipped"]), fingerprint, image_size, directory)


def _cache_directory(root: Path, fingerprint: str, image_size: int) -> Path:
    key = hashlib.sha1(f"{root.resolve()}|{fingerprint}".encode()).hexdigest()[:12]
    return cache_dir() / "folders" / f"{root.resolve().name or 'root'}-{image_size}px-{key}"


def check_room(root: str | Path, size: int, what: str = "--pool", workers: int = 0,
               files: list[str] | None = None) -> None:
    """Refuse, before anything is decoded, a cache of the folder ``root`` at ``size`` px that would not fit the
    cache directory's disk, or decoding batches that would not fit in memory (:mod:`kalib.resources`); nothing
    to check where the folder is cached already."""
    root = Path(root).expanduser()
    files = list_files(root) if files is None else files
    if (_cache_directory(root, folder_fingerprint(root, files, size), size) / "meta.json").is_file():
        return
    fix = f"lower --image-size ({size} now), use fewer images, or set KALIB_CACHE to a larger disk"
    check_disk(len(files) * 3 * size * size, cache_dir(), f"the decoded images of {what} {root} "
               f"({len(files)} files at {size} px)", fix)
    check_memory(DECODE_BATCH * 3 * size * size * max(1, workers) * 2, f"decoding {what} {root} at {size} px", fix)


def _build(root: Path, files: list[str], size: int, directory: Path, what: str, workers: int, log) -> None:
    """Decode ``files`` into ``directory/images.npy`` (a temporary directory renamed at the end, so a killed
    build leaves nothing that counts) with ``meta.json`` listing the readable and the skipped ones."""
    tmp = directory.with_name(directory.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        log(f"{what} {root}: decoding {len(files)} files to {size} px (once; cached in {directory})")
        images = np.lib.format.open_memmap(tmp / "images.npy", mode="w+", dtype=np.uint8,
                                           shape=(len(files), 3, size, size))
        broken = set(decode_images([root / f for f in files], size, images, workers, desc=f"decode {root.name}",
                                   skip_broken=True))
        images.flush()
        del images
        if len(broken) == len(files):
            raise ImageFolderError(f"{what} {root}: none of its {len(files)} files is a readable image (e.g. "
                                   f"{files[0]})")
        meta = {"format": FORMAT_VERSION, "root": str(root.resolve()), "size": size,
                "readable": [i for i in range(len(files)) if i not in broken], "skipped": sorted(broken)}
        (tmp / "meta.json").write_text(json.dumps(meta))
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _label_rows(path: Path) -> list[list[str]]:
    """The non-blank rows of the CSV file ``path``, its header checked: ``file`` and one or more label names,
    none empty, none twice."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise ImageFolderError(f"--eval-labels {path} cannot be read ({type(err).__name__}: "
                               f"{getattr(err, 'strerror', None) or err})") from None
    rows = [r for r in rows if any(c.strip() for c in r)]
    if not rows or len(rows[0]) < 2 or rows[0][0].strip() != "file":
        raise ImageFolderError(f"--eval-labels {path}: the first line must be the header file,<label>,… ")
    names = [c.strip() for c in rows[0][1:]]
    if "" in names:
        raise ImageFolderError(f"--eval-labels {path}: column {names.index('') + 2} of the header has no label name")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ImageFolderError(f"--eval-labels {path}: the header names {', '.join(twice)} twice; one column per "
                               "label")
    return rows


def read_label_header(path: str | Path) -> list[str]:
    """The label names of a labels CSV (:func:`read_label_csv`), its header checked."""
    return [c.strip() for c in _label_rows(Path(path))[0][1:]]


def read_label_csv(path: str | Path, images: FolderImages) -> tuple[list[str], torch.Tensor]:
    """The labels of ``images`` from a CSV file with the header ``file,<label>,…`` and one row per image
    (its path relative to the folder, then 0 or 1 per label): ``(label names, targets (N, labels))`` in
    the order of ``images.files``. :class:`~kalib.errors.ImageFolderError` for a missing or malformed file,
    a label column named twice, rows that name no readable image of the folder, images without a row, a file
    named twice."""
    path = Path(path)
    rows = _label_rows(path)
    names = [c.strip() for c in rows[0][1:]]
    targets, seen = {}, set()
    for line, row in enumerate(rows[1:], start=2):
        name = row[0].strip().replace("\\", "/")
        values = [c.strip() for c in row[1:]]
        if len(values) != len(names) or any(v not in ("0", "1") for v in values):
            raise ImageFolderError(f"--eval-labels {path}, line {line}: expected a file and {len(names)} values of "
                                   f"0 or 1, got {row}")
        if name in seen:
            raise ImageFolderError(f"--eval-labels {path} names {name} twice")
        seen.add(name)
        targets[name] = [float(v) for v in values]
    _check_rows(path, images, set(targets))
    return names, torch.tensor([targets[f] for f in images.files])


def _check_rows(path: Path, images: FolderImages, named: set[str]) -> None:
    """Every readable image of the folder has a row and every row names one of them."""
    files = set(images.files)
    unknown = sorted(named - files)
    unlabelled = sorted(files - named)
    if unknown or unlabelled:
        parts = []
        if unknown:
            why = " (skipped: not readable images)" if set(unknown) & set(images.skipped) else ""
            parts.append(f"{len(unknown)} rows name no readable image of {images.root}{why}: {', '.join(unknown[:3])}")
        if unlabelled:
            parts.append(f"{len(unlabelled)} images have no row: {', '.join(unlabelled[:3])}")
        raise ImageFolderError(f"--eval-labels {path} does not match the files of --eval {images.root}: "
                               + "; ".join(parts) + " (file paths relative to the folder)")
