"""Data-parallel training under torchrun (issue 37, :mod:`kalib.distributed`).

Without torchrun nothing changes (every helper is the one-process code). The unit tests fork two processes
from the test process (no interpreter to start) that join a gloo group through a file: the training loop on
two ranks takes the steps of one process, the sets are split and gathered in order, rank 0 is the one
writer, and Alg. 1's held-out losses and soft targets are those of one process. The command-line tests
start real torchrun jobs (tests/test_torchrun.py)."""

import multiprocessing
import os
import pickle
import traceback

import pytest
import torch
import torch.distributed as dist
from test_amalgamate import LABELS, pool, tiny_nets
from torch import nn

from kalib import distributed
from kalib.cli import main
from kalib.errors import ConfigError, DeviceError, LockedError
from kalib.method.blockwise import amalgamate, soft_targets
from kalib.method.branch import branch_points
from kalib.method.filters import task_plan
from kalib.method.student import init_student
from kalib.runs.locks import run_lock
from kalib.train import Schedule, optimise

pytestmark = pytest.mark.usefixtures("one_thread")
TORCHRUN_ENV = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def on_two_ranks(fn, tmp_path, world: int = 2):
    """``[fn() on rank 0, fn() on rank 1]``, each in a process forked from this one, in one gloo group."""
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()

    def child(rank):
        try:
            torch.set_num_threads(1)
            dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=rank, world_size=world)
            queue.put(pickle.dumps((rank, True, fn())))       # bytes: no tensor shared through a file descriptor
        except BaseException:
            queue.put(pickle.dumps((rank, False, traceback.format_exc())))
        finally:
            queue.close()
            queue.join_thread()                 # the result is in the pipe before the process ends
            os._exit(0)
    procs = [ctx.Process(target=child, args=(r,)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        results = dict((rank, (ok, value)) for rank, ok, value in (pickle.loads(queue.get(timeout=60)) for _ in procs))
    finally:
        for p in procs:
            p.join(timeout=10)
            p.kill()
    failed = [f"rank {r}:\n{v}" for r, (ok, v) in sorted(results.items()) if not ok]
    assert not failed, "\n".join(failed)
    return [results[r][1] for r in range(world)]


# ------------------------------------------------------------------------------------------ one process

def test_without_torchrun_every_helper_is_the_one_process_code(tmp_path):
    assert distributed.from_environment("cpu", {}) is None and not distributed.active()
    assert (distributed.rank(), distributed.size(), distributed.where()) == (0, 1, "")
    idx, rows = torch.arange(7), torch.randn(7, 3)
    assert distributed.bounds(7) == (0, 7) and distributed.share(idx) is idx
    assert distributed.shard_rows(rows, 7) is rows and distributed.gather_rows(rows, 7) is rows
    assert distributed.sum_over_ranks(rows) is rows
    assert distributed.on_writer(lambda: 42) == 42
    with distributed.writer_context(lambda: run_lock(tmp_path / "run")) as lock:
        assert lock.is_file()
        with pytest.raises(LockedError):                  # it is the run lock itself
            with run_lock(tmp_path / "run"):
                pass
    assert not lock.exists()


def test_an_incomplete_torchrun_environment_is_refused_in_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    for name in TORCHRUN_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    out = tmp_path / "out"
    code = main(["amalgamate", "--preset", "smoke", "--teachers", str(tmp_path), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and not out.exists()
    assert "incomplete torchrun environment" in err and "LOCAL_RANK, MASTER_ADDR, MASTER_PORT" in err
    assert main(["reproduce", "--preset", "smoke", "--out", str(out)]) == 2 and not out.exists()
    assert "not under torchrun" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="whole numbers"):
        distributed.from_environment("cpu", {**TORCHRUN_ENV, "RANK": "one"})
    with pytest.raises(ConfigError, match="do not fit"):
        distributed.from_environment("cpu", {**TORCHRUN_ENV, "RANK": "2"})


def test_each_process_gets_its_own_gpu_and_fewer_gpus_than_processes_are_refused(monkeypatch, capsys, tmp_path):
    world = distributed.from_environment("cpu", {**TORCHRUN_ENV, "RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4"})
    assert (world.rank, world.size, world.local_rank, world.device, world.backend) == (3, 4, 1, torch.device("cpu"), "gloo")
    assert "4 processes" in world.describe() and "backend gloo" in world.describe()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    gpu = distributed.from_environment("cuda", {**TORCHRUN_ENV, "LOCAL_RANK": "1", "RANK": "1"})
    assert (gpu.device, gpu.backend) == (torch.device("cuda", 1), "nccl")
    assert distributed.from_environment(None, TORCHRUN_ENV).device == torch.device("cuda", 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match="2 processes on this node but 1 CUDA GPU"):
        distributed.from_environment("cuda", TORCHRUN_ENV)
    with pytest.raises(DeviceError, match="cuda:LOCAL_RANK"):
        distributed.from_environment("cuda:1", TORCHRUN_ENV)
    for name, value in TORCHRUN_ENV.items():
        monkeypatch.setenv(name, value)
    out = tmp_path / "out"
    assert main(["pretrain", "--preset", "smoke", "--out", str(out), "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--nproc_per_node=1" in err and not out.exists()


# ------------------------------------------------------------------------------------------- two ranks

def small_problem(norm: bool):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), *([nn.BatchNorm1d(8)] if norm else []), nn.Tanh(), nn.Linear(8, 2))
    x, y = torch.randn(48, 6), torch.randn(48, 2)
    return model, x, y


def train_small(norm: bool, batch_size: int):
    model, x, y = small_problem(norm)
    history = optimise(model.parameters(), len(x), lambda idx: ((model(x[idx]) - y[idx]) ** 2).mean(),
                       Schedule(epochs=3, lr=0.1, batch_size=batch_size), seed=5, module=model)
    return {k: v.clone() for k, v in model.state_dict().items()}, history


def test_two_ranks_take_the_steps_of_one_process_on_the_global_batch(tmp_path):
    """Each rank trains on its share of every batch (an even split and an odd one, 15 = 8 + 7); with DDP's
    averaged gradients and the shares weighted by their size the weights after 3 epochs are one process's
    (up to rounding in the reduction), the same on both ranks, and the loss history is the global mean."""
    batches = (16, 15)
    single = [train_small(False, b) for b in batches]
    ranks = on_two_ranks(lambda: [train_small(False, b) for b in batches], tmp_path)
    for (weights, history), r0, r1 in zip(single, *ranks):
        assert all(torch.equal(r0[0][k], r1[0][k]) for k in weights) and r0[1] == r1[1]
        assert all(torch.allclose(weights[k], r0[0][k], atol=1e-6) for k in weights)
        assert r0[1] == pytest.approx(history, abs=1e-6)


def test_batchnorm_normalises_each_share_and_every_rank_keeps_rank0s_statistics(tmp_path):
    """With BatchNorm each share is normalised by its own statistics, so the weights move off one process's
    (why the command-line tests compare with a tolerance), but every rank ends with the same weights and
    running statistics, so that what rank 0 writes is what every rank evaluates."""
    single, _ = train_small(True, 16)
    r0, r1 = on_two_ranks(lambda: train_small(True, 16)[0], tmp_path)
    assert all(torch.equal(r0[k], r1[k]) for k in single)
    assert not torch.allclose(single["0.weight"], r0["0.weight"], atol=1e-4)


def test_sets_are_split_in_order_and_summed_and_gathered_on_every_rank(tmp_path):
    def work():
        n, r = 5, distributed.rank()
        start, stop = distributed.bounds(n)
        rows = torch.arange(start, stop, dtype=torch.float32)[:, None].repeat(1, 2)
        shard = distributed.shard_rows(rows * 10, n)
        own = torch.arange(start, stop)
        with pytest.raises(IndexError, match="not this rank's share"):
            shard[torch.tensor([4 - 4 * r])]
        return ((start, stop), distributed.share(torch.arange(15)).tolist(), distributed.gather_rows(rows, n),
                distributed.sum_over_ranks(torch.tensor([r + 1.0])), torch.equal(shard[own], rows * 10), distributed.where())
    (b0, s0, g0, t0, ok0, w0), (b1, s1, g1, t1, ok1, w1) = on_two_ranks(work, tmp_path)
    assert (b0, b1) == ((0, 3), (3, 5)) and (s0, s1) == (list(range(8)), list(range(8, 15)))
    assert torch.equal(g0, g1) and g0[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert t0.item() == t1.item() == 3 and ok0 and ok1 and (w0, w1) == (" (rank 0 of 2)", " (rank 1 of 2)")


def test_rank0_is_the_one_writer_and_its_errors_stop_every_rank(tmp_path):
    def refuse():
        raise ConfigError(f"refused on rank {distributed.rank()}")

    def work():
        result = distributed.on_writer(lambda: distributed.on_writer(lambda: f"written by rank {distributed.rank()}"))
        try:
            distributed.on_writer(refuse)
        except ConfigError as err:
            error = (str(err), getattr(err, "echoed_from", None))
        with distributed.writer_context(lambda: run_lock(tmp_path / "run")) as lock:
            held = lock.is_file()
            dist.barrier()
        return result, error, held
    (res0, err0, held0), (res1, err1, held1) = on_two_ranks(work, tmp_path)
    assert res0 == res1 == "written by rank 0"
    assert err0 == ("refused on rank 0", None) and err1 == ("refused on rank 0", 0)
    assert held0 and held1 and not (tmp_path / "run" / ".run.lock").exists()


def test_alg1_on_two_ranks_gives_one_process_soft_targets_and_heldout_losses(tmp_path):
    """Alg. 1 (kalib.method.blockwise.amalgamate) where training changes nothing that evaluation sees (a tiny
    learning rate, BatchNorm statistics kept): the soft targets each rank computes for its share and gathers,
    the held-out losses L_i^k summed over the ranks' shares of the slice (whose F_u^k each rank keeps for its
    share, block after block) and the prefix F_u^{k-1} recomputed per batch are one process's, so are Eq. 9's
    branch points."""
    def run():
        generic, teachers = tiny_nets()
        student = init_student("teacher-mean", teachers, generic, seed=0)
        for m in student.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.momentum = 0.0
        plan = task_plan(None, [list(g) for g in LABELS])
        result = amalgamate(student, teachers, plan, pool(26), Schedule(epochs=1, lr=1e-9, batch_size=8), heldout=9)
        return soft_targets(teachers, pool(26), plan), result.losses, branch_points(result.losses)
    soft, losses, points = run()
    (soft0, losses0, points0), (soft1, losses1, points1) = on_two_ranks(run, tmp_path)
    assert torch.allclose(soft0, soft, atol=1e-5) and torch.equal(soft0, soft1)
    assert abs(losses0 - losses).max() < 1e-5 and (losses0 == losses1).all()
    assert points0 == points1 == points
