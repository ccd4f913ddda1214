"""kalib.parallel: independent jobs in single-thread worker processes, results in order."""

import os

import pytest
import torch

from kalib import parallel


def test_jobs_run_in_workers_with_one_thread_and_return_in_order():
    big = torch.arange(10)                        # inherited by the fork, never sent
    jobs = [lambda i=i: (i, int(big[i]), os.getpid(), torch.get_num_threads()) for i in range(4)]
    seen = []
    results = parallel.run_parallel(jobs, workers=2, on_done=lambda i, r: seen.append(i))
    assert [r[:2] for r in results] == [(i, i) for i in range(4)] and seen == [0, 1, 2, 3]
    assert all(r[2] != os.getpid() and r[3] == 1 for r in results)


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
