"""More than one process: data-parallel training under ``torchrun`` with DistributedDataParallel (DDP).

kalib starts no process of its own. ``torchrun --nproc_per_node=N -m kalib pretrain|amalgamate …`` starts N
copies of the command; each reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (:func:`from_environment`),
joins the process group (:func:`start`: ``nccl`` with each process on ``cuda:LOCAL_RANK``, ``gloo`` on the
CPU) and runs the same steps as the others on its share of the data (docs/design.md §10):

* a training loop (:func:`kalib.train.optimise`) draws its global batches exactly as one process does, and
  each rank takes its share of every batch (:func:`share`); the modules that loop trains, and only those,
  are wrapped in DDP for that loop (:class:`Replicas`), which averages their gradients over the ranks;
* a pass over a fixed set (the held-out losses L_i^k, the teachers' soft targets) splits the set
  (:func:`bounds`) and sums or gathers what the ranks computed (:func:`sum_over_ranks`, :func:`gather_rows`);
  rows a rank keeps for later are its own share only (:class:`Shard`);
* rank 0 is the job's one writer (:func:`on_writer`, :func:`writer_context`): it alone holds the run lock and
  writes files; the others wait for it and read what it wrote.

Without torchrun none of this is active, and every function here returns what the one-process code had.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .errors import ConfigError, DeviceError

T = TypeVar("T")
TORCHRUN = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")   # what torchrun sets
# DDP's switch for syncing buffers at every forward (``broadcast_buffers`` before torch 2.14)
_NO_FORWARD_SYNC = {("forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(
    DistributedDataParallel.__init__).parameters else "broadcast_buffers"): False}
_writing = False                       # rank 0 is inside on_writer: a nested call just runs


@dataclass(frozen=True)
class World:
    """This process in a torchrun job: its global ``rank`` of ``size`` processes, its ``local_rank`` of the
    ``local_size`` on its node, and the ``device`` it trains on."""
    rank: int
    size: int
    local_rank: int
    local_size: int
    device: torch.device

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"

    def describe(self) -> str:
        return (f"data-parallel: {self.size} processes (torchrun, {self.local_size} on this node), backend "
                f"{self.backend}, rank {self.rank} on {self.device}")


def from_environment(device: str | None = None, environ: Mapping[str, str] = os.environ) -> World | None:
    """The torchrun job this process belongs to, or ``None`` when none of ``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK`` is set (one process, as always). ``device`` is the ``--device`` option: ``cpu``, ``cuda``
    (each process on ``cuda:LOCAL_RANK``) or ``auto``/``None`` (cuda where the GPUs are there). Refused in one
    line (:class:`~kalib.errors.ConfigError`), before any work: a torchrun variable missing or not a number,
    ``--device cuda:N`` or ``mps``, and fewer GPUs on this node than processes."""
    if not any(environ.get(v) for v in TORCHRUN[:3]):
        return None
    missing = [v for v in TORCHRUN if not environ.get(v)]
    if missing:
        given = ", ".join(f"{v}={environ[v]}" for v in TORCHRUN if environ.get(v))
        raise ConfigError(f"incomplete torchrun environment: {given} but no {', '.join(missing)}; start kalib "
                          "with torchrun (it sets them all), or unset these variables to run one process")
    try:
        rank, size, local_rank = (int(environ[v]) for v in TORCHRUN[:3])
        local_size = int(environ.get("LOCAL_WORLD_SIZE", local_rank + 1))
    except ValueError:
        raise ConfigError("torchrun environment: RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE must be whole "
                          "numbers; start kalib with torchrun") from None
    if not (0 <= rank < size and 0 <= local_rank < local_size):
        raise ConfigError(f"torchrun environment: RANK={rank}, LOCAL_RANK={local_rank} do not fit WORLD_SIZE={size}, "
                          f"LOCAL_WORLD_SIZE={local_size}; start kalib with torchrun")
    return World(rank, size, local_rank, local_size, _rank_device(device, local_rank, local_size))


def _rank_device(name: str | None, local_rank: int, local_size: int) -> torch.device:
    """``cuda:LOCAL_RANK`` or the CPU for ``--device`` ``name``; the GPUs must be enough for this node's processes."""
    name = (name or "auto").strip().lower()
    if name not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"--device {name} under torchrun: each process takes cuda:LOCAL_RANK; give --device cuda "
                          "(CUDA_VISIBLE_DEVICES chooses the GPUs) or cpu")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus < local_size:
        fix = f"start torchrun with --nproc_per_node={gpus} or fewer, or give --device cpu" if gpus else "give --device cpu"
        raise DeviceError(f"--device {name}: {local_size} processes on this node but {gpus} CUDA GPU(s); {fix}")
    return torch.device("cuda", local_rank)


