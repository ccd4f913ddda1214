"""kalib.memory: each step's own peak resident memory (``peak_rss_mb`` in the records and results.json)."""

import json
import sys

import numpy as np
import pytest

from kalib.memory import PeakMemory
from kalib.runs.checkpoints import read_meta
from kalib.runs.teachers import teacher_paths

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM and clear_refs are Linux's")


def _touch(mib: int) -> np.ndarray:
    return np.ones(mib * 2**20, dtype=np.uint8)       # written, so resident


@linux
def test_a_step_reports_its_own_peak_not_the_process_s():
    first = PeakMemory()
    block = _touch(200)
    del block
    first_peak = first.mib()
    assert first.rise_mib() >= 190 and first_peak >= 190
    second = PeakMemory()            # after the 200 MiB were freed: the earlier peak is not this step's
    small = _touch(20)
    assert 15 <= second.rise_mib() < 120 and second.mib() < first_peak - 150
    del small


@linux
def test_teachers_runs_and_baselines_record_their_peak(smoke_teachers, smoke_target):
    paths = [smoke_teachers / "generic-resnet18_narrow.pt", *teacher_paths(smoke_teachers, "resnet18_narrow", 2)]
    for path in paths:
        assert read_meta(path)["peak_rss_mb"] > 100            # torch alone holds a few hundred MiB
    out_dir, record = smoke_target
    assert json.loads((out_dir / "run.json").read_text())["peak_rss_mb"] == record["peak_rss_mb"] > 100
