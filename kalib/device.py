"""Where the networks run: ``resolve_device`` for the ``--device`` option, and the per-device forward
context (bfloat16 autocast on CUDA, plain float32 elsewhere).

Canvases stay uint8 on the CPU; each batch is moved to the device on its own (``batch.to(device)``), so
a dataset never has to fit in GPU memory. On the CPU nothing changes: no autocast, same kernels, same
results as without a device argument.
"""

from __future__ import annotations

import contextlib

import torch

from .errors import DeviceError


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"``: ``cuda`` when a GPU is available, else ``cpu``. Otherwise the named device
    (``cpu``, ``cuda``, ``cuda:N``, ``mps``), checked to exist; :class:`DeviceError` if it does not."""
    if isinstance(name, torch.device):
        name = str(name)
    if name is None or name.strip().lower() in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name.strip())
    except (RuntimeError, ValueError):
        raise DeviceError(f"unknown device '{name}'; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device '{name}' requested but no CUDA GPU is available (torch "
                              f"{torch.__version__}); use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceError(f"device '{name}' does not exist: this machine has {count} CUDA device(s), "
                              f"cuda:0..cuda:{count - 1}")
        return dev
    if dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError(f"device '{name}' requested but Apple MPS is not available; use --device cpu")
        return dev
    raise DeviceError(f"device type '{dev.type}' is not supported; use auto, cpu, cuda or cuda:N")


def as_device(device: str | torch.device | None) -> torch.device:
    """The device a library function runs on: ``None`` means the CPU (the CLI resolves ``auto``)."""
    return torch.device("cpu") if device is None else torch.device(device)


def autocast(device: torch.device):
    """Forward-pass context: bfloat16 autocast on CUDA (weights and optimizer stay float32), nothing on
    other devices, so CPU results are exactly those of plain float32."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