def start(world: World) -> None:
    """Join the job's process group (``env://``: torchrun's MASTER_ADDR and MASTER_PORT)."""
    if world.device.type == "cuda":
        torch.cuda.set_device(world.device)
    dist.init_process_group(world.backend, rank=world.rank, world_size=world.size)


def stop() -> None:
    """Leave the process group (after the last collective of a job that ended well)."""
    if active():
        dist.destroy_process_group()


def active() -> bool:
    """Whether this process is one of a torchrun job's (its process group started)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def size() -> int:
    return dist.get_world_size() if active() else 1


def peer_lost(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because another process of the job stopped (gloo: the
    connection closed; nccl: a DistError)."""
    text = str(err)
    return active() and (isinstance(err, dist.DistError) or "closed by peer" in text or "reset by peer" in text)


def where() -> str:
    """`` (rank R of W)`` for an error line under torchrun; empty for one process."""
    return f" (rank {rank()} of {size()})" if active() else ""


# ------------------------------------------------------------------------------------------ sharing the work

def bounds(n: int) -> tuple[int, int]:
    """This rank's consecutive share ``[start, stop)`` of ``n`` items: ``torch.tensor_split``'s, the first
    ``n % size()`` ranks one item more; ``(0, n)`` for one process."""
    per, extra = divmod(n, size())
    r = rank()
    start = r * per + min(r, extra)
    return start, start + per + (r < extra)


def share(idx: torch.Tensor) -> torch.Tensor:
    """This rank's part of a global batch of indices (:func:`bounds`); the batch itself for one process."""
    if not active():
        return idx
    start, stop = bounds(len(idx))
    return idx[start:stop]


class Shard:
    """Rows ``start, start+1, …`` of a set, the ones this rank computed (``rows``), indexed by their
    positions in the whole set: ``shard[idx]`` for positions of this rank's share only."""

    def __init__(self, rows: torch.Tensor, start: int, total: int):
        self.rows, self.start, self.total = rows, start, total

    def __len__(self) -> int:
        return self.total

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        local = idx - self.start
        if len(local) and not (0 <= int(local.min()) and int(local.max()) < len(self.rows)):
            raise IndexError(f"rows {idx.tolist()[:4]}… are not this rank's share {self.start}.."
                             f"{self.start + len(self.rows) - 1}")
        return self.rows[local]


def shard_rows(rows: torch.Tensor, total: int) -> torch.Tensor | Shard:
    """``rows`` computed for this rank's share of a set of ``total`` (:func:`bounds`), indexed by position
    in the whole set: ``rows`` itself for one process, a :class:`Shard` otherwise."""
    return rows if not active() else Shard(rows, bounds(total)[0], total)


def _collective(t: torch.Tensor) -> torch.Tensor:
    """A copy of ``t`` where the backend reduces (the GPU for nccl)."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    return t.detach().to(device, copy=True)


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over the ranks (every rank gets the sum); ``t`` itself for one process."""
    if not active():
        return t
    total = _collective(t)
    dist.all_reduce(total)
    return total.to(t.device)


