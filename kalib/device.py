"""Where the networks run: ``resolve_device`` for the ``--device`` option, and the per-device forward
context (bfloat16 autocast on CUDA, plain float32 elsewhere, unless a training precision says otherwise).

Canvases stay uint8 on the CPU; each batch is moved to the device on its own (``batch.to(device)``), so
a dataset never has to fit in GPU memory. On the CPU nothing changes: no autocast, same kernels, same
results as without a device argument.

Training precision (the preset's ``precision``, ``--precision``): ``fp32``, ``bf16`` (bfloat16 autocast of
convolutions and matrix products; weights, optimiser state and losses stay float32) or ``auto``
(:func:`resolve_precision`: bf16 where the device computes it natively, :func:`native_bf16`). It applies to
training steps only; evaluation forward passes keep :func:`autocast`'s default (float32 on the CPU).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from .errors import ConfigError, DeviceError

PRECISIONS = ("fp32", "bf16", "auto")
CPUINFO = Path("/proc/cpuinfo")          # where Linux lists the CPU's flags
BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # native bfloat16 arithmetic (AVX-512 BF16, AMX)


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


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively, so that bf16 autocast pays: a CUDA GPU (kalib's
    forward passes use bf16 there already), or a CPU whose flags in ``/proc/cpuinfo`` (Linux) include
    ``avx512_bf16`` or ``amx_bf16``. Anything else, a CPU whose flags cannot be read included: False."""
    device = torch.device(device)
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        text = CPUINFO.read_text(errors="replace")
    except OSError:
        return False
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.partition(":")[2].split()}
    return any(flag in flags for flag in BF16_FLAGS)


def check_precision(precision: str) -> str:
    """``precision`` if it is one of :data:`PRECISIONS`; :class:`~kalib.errors.ConfigError` otherwise."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    return precision


def resolve_precision(precision: str | None, device: torch.device) -> str:
    """The precision training runs in on ``device``: ``fp32`` or ``bf16``. ``auto`` is bf16 where
    :func:`native_bf16` says so and fp32 elsewhere; ``None`` is kalib's default before training precisions
    existed (bf16 on CUDA, fp32 elsewhere); ``bf16`` on a device other than the CPU or CUDA is refused."""
    device = torch.device(device)
    if precision is None:
        return "bf16" if device.type == "cuda" else "fp32"
    if check_precision(precision) == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    if precision == "bf16" and device.type not in ("cpu", "cuda"):
        raise ConfigError(f"precision bf16 runs on the CPU or CUDA, not on {device.type}; use fp32")
    return precision


def autocast(device: torch.device, precision: str | None = None):
    """Forward-pass context. ``precision`` (:func:`resolve_precision`) ``bf16``: bfloat16 autocast (weights
    and optimizer stay float32); ``fp32``: nothing. Default (``None``): bf16 on CUDA, nothing on other
    devices, so CPU results are exactly those of plain float32."""
    if resolve_precision(precision, device) == "bf16":
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
