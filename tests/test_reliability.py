"""Reliability, second round (issue 18): foreign teachers are refused, a damaged result is never re-used,
``--restart`` redoes a finished run, every I/O fault is one line with exit code 2, one process at a time
writes into a run directory, and checkpoint names say what they hold (old names still load). Every case
checks the exit code, the message and that finished files are unchanged."""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_errors import T1, T2, amalgamate, assert_one_line, cli, finished, snapshot, teachers  # noqa: F401

import kalib.cli
import kalib.errors
import kalib.files
import kalib.runs.checkpoints
from kalib.runs.checkpoints import load_state

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parents[1]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def no_data(*args, **kwargs):
    pytest.fail("the data was loaded: the check came after work had started")


# ------------------------------------------------------------------------------------- foreign teachers

@pytest.mark.parametrize("override, needle", [
    ("data.seed=1", "was trained on other data (data key"),
    ("arch_kwargs.width=16", "is a resnet18_narrow of another architecture config (width 8, this run's 16)"),
])
def test_teachers_of_other_data_or_another_width_are_refused(capsys, teachers, finished, monkeypatch, override,
                                                           needle):
    monkeypatch.setattr(kalib.cli, "load_data", no_data)
    before_t, before_r = snapshot(teachers), snapshot(finished)
    code, _, err = cli(capsys, *amalgamate(teachers, finished, "--set", override))
    assert_one_line(code, err, str(teachers / T1), needle,
                    "pretrain teachers with this run's --preset and --set values, or amalgamate with the")
    assert snapshot(teachers) == before_t and snapshot(finished) == before_r


def test_teachers_of_the_run_architecture_config_pass_when_it_holds_tuples(tmp_path):
    """A DenseNet's block_config is a tuple in the preset and a list in the checkpoint's JSON: the same."""
    from kalib.runs.state import check_teachers
    kwargs = {"block_config": (2, 2, 2, 2), "growth_rate": 12}
    meta = {"role": "teacher", "labels": ["coat"], "config": {"arch": "densenet_small", "block_config": [2, 2, 2, 2],
                                                               "growth_rate": 12}}
    check_teachers([tmp_path / "t.pt"], [meta], "densenet_small", ["coat"], arch_kwargs=kwargs)
    with pytest.raises(kalib.errors.CheckpointError, match=r"block_config \[2, 2, 2, 2\], this run's \[2, 2, 4"):
        check_teachers([tmp_path / "t.pt"], [meta], "densenet_small", ["coat"],
                       arch_kwargs={**kwargs, "block_config": (2, 2, 4, 2)})


# ------------------------------------------------------------------------------- damaged finished runs

def test_a_damaged_targetnet_is_not_reused_but_redone_from_the_finished_blocks(capsys, teachers, finished,
                                                                              smoke_target):
    blocks = snapshot(finished / "blocks")
    target = finished / "targetnet.pt"
    target.write_bytes(target.read_bytes()[:2000])
    code, out, err = cli(capsys, *amalgamate(teachers, finished))
    assert code == 0, err
    assert f"targetnet.pt in {finished} missing, corrupt or truncated (not what run.json recorded)" in out
    assert "re-using the finished run" not in out and "resuming after block b4_2 (8/8 finished)" in out
    assert snapshot(finished / "blocks") == blocks                     # the finished blocks, as they were
    assert same(load_state(target), load_state(smoke_target[0] / "targetnet.pt"))
    record = json.loads((finished / "run.json").read_text())
    assert record["target_ap"] == smoke_target[1]["target_ap"] and record["files"] == smoke_target[1]["files"]


def test_restart_redoes_a_finished_run_from_scratch(capsys, teachers, finished, smoke_target):
    before_t = snapshot(teachers)
    target = finished / "targetnet.pt"
    target.write_bytes(target.read_bytes()[:2000])
    trained = {p.name: p.stat().st_mtime_ns for p in (finished / "blocks").glob("block*.pt")}
    code, out, err = cli(capsys, *amalgamate(teachers, finished, "--restart"))
    assert code == 0, err
    for removed in (finished / "run.json", target, finished / "blocks"):
        assert f"--restart: removed {removed}\n" in out
    assert "re-using" not in out and "resuming" not in out
    assert all(p.stat().st_mtime_ns != trained[p.name] for p in (finished / "blocks").glob("block*.pt"))
    assert same(load_state(target), load_state(smoke_target[0] / "targetnet.pt"))
    assert snapshot(teachers) == before_t


