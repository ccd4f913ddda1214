"""Bounds from resources: before kalib makes a cache file or a large array it estimates its size and refuses,
in one line with the number and what to change (a :class:`~kalib.errors.ResourceError`), what does not fit the
free disk space of the folder it goes to (:func:`check_disk`) or the memory this machine has available
(:func:`check_memory`: Linux's ``MemAvailable``, within a cgroup's limit where there is one). Where a number
cannot be read (another system) nothing is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ResourceError

DISK_SPARE = 1 << 30          # left free on the disk after a cache is written
MEMORY_SHARE = 0.8            # of the available memory one array may take


def human(nbytes: float) -> str:
    """``nbytes`` as a short size: ``1.5 GB``, ``720 MB``, ``12 kB`` (powers of 1000)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{int(nbytes)} bytes"


def free_disk(path: str | Path) -> int | None:
    """Bytes free to this user on the file system of ``path`` (its nearest existing folder); None if unknown."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stat = os.statvfs(path)
    except (OSError, AttributeError):
        return None
    return stat.f_bavail * stat.f_frsize


def _cgroup_free() -> int | None:
    """What a cgroup v2 memory limit leaves this process's group (None: no limit, or none readable)."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None
    return None if limit == "max" else max(0, int(limit) - used)


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (``MemAvailable``, bounded by a cgroup limit); None if
    unknown."""
    try:
        with open("/proc/meminfo") as f:
            kib = next((int(line.split()[1]) for line in f if line.startswith("MemAvailable:")), None)
    except (OSError, ValueError):
        kib = None
    values = [v for v in (None if kib is None else kib * 1024, _cgroup_free()) if v is not None]
    return min(values) if values else None


def check_disk(nbytes: int, where: str | Path, what: str, fix: str) -> None:
    """Refuse ``what`` (e.g. "the image cache of --pool DIR"), ``nbytes`` to be written under ``where``, when
    it would leave less than :data:`DISK_SPARE` free there; ``fix`` says what to change."""
    free = free_disk(where)
    if free is not None and nbytes + DISK_SPARE > free:
        raise ResourceError(f"{what} would take {human(nbytes)} of disk, but {Path(where)} has {human(free)} "
                            f"free; {fix}")


def device_memory(device=None) -> int | None:
    """Bytes free for new allocations on ``device``: the GPU's free memory for a CUDA device, else
    :func:`available_memory`."""
    if device is not None and str(device).startswith("cuda"):
        import torch
        try:
            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except (RuntimeError, AssertionError, ValueError):
            return None
    return available_memory()


def check_memory(nbytes: int, what: str, fix: str, device=None) -> None:
    """Refuse ``what``, an array (or arrays at once) of ``nbytes``, when it is more than :data:`MEMORY_SHARE`
    of the memory available now (on ``device``, a GPU's own where it is one); ``fix`` says what to change."""
    free = device_memory(device)
    if free is not None and nbytes > MEMORY_SHARE * free:
        where = f" on {device}" if device is not None and str(device).startswith("cuda") else ""
        raise ResourceError(f"{what} would take {human(nbytes)} of memory, but {human(free)} is available{where}; "
                            f"{fix}")
