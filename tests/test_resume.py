"""Resume (issue 7): per-epoch checkpoints in the shared training loop, teacher pretraining and block-wise
amalgamation resume to exactly the weights of an uninterrupted run; another configuration is refused
(``--restart`` discards only that run's state); a real ``python -m kalib amalgamate`` killed with
SIGKILL in the middle of a block resumes at that block and ends with the uninterrupted run's result."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_amalgamate import pool, tiny_nets, tiny_preset, write_teachers
from torch import nn

import kalib.method.blockwise
import kalib.method.teachers
from kalib.cli import main
from kalib.errors import ConfigMismatchError
from kalib.runs.amalgamation import run
from kalib.runs.checkpoints import EpochFile, load_state, load_target
from kalib.runs.teachers import pretrain
from kalib.train import Schedule, optimise

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


class Interrupt(Exception):
    """Stands in for a kill: raised from inside the training loop after a given number of steps."""


def interrupt_after(calls: int, fn):
    """``fn`` wrapped so that its ``calls + 1``-th call raises :class:`Interrupt`."""
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise Interrupt(f"interrupted at call {count['n']}")
        return fn(*args, **kwargs)
    return wrapped


def state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def snapshot(paths):
    return {Path(p).name: (Path(p).read_bytes(), Path(p).stat().st_mtime_ns) for p in paths}


# -------------------------------------------------------------------------------- the training loop

def small_problem(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    x, y = torch.randn(40, 6), torch.randn(40, 1)
    return model, x, y


def train_small(model, x, y, schedule, checkpoint=None, loss=None):
    loss = loss or (lambda idx: ((model(x[idx]) - y[idx]) ** 2).mean())
    store = EpochFile(checkpoint, "test") if checkpoint is not None else None
    return optimise(model.parameters(), len(x), loss, schedule, seed=3, module=model, store=store)


def test_optimise_resumes_to_the_same_weights_after_an_interruption(tmp_path):
    schedule = Schedule(epochs=4, lr=0.05, batch_size=8)          # 5 steps per epoch
    model, x, y = small_problem()
    history = train_small(model, x, y, schedule)
    reference = state(model)

    model, x, y = small_problem()
    ckpt = tmp_path / "epoch.pt"
    plain = lambda idx: ((model(x[idx]) - y[idx]) ** 2).mean()    # noqa: E731
    with pytest.raises(Interrupt):
        train_small(model, x, y, schedule, ckpt, loss=interrupt_after(12, plain))   # dies in epoch 3
    saved = load_state(ckpt)
    assert len(saved["history"]) == 2 and saved["format"] == "kalib-epoch-checkpoint"
    model, x, y = small_problem()                                  # a fresh process: fresh weights
    assert train_small(model, x, y, schedule, ckpt) == history     # epochs 1-2 from the checkpoint
    assert same(state(model), reference)
    # a finished checkpoint is a no-op resume; another schedule is refused with --restart in the message
    model, x, y = small_problem()
    assert train_small(model, x, y, schedule, ckpt) == history and same(state(model), reference)
    with pytest.raises(ConfigMismatchError, match="--restart"):
        train_small(model, x, y, dataclasses.replace(schedule, lr=0.1), ckpt)


def test_epoch_checkpoints_are_written_atomically(tmp_path, monkeypatch):
    """The epoch state goes to a temporary file that is renamed over the old one: a crash while writing
    epoch 2 leaves epoch 1's checkpoint intact and loadable."""
    schedule = Schedule(epochs=2, lr=0.05, batch_size=8)
    model, x, y = small_problem()
    ckpt = tmp_path / "epoch.pt"
    plain = lambda idx: ((model(x[idx]) - y[idx]) ** 2).mean()    # noqa: E731
    with pytest.raises(Interrupt):
        train_small(model, x, y, schedule, ckpt, loss=interrupt_after(6, plain))
    before = ckpt.read_bytes()

    def crash(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", crash)
    model, x, y = small_problem()
    with pytest.raises(OSError, match="disk full"):
        train_small(model, x, y, schedule, ckpt)
    monkeypatch.undo()
    assert ckpt.read_bytes() == before and len(load_state(ckpt)["history"]) == 1


# ----------------------------------------------------------------------------------- teacher pretraining

GROUPS = (("coat", "bag", "seven"),)


@pytest.fixture
def small_bench(smoke_bench):
    """The smoke benchmark cut to 128 generic and train canvases: two steps per epoch at batch 64."""
    return dataclasses.replace(smoke_bench, train_images=smoke_bench.train_images[:128],
                               train_labels=smoke_bench.train_labels[:128],
                               generic_images=smoke_bench.generic_images[:128],
                               generic_labels=smoke_bench.generic_labels[:128])
NET = {"width": 8}
ONE = Schedule(epochs=1, lr=0.05, batch_size=64, weight_decay=5e-4)
TWO = Schedule(epochs=2, lr=0.05, batch_size=64, weight_decay=5e-4)


def test_pretrain_resumes_a_teacher_from_its_last_epoch(small_bench, tmp_path, monkeypatch):
    reference = pretrain(small_bench, GROUPS, "resnet18_narrow", NET, ONE, TWO, tmp_path / "ref", log=lambda *_: None)
    out = tmp_path / "run"
    # 2 steps per epoch: the teacher dies at step 1 of its second epoch
    monkeypatch.setattr(kalib.method.teachers, "teacher_loss", interrupt_after(2, kalib.method.teachers.teacher_loss))
    with pytest.raises(Interrupt):
        pretrain(small_bench, GROUPS, "resnet18_narrow", NET, ONE, TWO, out, log=lambda *_: None)
    monkeypatch.undo()
    partial = out / "partial" / "set1-teacher1-resnet18_narrow.pt"
    assert (out / "generic-resnet18_narrow.pt").is_file() and len(load_state(partial)["history"]) == 1
    generic = snapshot([out / "generic-resnet18_narrow.pt", out / "generic-resnet18_narrow.json"])
    (out / "partial" / "generic-resnet18_narrow.pt").write_bytes(b"left by a kill right after the save")
    logs = []
    paths = pretrain(small_bench, GROUPS, "resnet18_narrow", NET, ONE, TWO, out, log=logs.append)
    assert any("resuming from" in line and "set1-teacher1-resnet18_narrow" in line for line in logs), logs
    assert not any(line.startswith("generic") for line in logs)        # the finished generic is re-used
    assert snapshot([out / "generic-resnet18_narrow.pt", out / "generic-resnet18_narrow.json"]) == generic
    assert not partial.exists() and not (out / "partial").exists()
    assert same(load_state(paths[0]), load_state(reference[0]))       # the uninterrupted run's weights


def test_pretrain_refuses_another_configuration_and_restart_retrains_only_that(small_bench, tmp_path):
    out = tmp_path / "t"
    pretrain(small_bench, GROUPS, "resnet18_narrow", NET, ONE, ONE, out, log=lambda *_: None)
    files = sorted(out.iterdir())
    before = snapshot(files)
    with pytest.raises(ConfigMismatchError, match="another configuration.*--restart"):
        pretrain(small_bench, GROUPS, "resnet18_narrow", NET, ONE, TWO, out, log=lambda *_: None)
    assert snapshot(files) == before                                  # nothing finished was touched
    logs = []
    paths = pretrain(small_bench, GROUPS, "resnet18_narrow", NET, ONE, TWO, out, log=logs.append, restart=True)
    after = snapshot(files)
    # the generic stage's settings did not change: it is re-used; the teacher is retrained
    assert after["generic-resnet18_narrow.pt"] == before["generic-resnet18_narrow.pt"]
    assert after["set1-teacher1-resnet18_narrow.pt"] != before["set1-teacher1-resnet18_narrow.pt"]
    assert any("--restart: removed" in line for line in logs)
    assert json.loads(paths[0].with_suffix(".json").read_text())["config_hash"]


# --------------------------------------------------------------------------------------- amalgamation

def tiny_bench():
    from kalib.data import Benchmark, BenchmarkSpec
    return Benchmark(spec=BenchmarkSpec(), train_images=None, train_labels=None, pool_images=pool(32),
                     test_images=None, test_labels=None, generic_images=None, generic_labels=None,
                     label_names=("a", "b", "c", "d", "e"))


def test_amalgamation_resumes_inside_a_block_per_epoch(tmp_path, monkeypatch):
    generic, teachers = tiny_nets()
    write_teachers(tmp_path / "t", generic, teachers)
    preset = tiny_preset().replace(block=Schedule(epochs=3, lr=0.05, batch_size=8, weight_decay=5e-4))
    reference = run(tiny_bench(), preset, tmp_path / "t", tmp_path / "ref", evaluate=False, log=lambda s: None)

    out = tmp_path / "out"
    # 16 images per block, batch 8: 2 steps per epoch, 6 per block; die in block 2, epoch 3, step 1
    monkeypatch.setattr(kalib.method.blockwise, "filtered_loss", interrupt_after(10, kalib.method.blockwise.filtered_loss))
    with pytest.raises(Interrupt):
        run(tiny_bench(), preset, tmp_path / "t", out, evaluate=False, log=lambda s: None)
    monkeypatch.undo()
    blocks = out / "blocks"
    assert (blocks / "block01.json").is_file() and not (blocks / "block02.json").exists()
    assert len(load_state(blocks / "block02.partial.pt")["history"]) == 2
    first = snapshot([blocks / "block01.pt", blocks / "block01.json"])
    (blocks / "block01.partial.pt").write_bytes(b"left by a kill right after block 1 was saved")
    logs = []
    resumed = run(tiny_bench(), preset, tmp_path / "t", out, evaluate=False, log=logs.append)
    assert "resuming after block b1_1 (1/8 finished)" in logs[0]
    assert any("block b1_2 (2/8): resuming from" in line for line in logs), logs
    assert snapshot([blocks / "block01.pt", blocks / "block01.json"]) == first
    assert not list(blocks.glob("*.partial.pt"))
    for key in ("converged_loss", "block_train_loss", "chosen_block", "finetune_loss", "heldout_loss"):
        assert resumed[key] == reference[key], key
    assert same(load_state(out / "targetnet.pt"), load_state(tmp_path / "ref" / "targetnet.pt"))


@pytest.fixture(scope="module")
def tiny_finished(tmp_path_factory):
    """Tiny teachers and one finished tiny amalgamation (``t/``, ``out/``); tests work on a copy."""
    base = tmp_path_factory.mktemp("tiny-finished")
    generic, teachers = tiny_nets()
    write_teachers(base / "t", generic, teachers)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run(tiny_bench(), tiny_preset(), base / "t", base / "out", evaluate=False, log=lambda s: None)
    finally:
        torch.set_num_threads(threads)
    return base


def test_amalgamation_refuses_other_settings_and_restart_discards_only_its_blocks(tiny_finished, tmp_path):
    shutil.copytree(tiny_finished, tmp_path, dirs_exist_ok=True)
    teacher_files = snapshot(sorted(p for p in (tmp_path / "t").rglob("*") if p.is_file()))   # + cached soft targets
    blocks = tmp_path / "out" / "blocks"
    before = snapshot(sorted(blocks.glob("block*")))
    with pytest.raises(ConfigMismatchError, match=r"another configuration \(changed: seed, tasks\).*--restart"):
        run(tiny_bench(), tiny_preset(), tmp_path / "t", tmp_path / "out", tasks="a,d", seed=5, evaluate=False,
            log=lambda s: None)
    assert snapshot(sorted(blocks.glob("block*"))) == before
    logs = []
    record = run(tiny_bench(), tiny_preset(), tmp_path / "t", tmp_path / "out", tasks="a,d", seed=5,
                 evaluate=False, log=logs.append, restart=True)
    assert record["tasks"] == ["a", "d"] and any("--restart: removed" in line for line in logs)
    assert not any("resuming" in line for line in logs)
    assert snapshot(sorted(p for p in (tmp_path / "t").rglob("*") if p.is_file())) == teacher_files   # untouched


def test_a_corrupt_block_state_is_trained_again_and_the_blocks_before_it_are_kept(tiny_finished, tmp_path):
    """Block 8's weights no longer match the digest in its JSON: the rerun says so, keeps blocks 1-7 as
    they are, trains block 8 again and ends with the uninterrupted run's TargetNet."""
    shutil.copytree(tiny_finished, tmp_path, dirs_exist_ok=True)
    blocks = tmp_path / "out" / "blocks"
    reference = load_state(tmp_path / "out" / "targetnet.pt")
    kept = snapshot(sorted(p for k in range(1, 8) for p in blocks.glob(f"block{k:02d}.*")))
    block = blocks / "block08.pt"
    block.write_bytes(block.read_bytes()[:1000])
    (tmp_path / "out" / "run.json").unlink()       # unfinished: the rerun has to read the blocks
    logs = []
    run(tiny_bench(), tiny_preset(), tmp_path / "t", tmp_path / "out", evaluate=False, log=logs.append)
    assert any(f"{block} is missing, corrupt or truncated; training again from block 8" in line for line in logs)
    assert "resuming after block b4_1 (7/8 finished)" in logs
    assert snapshot(sorted(p for k in range(1, 8) for p in blocks.glob(f"block{k:02d}.*"))) == kept
    assert load_state(block)["student"].keys() and same(load_state(tmp_path / "out" / "targetnet.pt"), reference)


# ------------------------------------------------------------------------ SIGKILL of a real CLI run

def test_sigkill_mid_block_resumes_at_that_block_with_the_uninterrupted_result(smoke_teachers, smoke_target,
                                                                                tmp_path, capsys):
    """``python -m kalib amalgamate`` is killed (SIGKILL) once block 2 is saved, i.e. in block 3 or later;
    the same command (run in-process to save an interpreter start) resumes at the first unfinished block,
    leaves the finished blocks' files as they were and ends with the uninterrupted run's result."""
    ref_dir, reference = smoke_target
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "kalib", "amalgamate", "--preset", "smoke", "--teachers", str(smoke_teachers),
           "--out", str(out), "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (tmp_path / "killed.log").open("w")       # a file, not a pipe: a full pipe would stall the run
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    marker = out / "blocks" / "block02.json"      # written once block 2 is finished: block 3 is starting
    deadline = time.monotonic() + 300
    try:
        while not marker.exists():
            assert proc.poll() is None, \
                f"the run ended before block 2 finished: {(tmp_path / 'killed.log').read_text()[-2000:]}"
            assert time.monotonic() < deadline, "block 2 did not finish in 300 s"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        log.close()
    assert proc.returncode == -signal.SIGKILL
    blocks = out / "blocks"
    done = max(int(p.stem[5:]) for p in blocks.glob("block??.json"))
    assert 2 <= done < 8 and not (out / "run.json").exists(), f"killed after block {done}, not mid-run"
    finished = [blocks / f"block{k:02d}{ext}" for k in range(1, done + 1) for ext in (".pt", ".json")]
    before = snapshot(finished)

    capsys.readouterr()
    code = main(cmd[3:])
    stdout, stderr = capsys.readouterr()
    assert code == 0, stderr[-2000:]
    names = reference["blocks"]
    assert f"resuming after block {names[done - 1]} ({done}/8 finished)" in stdout
    assert sum("held-out loss" in line for line in stdout.splitlines()) == 8 - done
    assert "at chance level" in stdout.splitlines()[-1]                 # smoke's TargetNet learned nothing
    assert snapshot(finished) == before                      # blocks 1..k-1 untouched: bytes and mtime
    assert not list(blocks.glob(".*.tmp*")) and not list(blocks.glob("*.partial.pt"))

    record = json.loads((out / "run.json").read_text())
    volatile = {"seconds", "peak_rss_mb"}
    assert {k: v for k, v in record.items() if k not in volatile} == \
           {k: v for k, v in json.loads((ref_dir / "run.json").read_text()).items() if k not in volatile}
    assert same(load_state(out / "targetnet.pt"), load_state(ref_dir / "targetnet.pt"))
    _, meta = load_target(out / "targetnet.pt")
    assert meta["test_ap"] == reference["target_ap"]


# --------------------------------------------------------------------------------- NaN through the CLI

def test_nan_loss_stops_names_block_and_step_and_keeps_the_last_good_state(smoke_teachers, smoke_bench, tmp_path,
                                                                            monkeypatch, capsys):
    """Block 3 goes NaN in its second epoch: exit 2 with one line naming block and step; blocks 1-2 and
    block 3's first-epoch checkpoint stay on disk; nothing is written as finished after the NaN."""
    calls = {"n": 0}
    original = kalib.method.blockwise.entangled_predictions

    def nan_in_block3(features, k, *args):
        out = original(features, k, *args)
        if k == 3 and torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] > 3:                   # 96 images / batch 32 = 3 steps per epoch
                return out * float("nan")
        return out
    monkeypatch.setattr(kalib.method.blockwise, "entangled_predictions", nan_in_block3)
    out = tmp_path / "run"
    code = main(["amalgamate", "--preset", "smoke", "--teachers", str(smoke_teachers), "--out", str(out),
                 "--device", "cpu", "--set", "block.epochs=2", "--set", "block_images=96"])
    err = capsys.readouterr().err.strip()
    lines = [line for line in err.splitlines() if line.startswith("kalib")]      # the rest is tqdm progress
    assert code == 2 and len(lines) == 1 and err.endswith(lines[0]) and "Traceback" not in err
    err = lines[0]
    assert "block b2_1 (3/8): loss became nan at epoch 2, step 1" in err
    assert "last good epoch checkpoint" in err and "block03.partial.pt" in err
    blocks = out / "blocks"
    assert all((blocks / f"block{k:02d}{ext}").is_file() for k in (1, 2) for ext in (".pt", ".json"))
    assert not (blocks / "block03.json").exists() and not (out / "run.json").exists()
    partial = load_state(blocks / "block03.partial.pt")
    assert len(partial["history"]) == 1 and all(torch.isfinite(v).all() for v in partial["model"].values()
                                                 if v.is_floating_point())


def test_a_finished_run_is_returned_as_it_is_and_side_runs_skip_the_branch_curves(smoke_bench, smoke_teachers,
                                                                                   smoke_target, tmp_path, one_thread):
    import shutil

    from kalib.runs.amalgamation import run
    from kalib.runs.presets import get_preset
    out_dir, record = smoke_target
    copy_dir = tmp_path / "run"
    shutil.copytree(out_dir, copy_dir)
    before = (copy_dir / "targetnet.pt").stat().st_mtime_ns
    lines = []
    again = run(smoke_bench, get_preset("smoke"), smoke_teachers, copy_dir, log=lines.append)
    assert again == record and any("re-using the finished run" in line for line in lines)
    assert (copy_dir / "targetnet.pt").stat().st_mtime_ns == before           # nothing trained or written again
    side = run(smoke_bench, get_preset("smoke"), smoke_teachers, copy_dir, branch_curves=False, log=lambda *_: None)
    assert "branch_ap" not in side and side["target_ap"] == record["target_ap"]   # same blocks, same fine-tuning
    assert side["run_key"] != record["run_key"]
