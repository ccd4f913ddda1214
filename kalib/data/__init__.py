"""Datasets: the embedded multi-label benchmark, PASCAL VOC / MS-COCO, and the label groups (docs/design.md §2)."""

from .coco import COCO_CATEGORIES, COCO_CLASSES, COCOMultiLabel
from .embedded import LABEL_NAMES, Benchmark, BenchmarkSpec, load_benchmark
from .groups import fig3_pairs, seeded_split
from .paper import PaperBenchmark, PaperSpec, load_paper
from .sources import cache_dir
from .voc import VOC_CLASSES, VOCMultiLabel

__all__ = ["COCO_CATEGORIES", "COCO_CLASSES", "COCOMultiLabel",
           "LABEL_NAMES", "Benchmark", "BenchmarkSpec", "PaperBenchmark", "PaperSpec",
           "VOC_CLASSES", "VOCMultiLabel", "cache_dir", "fig3_pairs", "load_benchmark",
           "load_paper", "seeded_split"]
