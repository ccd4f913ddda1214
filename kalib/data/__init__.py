"""Datasets: the embedded multi-label benchmark and the label groups (design.md §2)."""

from .embedded import LABEL_NAMES, Benchmark, BenchmarkSpec, cache_dir, load_benchmark
from .groups import UnknownTaskError, fig3_pairs, resolve_tasks, seeded_split
from .sources import MissingSourceError

__all__ = ["LABEL_NAMES", "Benchmark", "BenchmarkSpec", "MissingSourceError", "UnknownTaskError",
           "cache_dir", "fig3_pairs", "load_benchmark", "resolve_tasks", "seeded_split"]
