"""Shared fixtures: a private cache directory and the smoke-preset benchmark (a few hundred canvases)."""

import pytest
import torch

from kalib.data import load_benchmark
from kalib.runs.presets import get_preset


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory):
    """Keep generated canvases of the tests out of the user's cache."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("kalib-cache")
    mp.setenv("KALIB_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="session")
def smoke_bench(private_cache):
    return load_benchmark(get_preset("smoke").data)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks run fastest on one thread, and two threads crawl when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def smoke_teachers(smoke_bench, tmp_path_factory):
    """The smoke preset's generic backbone and two teachers, pretrained once per session (read-only: copy
    the directory before changing anything in it)."""
    from kalib.runs.teachers import pretrain
    preset = get_preset("smoke")
    out = tmp_path_factory.mktemp("smoke-teachers")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pretrain(smoke_bench, preset.labels.groups, preset.nets.arch, preset.nets.arch_kwargs, preset.pretraining.generic, preset.pretraining.teacher,
                 out, seed=preset.seed, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="session")
def smoke_target(smoke_bench, smoke_teachers, tmp_path_factory):
    """One uninterrupted smoke-preset amalgamation of ``smoke_teachers`` (C = A): ``(out_dir, record)``."""
    from kalib.runs.amalgamation import run
    out = tmp_path_factory.mktemp("smoke-target")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        record = run(smoke_bench, get_preset("smoke"), smoke_teachers, out, log=lambda *_: None)
    finally:
        torch.set_num_threads(threads)
    return out, record
