"""Devices (issue 7): ``--device`` resolution with clear errors, and the device plumbing leaves CPU results
exactly as they were (no autocast on the CPU; uint8 canvases stay on the CPU and move batch by batch)."""

import pytest
import torch
import torch.nn.functional as F

from kalib.device import as_device, autocast, resolve_device
from kalib.errors import DeviceError
from kalib.models import build_backbone
from kalib.train import Schedule, fit, predict

NO_GPU = not torch.cuda.is_available()


def test_auto_picks_cuda_when_available_else_cpu():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device(None).type == resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))
    assert as_device(None) == torch.device("cpu")


@pytest.mark.parametrize("name, message", [("banana", "unknown device 'banana'"), ("gpu", "unknown device 'gpu'"),
                                           ("cuda:99", "cuda:99")])
def test_unknown_or_missing_devices_are_clear_errors(name, message):
    with pytest.raises(DeviceError, match=message):
        resolve_device(name)


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(DeviceError, match="no CUDA GPU is available.*--device cpu"):
        resolve_device("cuda")


def test_autocast_is_off_on_the_cpu():
    with autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu") and not torch.is_autocast_enabled("cuda")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_cpu_device_gives_exactly_the_results_without_one(smoke_bench, one_thread):
    images, labels = smoke_bench.generic_images[:96], smoke_bench.generic_labels[:96]
    schedule = Schedule(epochs=1, lr=0.05, batch_size=32)
    nets = []
    for device in (None, "cpu", torch.device("cpu")):
        torch.manual_seed(0)
        net = build_backbone("resnet18_narrow", 20, width=8)
        history = fit(net, images, labels, F.cross_entropy, schedule, seed=1, device=device)
        nets.append((history, net.state_dict(), predict(net, smoke_bench.test_images[:50], device=device)))
    for history, state, out in nets[1:]:
        assert history == nets[0][0] and torch.equal(out, nets[0][2])
        assert all(torch.equal(v, nets[0][1][k]) for k, v in state.items())
    assert images.device.type == "cpu" and images.dtype == torch.uint8      # the data never moved
    assert nets[0][2].device.type == "cpu" and nets[0][2].dtype == torch.float32
