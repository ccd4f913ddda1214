"""Independent CPU work (two teachers, the two Fig. 3 students, the side runs) on both cores.

The CPU kernels of these small networks do not scale to two threads: two single-thread processes train
two networks about 20–30 % faster than one two-thread process trains them one after the other
(docs/performance.md). :func:`run_parallel` runs independent jobs in forked worker processes with one
thread each; the jobs are closures, inherited by the fork (only their index is sent), so large tensors are
never copied. Each job writes its own results to disk (checkpoints, run records), as it would in the
parent, and returns something small. Workers are silent (their progress bars would interleave); the
parent reports each job when it ends. Where forking is unavailable, on a GPU, inside a worker, or under
torchrun (every process of the job runs each job data-parallel, :mod:`kalib.distributed`), the jobs run here,
one after the other.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_all_start_methods, get_context
from typing import TypeVar

import torch

from .. import distributed
from ..errors import ConfigError

T = TypeVar("T")

_jobs: list[Callable[[], object]] = []      # the parent's jobs, inherited by forked workers
_in_worker = False


def _start_worker() -> None:
    global _in_worker
    _in_worker = True
    _end_with_parent()
    torch.set_num_threads(1)
    devnull = open(os.devnull, "w")
    sys.stdout = sys.stderr = devnull


def _end_with_parent() -> None:
    """Linux: the worker gets SIGTERM when its parent dies (a killed run leaves no orphan training on,
    and its epoch checkpoints stay for the resume)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)      # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _call(i: int):
    return _jobs[i]()


def default_workers(device=None) -> int:
    """Two CPU workers where the machine has at least two cores and the work runs on the CPU, else 1
    (``$KALIB_WORKERS`` overrides)."""
    if os.environ.get("KALIB_WORKERS"):
        try:
            return max(1, int(os.environ["KALIB_WORKERS"]))
        except ValueError:
            raise ConfigError(f"KALIB_WORKERS={os.environ['KALIB_WORKERS']!r} is not a number of worker "
                              "processes; set it to 1, 2, ... or unset it") from None
    on_cpu = device is None or torch.device(device).type == "cpu"
    return min(2, os.cpu_count() or 1) if on_cpu else 1


def run_parallel(jobs: Sequence[Callable[[], T]], workers: int | None = None, device=None,
                 on_done: Callable[[int, T], None] | None = None) -> list[T]:
    """``[job() for job in jobs]``, run by up to ``workers`` single-thread processes (default
    :func:`default_workers`). Jobs start in the order given, so put the longest first; ``on_done(i, result)``
    is called in the parent as each job ends. An exception in a job is raised here, after the jobs already
    running have ended."""
    global _jobs
    workers = default_workers(device) if workers is None else workers
    if workers <= 1 or len(jobs) <= 1 or _in_worker or "fork" not in get_all_start_methods() or distributed.active():
        results = []
        for i, job in enumerate(jobs):
            results.append(job())
            if on_done:
                on_done(i, results[-1])
        return results
    _jobs = list(jobs)
    try:
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=get_context("fork"),
                                 initializer=_start_worker) as pool:
            futures = {pool.submit(_call, i): i for i in range(len(jobs))}
            try:
                results = [None] * len(jobs)
                for future in as_completed(futures):
                    i = futures[future]
                    results[i] = future.result()
                    if on_done:
                        on_done(i, results[i])
                return results
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        _jobs = []
