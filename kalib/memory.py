"""Peak resident memory of one step (``peak_rss_mb`` in the run records and ``results.json``, and the
benchmarks' memory columns): Linux's high-water mark ``VmHWM``, reset at the step's start by writing 5 to
``/proc/self/clear_refs``, so that a step run in a long-lived process (a notebook kernel, a worker that ran
other jobs before) reports its own peak and not the process's."""

from __future__ import annotations

import ctypes
import gc


def rss_kib(field: str = "VmRSS") -> int | None:
    """A ``/proc/self/status`` field in KiB (``VmRSS``: now, ``VmHWM``: the peak); None where there is none."""
    try:
        with open("/proc/self/status") as f:
            return next((int(line.split()[1]) for line in f if line.startswith(field + ":")), None)
    except OSError:
        return None


def reset_peak() -> bool:
    """Reset this process's peak RSS to its current RSS after freeing what can be freed (Linux >= 4.0);
    False where that is not possible."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """The peak resident memory from its creation on: ``mib()`` the peak, ``rise_mib()`` its rise over the
    resident size at the start (both None where Linux's counters are unavailable)."""

    def __init__(self):
        self._valid = reset_peak()
        self._start = rss_kib()

    def mib(self) -> int | None:
        peak = rss_kib("VmHWM")
        return round(peak / 1024) if self._valid and peak is not None else None

    def rise_mib(self) -> int | None:
        peak = rss_kib("VmHWM")
        return round((peak - self._start) / 1024) if self._valid and None not in (peak, self._start) else None
