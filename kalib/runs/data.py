"""A preset's data, loaded in one place: :func:`load_data` is what the command line, the notebooks, the
experiments (every table and side run) and ``kalib.load_data`` call, so a preset's data is found, checked
and cached the same way wherever it is used.

* Table 1 reads ``preset.data``, Table 2 ``preset.hard_data`` (:func:`variant_data`).
* An embedded benchmark (:class:`~kalib.data.BenchmarkSpec`: ``smoke``, ``lesson``, ``quick``) is generated
  and cached on first use (:func:`kalib.data.load_benchmark`); ``data_root`` is its Fashion-MNIST folder
  (default ``$KALIB_FASHION_MNIST_DIR`` or Debian's package folder), checked even when the canvases are cached.
* A paper dataset (:class:`~kalib.data.PaperSpec`: ``paper-voc07``, ``paper-voc12``, ``paper-coco``) is
  decoded from the VOC/COCO tree under ``data_root`` (default ``$KALIB_DATA_ROOT``) and cached
  (:func:`kalib.data.load_paper`).
"""

from __future__ import annotations

from pathlib import Path

from ..data.embedded import BenchmarkSpec, load_benchmark
from ..data.paper import PaperSpec, load_paper
from ..errors import ConfigError

VARIANTS = ("table1", "table2")


def variant_data(preset, variant: str = "table1"):
    """The data spec of Table 1 (``preset.data``) or of Table 2 (``preset.hard_data``)."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown table variant '{variant}'; valid: {', '.join(VARIANTS)}")
    spec = preset.data if variant == "table1" else preset.hard_data
    if spec is None:
        raise ConfigError(f"preset {preset.name} has no {variant} data (it reproduces Table 1 only)")
    return spec


def load_data(preset, variant: str = "table1", data_root: str | Path | None = None, *,
              allow_download: bool = False, workers: int | None = None, log=print):
    """The data of one table of ``preset`` (``variant``: ``table1`` or ``table2``): a
    :class:`~kalib.data.Benchmark` or :class:`~kalib.data.PaperBenchmark`, both with ``train_images``,
    ``train_labels``, ``pool_images``, ``test_images``, ``test_labels``, ``label_names``,
    ``label_indices`` and ``spec.key()``. ``data_root``: the Fashion-MNIST folder of an embedded benchmark,
    the VOC/COCO root of a paper dataset. ``allow_download``: let torchvision fetch a missing source of an
    embedded benchmark; ``workers`` and ``log``: decoding processes and progress lines of a paper dataset."""
    spec = variant_data(preset, variant)
    if isinstance(spec, BenchmarkSpec):
        return load_benchmark(spec, allow_download=allow_download, data_root=data_root)
    if isinstance(spec, PaperSpec):
        return load_paper(spec, data_root, workers=workers, log=log)
    raise TypeError(f"preset {getattr(preset, 'name', preset)!r} has data of unknown type {type(spec).__name__}")