# --------------------------------------------------------------------------------- damaged teachers

@pytest.mark.parametrize("damage", ["random bytes", "truncated"])
def test_a_corrupt_or_truncated_teacher_is_named(capsys, teachers, tmp_path, damage):
    data = (teachers / T1).read_bytes()
    (teachers / T1).write_bytes(os.urandom(len(data)) if damage == "random bytes" else data[:len(data) // 2])
    before = snapshot(teachers)
    for args in (["evaluate", teachers / T1], amalgamate(teachers, tmp_path / "out")):
        code, _, err = cli(capsys, *args)
        assert_one_line(code, err, f"{teachers / T1} is corrupt or truncated", "rerun the command that wrote it")
        assert "does not match its architecture" not in err
    assert snapshot(teachers) == before and not (tmp_path / "out").exists()


def test_pretrain_trains_a_damaged_teacher_again_and_keeps_the_rest(capsys, teachers, smoke_teachers):
    (teachers / T2).write_bytes(b"\0" * 100)
    kept = {name: v for name, v in snapshot(teachers).items() if not name.startswith(Path(T2).stem)}
    code, out, err = cli(capsys, "pretrain", "--preset", "smoke", "--out", teachers, "--device", "cpu")
    assert code == 0, err
    assert f"{teachers / T2} is corrupt or truncated (its bytes do not match the digest in its JSON); training " \
           "it again" in out
    assert {name: v for name, v in snapshot(teachers).items() if name in kept} == kept
    assert same(load_state(teachers / T2), load_state(smoke_teachers / T2))


# ------------------------------------------------------------------------------------ I/O faults

def test_a_read_only_output_directory_is_named_before_any_work(capsys, teachers, tmp_path, monkeypatch):
    out = tmp_path / "read-only"
    out.mkdir()
    if os.geteuid() == 0:            # root writes anywhere: the directory says it is not writable
        access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == out else access(p, mode, **kw))
    else:
        out.chmod(0o555)
    monkeypatch.setattr(kalib.cli, "load_data", no_data)
    for args in (amalgamate(teachers, out / "run"), ["pretrain", "--preset", "smoke", "--out", out / "teachers"],
                 ["evaluate", teachers / T1, "--out", out / "ap.json"]):
        code, _, err = cli(capsys, *args)
        assert_one_line(code, err, f"cannot write into {out} (permission denied or read-only)",
                        "choose an --out you can write to, or make it writable")
    assert not any(out.iterdir())


def test_a_permission_error_while_writing_is_one_line(capsys, teachers, tmp_path, monkeypatch):
    def denied(obj, f, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(f))
    monkeypatch.setattr(torch, "save", denied)
    before = snapshot(teachers)
    code, _, err = cli(capsys, *amalgamate(teachers, tmp_path / "run"))
    assert_one_line(code, err, f"cannot write {tmp_path}", "(Permission denied); choose an --out directory you can")
    assert snapshot(teachers) == before and not list(tmp_path.rglob(".*.tmp*"))


def test_a_full_disk_mid_run_is_one_line_and_the_run_resumes(capsys, teachers, tmp_path, monkeypatch, smoke_target):
    """The disk fills up while block 3 is saved: exit 2 naming the file; blocks 1-2 stay, no temporary file
    is left; once there is space the same command resumes after block 2 and ends with the uninterrupted
    run's TargetNet. torch.save's own report of a failed write on a full disk reads the same."""
    save = torch.save

    def full(obj, f, *args, **kwargs):
        if Path(f).name.startswith(".block03.pt"):
            Path(f).write_bytes(b"the first bytes")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save(obj, f, *args, **kwargs)
    out = tmp_path / "run"
    monkeypatch.setattr(torch, "save", full)
    code, _, err = cli(capsys, *amalgamate(teachers, out))
    assert_one_line(code, err, f"no space left writing {out / 'blocks' / 'block03.pt'}",
                    "rerun the same command to resume")
    assert not list(out.rglob(".*.tmp*")) and not (out / "blocks" / "block03.pt").exists()
    kept = snapshot(out / "blocks")
    monkeypatch.setattr(torch, "save", save)
    code, stdout, err = cli(capsys, *amalgamate(teachers, out))
    assert code == 0, err
    assert "resuming after block b1_2 (2/8 finished)" in stdout
    assert {k: v for k, v in snapshot(out / "blocks").items() if k.startswith(("block01", "block02"))} == \
        {k: v for k, v in kept.items() if k.startswith(("block01", "block02"))}
    assert same(load_state(out / "targetnet.pt"), load_state(smoke_target[0] / "targetnet.pt"))

    def stream_writer_failed(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")
    monkeypatch.setattr(torch, "save", stream_writer_failed)
    monkeypatch.setattr(kalib.files, "_disk_full", lambda directory: True)
    code, _, err = cli(capsys, *amalgamate(teachers, tmp_path / "again"))
    assert_one_line(code, err, f"no space left writing {tmp_path / 'again' / 'blocks' / 'block01.partial.pt'}")


def test_out_that_is_a_file_and_evaluate_out_that_is_a_directory_are_refused_first(capsys, teachers, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.setattr(kalib.cli, "load_data", no_data)
    a_file = tmp_path / "a-file"
    a_file.write_text("kept")
    for args in (amalgamate(teachers, a_file), ["pretrain", "--preset", "smoke", "--out", a_file],
                 ["reproduce", "--preset", "smoke", "--out", a_file]):
        code, _, err = cli(capsys, *args)
        assert_one_line(code, err, f"--out {a_file} is a file; give a directory")
    code, _, err = cli(capsys, "evaluate", teachers / T1, "--out", tmp_path)
    assert_one_line(code, err, f"--out {tmp_path} is a directory; evaluate writes one JSON file",
                    str(tmp_path / "ap.json"))
    code, _, err = cli(capsys, "evaluate", teachers / T1, "--out", a_file / "ap.json")
    assert_one_line(code, err, f"{a_file} is a file, not a directory")
    assert a_file.read_text() == "kept"


def test_a_truncated_canvas_cache_is_rendered_again(tmp_path, monkeypatch, capsys):
    from kalib.data import BenchmarkSpec, load_benchmark
    monkeypatch.setenv("KALIB_CACHE", str(tmp_path))
    spec = BenchmarkSpec(n_train=8, n_pool=8, n_test=8, n_val=8, n_generic=8)
    first = load_benchmark(spec)
    path = tmp_path / f"embedded-{spec.key()}.npz"
    intact = path.read_bytes()
    for damaged in (intact[:len(intact) // 2], b"not a zip file"):
        path.write_bytes(damaged)
        capsys.readouterr()
        again = load_benchmark(spec)
        err = capsys.readouterr().err
        assert f"canvas cache {path} is damaged" in err and "rendering the canvases again" in err
        assert path.read_bytes() == intact and not list(tmp_path.glob(".*.tmp*"))
        assert torch.equal(again.pool_images, first.pool_images) and torch.equal(again.test_labels, first.test_labels)


# -------------------------------------------------------------------------------------- --set values

@pytest.mark.parametrize("value, needle", [
    ("loss_slice=0", "loss_slice must be >= 1"),
    ("loss_slice=100000", "must be smaller than the amalgamation pool"),
    ("data.n_test=0", "--set data.n_test=0: invalid data: n_test must be >= 1, got 0"),
    ("data.n_train=-5", "--set data.n_train=-5: invalid data: n_train must be >= 1, got -5"),
    ("block.lr=inf", "--set block.lr=inf: invalid schedule: lr must be > 0 and finite, got inf"),
    ("teacher.lr=nan", "lr must be > 0 and finite, got nan"),
    ("student_init=mean", "student_init must be one of generic, random, teacher1, teacher-mean, got 'mean'"),
])
def test_set_values_that_cannot_run_are_refused_before_any_work(capsys, teachers, finished, tmp_path, monkeypatch,
                                                                value, needle):
    monkeypatch.setattr(kalib.cli, "load_data", no_data)
    before_t, before_r = snapshot(teachers), snapshot(finished)
    for args in (amalgamate(teachers, finished, "--set", value),
                 ["pretrain", "--preset", "smoke", "--out", teachers, "--set", value],
                 ["reproduce", "--preset", "smoke", "--out", tmp_path / "new-run", "--set", value]):
        code, _, err = cli(capsys, *args)
        assert_one_line(code, err, needle)
    assert snapshot(teachers) == before_t and snapshot(finished) == before_r and not (tmp_path / "new-run").exists()


# ---------------------------------------------------------------------------------------- evaluate

def test_evaluate_names_the_teacher_that_holds_a_label(capsys, teachers):
    theirs = json.loads((teachers / T2).with_suffix(".json").read_text())["labels"][0]
    before = snapshot(teachers)
    code, _, err = cli(capsys, "evaluate", teachers / T1, "--tasks", theirs)
    assert_one_line(code, err, f"{teachers / T1} does not predict '{theirs}' (a label of {teachers / T2})",
                    "evaluate that checkpoint, or choose from this one's labels: ")
    assert snapshot(teachers) == before


# ------------------------------------------------------------------------------------ one writer

def hold(directory: Path, name: str) -> subprocess.Popen:
    """A process that holds the lock ``directory/.NAME.lock`` until it is killed."""
    code = ("import sys, time\nfrom kalib.runs.locks import run_lock\nwith run_lock(sys.argv[1], sys.argv[2], "
            "what='the test holder'):\n    print('held', flush=True)\n    time.sleep(600)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(directory), name], stdout=subprocess.PIPE,
                              text=True, cwd=REPO)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_pretrain_waits_for_the_holder_then_reuses_the_teachers(teachers):
    before = snapshot(teachers)
    holder = hold(teachers, "pretrain-resnet18_narrow")
    second = subprocess.Popen([sys.executable, "-m", "kalib", "pretrain", "--preset", "smoke", "--out", str(teachers),
                               "--device", "cpu"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert second.stderr.readline().strip() == (f"waiting for process {holder.pid} (the test holder) to finish "
                                                    f"with {teachers}")
        assert second.poll() is None                      # still waiting
    finally:
        holder.kill()
        holder.wait()
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert snapshot(teachers) == before                   # re-used as it was; the stale lock file is gone


def test_a_second_process_is_refused_naming_the_holder_and_a_dead_holder_s_lock_is_taken_over(
        capsys, teachers, finished):
    directory, name = finished, "run"
    args = amalgamate(teachers, finished)
    before = snapshot(directory)
    holder = hold(directory, name)
    try:
        code, _, err = cli(capsys, *args)
        assert_one_line(code, err, f"{directory} is in use by process {holder.pid} (the test holder)",
                        "one process at a time writes into a run directory")
    finally:
        holder.kill()                # SIGKILL: its lock file stays behind, with the dead process's pid
        holder.wait()
    assert (directory / f".{name}.lock").read_text() == f"process {holder.pid} (the test holder)"
    code, _, err = cli(capsys, *args)
    assert code == 0, err
    assert snapshot(directory) == before                  # re-used as it was; the stale lock file is gone


# ----------------------------------------------------------------------------------- checkpoint names

def test_teacher_checkpoints_have_readable_names_and_old_names_are_still_loaded(capsys, teachers, finished):
    assert (teachers / "set2-teacher1-resnet18_narrow.pt").is_file() and (teachers / T1).name == \
        "set2-teacher1-resnet18_narrow.pt"
    for n in (1, 2):                 # the names kalib wrote before: teacher{count}-{arch}-{n}
        for ext in (".pt", ".json"):
            (teachers / f"set2-teacher{n}-resnet18_narrow{ext}").rename(teachers / f"teacher2-resnet18_narrow-{n}{ext}")
    before_t, before_r = snapshot(teachers), snapshot(finished)
    code, out, err = cli(capsys, "pretrain", "--preset", "smoke", "--out", teachers, "--device", "cpu")
    assert code == 0 and "teacher 1/2" not in out, err          # re-used, not trained again or renamed
    code, out, err = cli(capsys, *amalgamate(teachers, finished))
    assert code == 0 and "re-using the finished run" in out, err
    code, out, err = cli(capsys, "evaluate", teachers / "teacher2-resnet18_narrow-1.pt", "--json")
    assert code == 0 and "mAP" in json.loads(out), err
    assert snapshot(teachers) == before_t and snapshot(finished) == before_r


# ------------------------------------------------------------------------- teachers keyed by their weights

def test_teachers_pretrained_again_with_identical_weights_reuse_every_finished_run(capsys, teachers, finished):
    """Run directories and teachers key a checkpoint by its weights (issue 36): teachers and generic start
    written again with bit-identical weights (their JSON tells other seconds, memory and APs) re-use the
    finished teachers and amalgamation, where keying by the JSON trained them again or refused the run."""
    for path in teachers.glob("*.json"):
        meta = json.loads(path.read_text())
        meta.update(seconds=meta.get("seconds", 0) + 1.5, peak_rss_mb=1)
        path.write_text(json.dumps(meta, indent=1))
    before_t, before_r = snapshot(teachers), snapshot(finished)
    code, out, err = cli(capsys, "pretrain", "--preset", "smoke", "--out", teachers, "--device", "cpu")
    assert code == 0 and "teacher 1/2" not in out and "generic" not in out, err
    code, out, err = cli(capsys, *amalgamate(teachers, finished))
    assert code == 0 and "re-using the finished run" in out, err
    assert snapshot(teachers) == before_t and snapshot(finished) == before_r


def test_results_keyed_by_metadata_files_before_are_still_reused(tmp_path, teachers):
    """What an older kalib saved under a key made from the teachers' JSON is taken as it is."""
    from kalib.runs.state import BlockStore
    from kalib.runs.teachers import _finished
    store = tmp_path / "run"
    (store / "blocks").mkdir(parents=True)
    (store / "blocks" / "config.json").write_text(json.dumps({"fingerprint": "json-key", "settings": {}}))
    old = BlockStore(store, "weights-key", legacy="json-key")
    old.prepare({})
    assert old.fingerprint == "json-key"
    with pytest.raises(kalib.errors.ConfigMismatchError):
        BlockStore(store, "weights-key", legacy="another").prepare({})
    meta = json.loads((teachers / T1).with_suffix(".json").read_text())
    assert _finished(teachers / T1, "weights-key", False, print, legacy_hash=meta["config_hash"])
    with pytest.raises(kalib.errors.ConfigMismatchError):
        _finished(teachers / T1, "weights-key", False, print, legacy_hash="another")


def test_epoch_states_and_baselines_keyed_by_metadata_files_before_are_still_reused(tmp_path, teachers):
    """A teacher's or baseline's epoch file tagged with the key of before resumes; a finished baseline saved with
    it is re-used; another key is still refused (or trained again)."""
    from kalib.runs.baselines import _finished
    from kalib.runs.checkpoints import EpochFile, load_model, save_model
    EpochFile(tmp_path / "unit.partial.pt", "json-key").save({"epoch": 1})
    assert EpochFile(tmp_path / "unit.partial.pt", "weights-key", legacy="json-key").load({})["epoch"] == 1
    with pytest.raises(kalib.errors.ConfigMismatchError):
        EpochFile(tmp_path / "unit.partial.pt", "weights-key").load({})
    save_model(tmp_path / "KD.pt", load_model(teachers / T1)[0], role="kd", key="json-key", record={"row": "KD"})
    assert _finished(tmp_path / "KD.pt", "weights-key", "json-key") == {"row": "KD"}
    assert _finished(tmp_path / "KD.pt", "weights-key") is None
