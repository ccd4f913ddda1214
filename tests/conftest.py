"""Shared fixtures: a private cache directory, the smoke-preset benchmark (a few hundred canvases), and the
smoke teachers and amalgamation, trained once per test run. Under pytest-xdist (`make test`, see the
conftest.py above this one) the workers share the cache and each trained artefact: the first worker that
needs one makes it while the other waits (a file lock in the directory that holds the workers' temporary
directories), so nothing is trained twice."""

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from filelock import FileLock

from kalib.data import load_benchmark
from kalib.runs.presets import get_preset


@contextmanager
def torch_threads(n: int):
    """torch's intra-op threads set to ``n`` inside, and back to what they were after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def shared_dir(config, tmp_path_factory) -> Path | None:
    """The directory the pytest-xdist workers of this run share (the parent of their temporary
    directories); None in a run without workers."""
    return tmp_path_factory.getbasetemp().parent if hasattr(config, "workerinput") else None


def made_once(request, tmp_path_factory, name: str, make) -> Path:
    """A directory filled by ``make(path)`` once per test run, on one thread: by this process, or under
    pytest-xdist by the first worker that asks for it (the others wait for it)."""
    def make_single_threaded(path):
        with torch_threads(1):
            make(path)
    root = shared_dir(request.config, tmp_path_factory)
    if root is None:
        path = tmp_path_factory.mktemp(name)
        make_single_threaded(path)
        return path
    path, done = root / name, root / f"{name}.done"
    with FileLock(str(root / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir()
            make_single_threaded(path)
            done.touch()
    return path


@pytest.fixture(scope="session", autouse=True)
def private_cache(request, tmp_path_factory):
    """Keep generated canvases of the tests out of the user's cache."""
    mp = pytest.MonkeyPatch()
    root = shared_dir(request.config, tmp_path_factory)
    path = root / "kalib-cache" if root else tmp_path_factory.mktemp("kalib-cache")
    path.mkdir(exist_ok=True)
    mp.setenv("KALIB_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def smoke_bench(request, tmp_path_factory, private_cache):
    root = shared_dir(request.config, tmp_path_factory)
    if root is None:
        return load_benchmark(get_preset("smoke").data)
    with FileLock(str(root / "smoke-bench.lock")):         # rendered by one worker, read from the cache by the other
        return load_benchmark(get_preset("smoke").data)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks run fastest on one thread, and two threads crawl when the cores are shared."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def smoke_teachers(request, tmp_path_factory, smoke_bench):
    """The smoke preset's generic backbone and two teachers, pretrained once per test run (read-only: copy
    the directory before changing anything in it)."""
    from kalib.runs.teachers import pretrain
    preset = get_preset("smoke")
    return made_once(request, tmp_path_factory, "smoke-teachers", lambda out: pretrain(
        smoke_bench, preset.labels.groups, preset.nets.arch, preset.nets.arch_kwargs, preset.pretraining.generic,
        preset.pretraining.teacher, out, seed=preset.seed, log=lambda *_: None))


@pytest.fixture(scope="session")
def smoke_target(request, tmp_path_factory, smoke_bench, smoke_teachers):
    """One uninterrupted smoke-preset amalgamation of ``smoke_teachers`` (C = A): ``(out_dir, record)``, the
    record as the run wrote it (``run.json``)."""
    from kalib.runs.amalgamation import run
    out = made_once(request, tmp_path_factory, "smoke-target",
                    lambda out: run(smoke_bench, get_preset("smoke"), smoke_teachers, out, log=lambda *_: None))
    return out, json.loads((out / "run.json").read_text())