def gather_rows(rows: torch.Tensor, total: int) -> torch.Tensor:
    """The whole set's rows on every rank, from each rank's ``rows`` for its share (:func:`bounds`) of a set of
    ``total``; ``rows`` itself for one process."""
    if not active():
        return rows
    most = -(-total // size())
    padded = _collective(torch.cat([rows, rows.new_zeros(most - len(rows), *rows.shape[1:])]))
    parts = [torch.empty_like(padded) for _ in range(size())]
    dist.all_gather(parts, padded)
    counts = [total // size() + (r < total % size()) for r in range(size())]
    return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(rows.device)


# ------------------------------------------------------------------------------------- one training loop

class _Step(nn.Module):
    """What DDP wraps for one training loop: the ``module`` whose parameters the loop trains. Its forward is
    the loop's batch loss (a closure over the module's parts, e.g. student block k and the filters f_n^k), so
    that DDP sees one forward per step whatever the parts are, and nothing else (no teacher) is in it."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, batch_loss: Callable[[torch.Tensor], torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        return batch_loss(idx)


class Replicas:
    """One training loop under DDP (:func:`kalib.train.optimise`): ``module`` wrapped anew for this loop.
    Each rank computes the loss of its share of every global batch; DDP averages the gradients, and a share
    counts by its size (:meth:`backward`), so every rank steps with the gradient of the global batch's mean
    loss. BatchNorm layers normalise each share by its own statistics; at the end of every epoch all ranks take
    rank 0's running statistics (:meth:`end_epoch`)."""

    def __init__(self, module: nn.Module, batch_size: int, desc: str):
        if batch_size < size():
            raise ConfigError(f"{desc}: a batch of {batch_size} cannot be split over {size()} processes; use a "
                              f"batch of at least {size()} (--set) or fewer processes")
        self.module = module
        self.ddp = DistributedDataParallel(_Step(module), **_NO_FORWARD_SYNC)
        self.weight = 1.0

    def forward(self, batch_loss: Callable[[torch.Tensor], torch.Tensor],
                idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean loss of this rank's share of the global batch ``idx`` (through DDP), and the share."""
        part = share(idx)
        self.weight = len(part) * size() / len(idx)
        return self.ddp(batch_loss, part), part

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.weight == 1 else loss * self.weight).backward()

    def end_epoch(self, total: float, seen: int) -> tuple[float, int]:
        """The epoch's summed loss and image count over all ranks; rank 0's BatchNorm statistics everywhere."""
        for buffer in self.module.buffers():
            synced = _collective(buffer)
            dist.broadcast(synced, src=0)
            buffer.copy_(synced)
        total, seen = sum_over_ranks(torch.tensor([total, seen], dtype=torch.float64)).tolist()
        return total, int(seen)


# ------------------------------------------------------------------------------------------- one writer

def _portable(err: BaseException) -> BaseException:
    """``err`` if it survives pickling (kalib's errors do), else a RuntimeError that says what it was."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def on_writer(fn: Callable[[], T]) -> T:
    """``fn()`` run by rank 0 alone, the job's one writer (files, the run lock, decisions read from disk);
    the other ranks wait for it and get its result, so they read only what it has finished writing. An
    exception on rank 0 is raised on every rank (on the others marked ``echoed_from = 0``), so that all stop
    together. For one process, and inside another ``on_writer``: ``fn()``."""
    global _writing
    if not active() or _writing:
        return fn()
    box: list = [None]
    if rank() == 0:
        _writing = True
        try:
            box[0] = (fn(), None)
        except Exception as err:
            box[0] = (None, _portable(err))
            dist.broadcast_object_list(box, src=0)
            raise
        finally:
            _writing = False
    dist.broadcast_object_list(box, src=0)
    result, error = box[0]
    if error is not None:
        error.echoed_from = 0
        raise error
    return result


@contextlib.contextmanager
def writer_context(factory: Callable[[], contextlib.AbstractContextManager[T]]):
    """The context ``factory()`` (a run lock) held by rank 0 alone for the whole block; when entering it fails
    on rank 0 it fails on every rank (:func:`on_writer`). For one process: ``with factory()``."""
    with contextlib.ExitStack() as stack:
        yield on_writer(lambda: stack.enter_context(factory()))
