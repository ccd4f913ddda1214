"""kalib.runs.parallel: independent jobs in single-thread worker processes, results in order."""

import json
import os
import time
from pathlib import Path

import pytest
import torch

from kalib.runs import experiments, parallel
from kalib.runs.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]


def test_jobs_run_in_workers_with_one_thread_and_return_in_order():
    big = torch.arange(10)                        # inherited by the fork, never sent
    jobs = [lambda i=i: (i, int(big[i]), os.getpid(), torch.get_num_threads()) for i in range(4)]
    seen = []
    results = parallel.run_parallel(jobs, workers=2, on_done=lambda i, r: seen.append(i))
    assert [r[:2] for r in results] == [(i, i) for i in range(4)] and sorted(seen) == [0, 1, 2, 3]
    assert all(r[2] != os.getpid() and r[3] == 1 for r in results)


def test_each_job_is_reported_when_it_ends_not_after_the_jobs_before_it():
    seen = []
    results = parallel.run_parallel([lambda: time.sleep(1.0) or "slow", lambda: "quick"], workers=2,
                                    on_done=lambda i, r: seen.append(r))
    assert results == ["slow", "quick"] and seen == ["quick", "slow"]


def test_a_table_starts_its_side_amalgamations_before_its_baselines(tmp_path):
    """A side run with its own teachers outlasts KD at equal MACs: started first, it does not run alone at the end."""
    jobs = experiments.side_jobs(get_preset("smoke"), None, tmp_path, "table1", done={("table1", "2")})
    assert list(jobs) == [("table1", "3"), ("table1", "dense"), ("table1", "KD"), ("table1", "Supervised"),
                          ("table1", "Merge")]
    jobs = experiments.side_jobs(get_preset("smoke"), None, tmp_path, "table2")
    assert list(jobs) == [("table2", "2"), ("table2", "3"), ("table2", "dense"), ("table2", "KD"),
                          ("table2", "Supervised"), ("table2", "Merge")]


def _phase_end(order: list[str], seconds: dict[str, float], workers: int = 2) -> float:
    """When a phase ends whose jobs start in ``order``, each on the first free worker."""
    free = [0.0] * workers
    for job in order:
        free[free.index(min(free))] += seconds[job]
    return max(free)


def test_kalibs_order_ends_the_committed_table1_phase_no_later_than_the_other():
    """Started side amalgamations first (kalib's order), Table 1's phase of the committed run, replayed on two
    workers with its own step seconds, ends no later than with the baselines first."""
    steps = json.loads((ROOT / "figures" / "results.json").read_text())["timings_s"]["steps"]
    table1 = {k.removeprefix("table1/"): v for k, v in steps.items() if k.startswith("table1/")}
    phase = {"KD": table1["KD"], "Supervised": table1["Supervised"],      # a side run trains its own teachers
             "Target-3": table1["amalgamation-3"]["total"] + sum(v for k, v in table1.items() if k.startswith("set3-")),
             "TargetDenseNet": table1["amalgamation-dense"]["total"] + sum(
                 v for k, v in table1.items() if k.endswith("-densenet_small"))}
    kalib = _phase_end(["Target-3", "TargetDenseNet", "KD", "Supervised"], phase)
    assert kalib <= _phase_end(["KD", "Supervised", "Target-3", "TargetDenseNet"], phase), phase


def test_one_worker_runs_the_jobs_here():
    assert parallel.run_parallel([os.getpid, os.getpid], workers=1) == [os.getpid()] * 2


def test_an_exception_in_a_job_is_raised_in_the_parent():
    def fails():
        raise ValueError("job 2 failed")
    with pytest.raises(ValueError, match="job 2 failed"):
        parallel.run_parallel([lambda: 1, fails], workers=2)


def test_default_workers(monkeypatch):
    monkeypatch.delenv("KALIB_WORKERS", raising=False)
    assert parallel.default_workers("cuda") == 1
    assert parallel.default_workers("cpu") == min(2, os.cpu_count() or 1)
    monkeypatch.setenv("KALIB_WORKERS", "1")
    assert parallel.default_workers("cpu") == 1
