"""``torchrun … -m kalib amalgamate`` end to end on the CPU (issue 37): two processes with gloo, one thread each,
against one process with the same global batch, on a small smoke run (256 pool images: 64 held out, 128 per
block and 64 for fine-tuning, in batches of 64).

* Two ``torchrun --nnodes=2`` launchers on this machine (rendezvous on 127.0.0.1), one process each, finish
  one run: the same branch points as one process, converged losses L_i^k and the held-out loss after
  fine-tuning within the stated tolerances (each process normalises its share of a batch by its own
  BatchNorm statistics, docs/design.md §10), TargetNet test mAP within :data:`MAP_TOLERANCE`.
* A run interrupted in one process resumes under ``torchrun --nproc_per_node=2``, whose rank 1 is killed
  (SIGKILL) in the middle: the job ends non-zero naming rank 1, nothing is half-written, and one process
  finishes the run from the blocks either world size saved, with the branch points of the uninterrupted run.

The subprocesses import the kalib under test (``PYTHONPATH``) and run ``sys.executable -m torch.distributed.run``,
so any virtual environment works. The exact equivalence of the training step is tests/test_distributed.py's."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_resume import Interrupt, interrupt_after, snapshot

import kalib.method.blockwise
from kalib.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]
SMALL = [f"--set={field}" for field in ("pool_images=256", "block_images=128", "finetune_images=64",
                                        "block.batch_size=64", "finetune.batch_size=64")]
LOSS_TOLERANCE = 0.002      # nats: L_i^k and the held-out loss of two runs whose batches are normalised per share
MAP_TOLERANCE = 0.5         # smoke's mAP is at chance and jumps with any change (docs/design.md §10; 0.09 here)


def amalgamate_args(teachers: Path, out: Path) -> list[str]:
    return ["amalgamate", "--preset", "smoke", "--teachers", str(teachers), "--out", str(out), "--device", "cpu", *SMALL]


def torchrun(*launcher: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *launcher, "-m", "kalib"]


def environment() -> dict:
    """This process's environment (the private KALIB_CACHE), the kalib under test first, one thread each."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def start(cmd: list[str], log) -> subprocess.Popen:
    """``cmd`` in a session of its own (its workers too), output to the file ``log``."""
    return subprocess.Popen(cmd, cwd=REPO, env=environment(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    """``proc`` and every process of its session (a launcher's workers), if any is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def losses(record: dict) -> np.ndarray:
    return np.array([list(per_block.values()) for per_block in record["converged_loss"].values()])


def assert_equivalent(record: dict, reference: dict) -> None:
    """The preset's branch points (Eq. 9's argmin may differ only between blocks whose losses tie within the
    tolerance), L_i^k, the held-out loss after fine-tuning and the TargetNet's test mAP."""
    assert record["branch_block"] == reference["branch_block"]
    mine, theirs = losses(record), losses(reference)
    assert np.abs(mine - theirs).max() < LOSS_TOLERANCE
    blocks = record["blocks"]
    for i, task in enumerate(record["tasks"]):
        a, b = blocks.index(record["chosen_block"][task]), blocks.index(reference["chosen_block"][task])
        assert abs(theirs[i, a] - theirs[i, b]) < LOSS_TOLERANCE, f"{task}: Eq. 9 picks blocks far apart"
    after = [r["heldout_loss"]["after_finetune"] for r in (record, reference)]
    assert abs(after[0] - after[1]) < LOSS_TOLERANCE
    assert abs(record["target_ap"]["mAP"] - reference["target_ap"]["mAP"]) < MAP_TOLERANCE


@pytest.fixture(scope="module")
def reference(smoke_teachers, tmp_path_factory):
    """One process, uninterrupted, in this process: ``(out_dir, record)``."""
    out = tmp_path_factory.mktemp("one-process")
    assert main(amalgamate_args(smoke_teachers, out)) == 0
    return out, json.loads((out / "run.json").read_text())


def test_two_torchrun_launchers_finish_a_run_like_one_process(smoke_teachers, reference, tmp_path):
    """A multi-node rehearsal: two launchers with ``--nnodes=2``, one process each, rendezvous (c10d) on
    127.0.0.1; rank 0 alone writes, and the record matches one process's within the tolerances."""
    out = tmp_path / "run"
    launcher = torchrun("--nnodes=2", "--nproc_per_node=1", "--rdzv-backend=c10d",
                        f"--rdzv-endpoint=127.0.0.1:{free_port()}", "--rdzv-id=kalib-test")
    logs = [(tmp_path / f"node{i}.log").open("w") for i in range(2)]
    procs = [start([*launcher, *amalgamate_args(smoke_teachers, out)], log) for log in logs]
    try:
        codes = [p.wait(timeout=400) for p in procs]
    finally:
        for p, log in zip(procs, logs):
            stop(p)
            log.close()
    text = "".join((tmp_path / f"node{i}.log").read_text() for i in range(2))
    assert codes == [0, 0], text[-3000:]
    assert text.count("data-parallel: 2 processes (torchrun, 1 on this node), backend gloo, rank 0 on cpu") == 1
    assert text.count("TargetNet and run.json in") == 1                  # only rank 0 prints
    assert not list(out.rglob(".*.tmp*")) and not list(out.rglob("*.partial.pt"))
    assert_equivalent(json.loads((out / "run.json").read_text()), reference[1])


def block_files(blocks: Path, done: int) -> list[Path]:
    """The weights and JSON of finished blocks 1..done."""
    return [blocks / f"block{k:02d}{ext}" for k in range(1, done + 1) for ext in (".pt", ".json")]


def rank_pid(launcher_pid: int, rank: int) -> int | None:
    """The process of ``rank`` among the children of a torchrun launcher (Linux /proc), or None yet."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            env = (stat.parent / "environ").read_bytes().split(b"\0") if ppid == launcher_pid else []
        except (OSError, ValueError, IndexError):
            continue
        if f"RANK={rank}".encode() in env:
            return int(stat.parent.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the rank's process in /proc")
def test_a_run_resumes_across_world_sizes_and_a_dying_rank_ends_the_job(smoke_teachers, reference, tmp_path,
                                                                       monkeypatch, capsys):
    """1 -> 2 -> 1 processes: blocks 1-2 in one process (then interrupted), blocks 3-5 under torchrun with two
    (then rank 1 is killed), the rest in one process again; the blocks each world size saved are kept."""
    out = tmp_path / "run"
    blocks = out / "blocks"
    monkeypatch.setattr(kalib.method.blockwise, "train_block", interrupt_after(2, kalib.method.blockwise.train_block))
    with pytest.raises(Interrupt):
        main([*amalgamate_args(smoke_teachers, out), "--debug"])
    monkeypatch.undo()
    first = snapshot(block_files(blocks, 2))
    assert len(first) == 4

    log = (tmp_path / "torchrun.log").open("w")
    proc = start([*torchrun("--nproc_per_node=2"), *amalgamate_args(smoke_teachers, out)], log)
    try:
        deadline = time.monotonic() + 300
        while not (blocks / "block05.json").exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "torchrun.log").read_text()[-3000:]
            time.sleep(0.005)
        os.kill(rank_pid(proc.pid, 1), signal.SIGKILL)
        code = proc.wait(timeout=120)
    finally:
        stop(proc)
        log.close()
    text = (tmp_path / "torchrun.log").read_text()
    assert code != 0 and re.search(r"rank\s*:\s*1 \(local_rank: 1\)", text), text[-3000:]
    assert "resuming after block b1_2 (2/8 finished)" in text
    done = max(int(p.stem[5:]) for p in blocks.glob("block??.json"))
    assert done == 5 and not (out / "run.json").exists()
    second = snapshot(block_files(blocks, 5))

    capsys.readouterr()
    assert main(amalgamate_args(smoke_teachers, out)) == 0
    stdout = capsys.readouterr().out
    assert "resuming after block b3_1 (5/8 finished)" in stdout
    assert snapshot(block_files(blocks, 5)) == second
    assert {k: second[k] for k in first} == first
    assert not list(out.rglob(".*.tmp*")) and not list(out.rglob("*.partial.pt"))
    assert_equivalent(json.loads((out / "run.json").read_text()), reference[1])
