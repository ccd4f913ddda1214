"""Shared fixtures: a private cache directory and the smoke-preset benchmark (a few hundred canvases)."""

import pytest
import torch

from kalib.data import load_benchmark
from kalib.presets import get_preset


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
