"""Datasets: the embedded multi-label benchmark, PASCAL VOC / MS-COCO, and the label groups (docs/design.md §2)."""

from .coco import COCO_CATEGORIES, COCO_CLASSES, COCOMultiLabel
from .embedded import LABEL_NAMES, Benchmark, BenchmarkSpec, cache_dir, load_benchmark
from .groups import UnknownTaskError, fig3_pairs, resolve_tasks, seeded_split
from .paper import GenericStageError, PaperBenchmark, PaperSpec, load_dataset, load_paper
from .sources import MissingSourceError
from .voc import VOC_CLASSES, DataRootError, VOCMultiLabel

__all__ = ["COCO_CATEGORIES", "COCO_CLASSES", "COCOMultiLabel", "DataRootError", "GenericStageError",
           "LABEL_NAMES", "Benchmark", "BenchmarkSpec", "MissingSourceError", "PaperBenchmark", "PaperSpec",
           "UnknownTaskError", "VOC_CLASSES", "VOCMultiLabel", "cache_dir", "fig3_pairs", "load_benchmark",
           "load_dataset", "load_paper", "resolve_tasks", "seeded_split"]
