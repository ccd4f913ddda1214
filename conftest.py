"""How `make test` spreads the suite over pytest-xdist workers (``-n 2``; without ``-n`` nothing here
applies). The tests of one file run in one worker (their module fixtures are made once), and every cell of the
chapters and their solutions in one worker, in order (02–06 and the solutions read what 01–05 trained; 07
trains its own stand-in teachers and runs in a worker of its own). The chapters start first, then the
longest files, so that the workers end at about the same time. Each worker trains on one thread, as
:mod:`kalib.runs.parallel` does. Two workers on two cores: a third kept both cores busy while one waited (a
kernel starting, the processes of a torchrun or kill-and-resume test), but the processes then slowed each other
down more than the waits cost (docs/performance.md). tests/conftest.py shares the trained smoke
artefacts between the workers."""

import os
from pathlib import Path

import pytest

LONGEST = ("test_paper_notebooks.py", "test_crossover.py", "test_side_run_order_benchmark.py")


def pytest_configure(config):
    if hasattr(config, "workerinput"):          # a pytest-xdist worker: one thread, here and in what it starts
        import torch
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """In the workers (whose order the scheduler keeps): the notebooks, then :data:`LONGEST`, then the rest
    in their usual order."""
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: 0 if item.path.suffix == ".ipynb" else 1 if item.path.name in LONGEST else 2)


INDEPENDENT_NOTEBOOKS = ("07_your_teachers.ipynb",)     # reads nothing the chapters before it wrote


def scope(nodeid: str) -> str:
    """The unit one worker runs: the chapters and their solutions (in order), a notebook that needs none of
    them, or one test file."""
    path = nodeid.split("::", 1)[0]
    if Path(path).suffix != ".ipynb" or Path(path).name in INDEPENDENT_NOTEBOOKS:
        return path
    return "notebooks"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        """pytest-xdist's ``--dist loadfile``, with every notebook in one unit, in collection order."""
        def _split_scope(self, nodeid):
            return scope(nodeid)

    config.option.loadscopereorder = False       # hand the units out in collection order (above), not by size
    return ByFile(config, log)
