"""Clear errors (issue 7): every expected problem ends with one line on stderr and exit code 2, no
traceback, and nothing finished is deleted. The cases call ``kalib.cli.main`` in-process: the same code
path as ``python -m kalib`` minus the interpreter start (tests/test_cli.py runs real processes)."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from kalib.cli import main
from kalib.models import build_backbone
from kalib.runs.checkpoints import save_model

pytestmark = pytest.mark.usefixtures("one_thread")
T1, T2 = "set2-teacher1-resnet18_narrow.pt", "set2-teacher2-resnet18_narrow.pt"


def cli(capsys, *args):
    try:
        code = main([str(a) for a in args])
    except SystemExit as exit_:          # argparse errors
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def assert_one_line(code, err, *needles):
    """Exit code 2 and one error line, the last on stderr (earlier lines can only be progress lines of the
    work done before the error), with every needle in it."""
    assert code == 2, err
    lines = err.splitlines()
    assert lines and lines[-1].startswith("kalib ") and "Traceback" not in err, err
    assert not [line for line in lines[:-1] if line.startswith("kalib ")], err
    for needle in needles:
        assert needle in lines[-1], err


def snapshot(directory):
    return {p.relative_to(directory).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(Path(directory).rglob("*")) if p.is_file()}


@pytest.fixture
def teachers(smoke_teachers, tmp_path):
    """A private copy of the session's smoke teachers (tests may damage it)."""
    return Path(shutil.copytree(smoke_teachers, tmp_path / "teachers"))


@pytest.fixture
def finished(smoke_target, tmp_path):
    """A private copy of a finished smoke amalgamation run directory."""
    return Path(shutil.copytree(smoke_target[0], tmp_path / "run"))


def amalgamate(teachers, out, *extra):
    return ["amalgamate", "--preset", "smoke", "--teachers", teachers, "--out", out, "--device", "cpu", *extra]


# ------------------------------------------------------------------------------------------------ data

def test_data_root_that_does_not_exist(capsys, teachers, finished, tmp_path):
    before_t, before_r = snapshot(teachers), snapshot(finished)
    code, _, err = cli(capsys, "pretrain", "--preset", "smoke", "--out", teachers, "--data-root", tmp_path / "nowhere")
    assert_one_line(code, err, "nowhere does not exist or is not a directory")
    code, _, err = cli(capsys, *amalgamate(teachers, finished, "--data-root", tmp_path / "nowhere"))
    assert_one_line(code, err, "does not exist")
    assert snapshot(teachers) == before_t and snapshot(finished) == before_r


def test_data_root_without_the_dataset_files(capsys, teachers, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "README").write_text("not the data")
    before = snapshot(teachers)
    code, _, err = cli(capsys, "pretrain", "--preset", "smoke", "--out", teachers, "--data-root", tmp_path / "empty")
    assert_one_line(code, err, "is not a Fashion-MNIST folder", "train-images-idx3-ubyte")
    assert snapshot(teachers) == before


def test_malformed_dataset_files(capsys, tmp_path, monkeypatch):
    """IDX files that exist but are truncated or something else entirely (the canvases are not cached)."""
    folder = tmp_path / "fashion"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (folder / name).write_bytes(b"\x00\x00\x08\x03\x00\x00\xea\x60" + b"\x00" * 100)   # says 60000 images
    monkeypatch.setenv("KALIB_CACHE", str(tmp_path / "cache"))
    code, _, err = cli(capsys, "pretrain", "--preset", "smoke", "--out", tmp_path / "t", "--data-root", folder)
    assert_one_line(code, err, "train-images-idx3-ubyte is not a valid uint8 IDX file")
    assert not (tmp_path / "t").exists()


# --------------------------------------------------------------------------------------------- tasks

def test_unknown_task_lists_the_valid_ones_and_suggests_the_closest(capsys, teachers, finished):
    before = snapshot(finished)
    code, _, err = cli(capsys, *amalgamate(teachers, finished, "--tasks", "shirt,t-shrit"))
    assert_one_line(code, err, "unknown task 't-shrit'", "Did you mean 't-shirt'?", "Valid tasks: ")
    assert all(name in err for name in ("pullover", "zero", "boot", "eight"))
    code, _, err = cli(capsys, "evaluate", teachers / T1, "--tasks", "coat,nien")
    assert_one_line(code, err, "unknown task 'nien'", "Did you mean 'nine'?")
    assert snapshot(finished) == before


@pytest.mark.parametrize("tasks", ["", ",", " , "])
def test_empty_task_set(capsys, teachers, finished, tasks):
    before = snapshot(finished)
    code, _, err = cli(capsys, *amalgamate(teachers, finished, "--tasks", tasks))
    assert_one_line(code, err, "the customized task set C is empty")
    assert snapshot(finished) == before


# ------------------------------------------------------------------------------------------ checkpoints

def test_teachers_of_different_architectures(capsys, teachers, tmp_path):
    labels = json.loads((teachers / T2).with_suffix(".json").read_text())["labels"]
    save_model(teachers / T2, build_backbone("densenet_small", len(labels), growth_rate=6, num_init_features=12),
               role="teacher", labels=labels)
    before = snapshot(teachers)
    code, _, err = cli(capsys, *amalgamate(teachers, tmp_path / "out"))
    assert_one_line(code, err, "teachers of different architectures", "densenet_small", "resnet18_narrow")
    assert snapshot(teachers) == before and not (tmp_path / "out" / "run.json").exists()


def test_weights_that_do_not_match_their_architecture(capsys, teachers, tmp_path):
    meta = json.loads((teachers / T1).with_suffix(".json").read_text())
    meta["config"]["width"] = 16
    (teachers / T1).with_suffix(".json").write_text(json.dumps(meta))
    before = snapshot(teachers)
    code, _, err = cli(capsys, "evaluate", teachers / T1, "--preset", "smoke")
    assert_one_line(code, err, "does not match its architecture resnet18_narrow")
    code, _, err = cli(capsys, *amalgamate(teachers, tmp_path / "out"))     # the config is checked first
    assert_one_line(code, err, "another architecture config (width 16, this run's 8)")
    assert snapshot(teachers) == before


def test_truncated_corrupt_or_foreign_checkpoints(capsys, teachers, tmp_path):
    (teachers / T1).write_bytes((teachers / T1).read_bytes()[:5000])          # truncated
    before = snapshot(teachers)
    code, _, err = cli(capsys, "evaluate", teachers / T1)
    assert_one_line(code, err, f"{teachers / T1} is corrupt or truncated", "rerun the command that wrote it")
    code, _, err = cli(capsys, *amalgamate(teachers, tmp_path / "out"))
    assert_one_line(code, err, f"{teachers / T1} is corrupt or truncated")
    assert snapshot(teachers) == before

    foreign = tmp_path / "foreign.pt"                                          # a torch file, no JSON
    torch.save({"weight": torch.zeros(3)}, foreign)
    code, _, err = cli(capsys, "evaluate", foreign, "--preset", "smoke")
    assert_one_line(code, err, "a kalib checkpoint is NAME.pt with NAME.json beside it")
    foreign.with_suffix(".json").write_text('{"config": {"arch": "resnet18"}}')   # JSON of something else
    code, _, err = cli(capsys, "evaluate", foreign, "--preset", "smoke")
    assert_one_line(code, err, "is not a kalib checkpoint")
    foreign.with_suffix(".json").write_text('{"format": "kalib-checkpo')     # cut-off JSON
    code, _, err = cli(capsys, "evaluate", foreign, "--preset", "smoke")
    assert_one_line(code, err, "is corrupt")
    assert foreign.is_file()


# ------------------------------------------------------------------------------------------- options

@pytest.mark.parametrize("args, needle", [
    (["--set", "teacher.batch_size=0"], "teacher.batch_size=0: invalid schedule: batch_size must be >= 1, got 0"),
    (["--set", "generic.epochs=-1"], "epochs must be >= 0, got -1"),
    (["--set", "teacher.lr=0"], "lr must be > 0 and finite, got 0"),
    (["--set", "teacher.epochs=two"], "expected a value of type int"),
    (["--set", "teachr.epochs=2"], "unknown field 'teachr'"),
    (["--set", "teacher.epochs"], "FIELD=VALUE"),
    (["--teacher-sets", "2,4"], "unknown teacher set '4'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--device", "cuda:7"], "cuda:7"),
    (["--seed", "-1"], "must be >= 0"),
    (["--preset", "huge"], "invalid choice: 'huge'"),
])
def test_out_of_range_options(capsys, teachers, args, needle):
    if args[:2] == ["--device", "cuda:7"] and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    before = snapshot(teachers)
    code, _, err = cli(capsys, "pretrain", "--preset", "smoke", "--out", teachers, *args)
    assert_one_line(code, err, needle)
    assert snapshot(teachers) == before


def test_out_of_range_amalgamation_options(capsys, teachers, finished):
    before = snapshot(finished)
    for args, needle in ((["--set", "block.batch_size=0"], "batch_size must be >= 1, got 0"),
                         (["--set", "finetune.epochs=-2"], "epochs must be >= 0, got -2"),
                         (["--branch-at", "b9"], "unknown branch block 'b9'")):
        code, _, err = cli(capsys, *amalgamate(teachers, finished, *args))
        assert_one_line(code, err, needle)
    assert snapshot(finished) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_unavailable_device(capsys, teachers, finished):
    code, _, err = cli(capsys, *amalgamate(teachers, finished)[:-2], "--device", "cuda")
    assert_one_line(code, err, "no CUDA GPU is available", "--device cpu")


# ------------------------------------------------------------------------------------ resume settings

def test_changed_settings_are_refused_with_restart_offered(capsys, teachers, finished):
    before_t, before_r = snapshot(teachers), snapshot(finished)
    code, _, err = cli(capsys, *amalgamate(teachers, finished, "--tasks", "shirt,t-shirt"))
    assert_one_line(code, err, "another configuration (changed: tasks)", "--restart")
    code, _, err = cli(capsys, *amalgamate(teachers, finished, "--seed", "3"))
    assert_one_line(code, err, "(changed: seed)")
    code, _, err = cli(capsys, "pretrain", "--preset", "smoke", "--out", teachers, "--set", "teacher.epochs=2")
    assert_one_line(code, err, "was trained with another configuration", "--restart")
    assert snapshot(teachers) == before_t and snapshot(finished) == before_r


def test_a_finished_teacher_set_is_reused_by_the_cli(capsys, teachers):
    before = snapshot(teachers)
    code, out, err = cli(capsys, "pretrain", "--preset", "smoke", "--out", teachers, "--device", "cpu")
    assert code == 0, err
    assert snapshot(teachers) == before and "teacher 1/2" not in out


def test_set_overrides_nested_preset_fields():
    from kalib.runs.config import override
    from kalib.runs.presets import get_preset
    base = get_preset("smoke")
    p = override(base, ["teacher.epochs=3", "block.lr=0.5", "arch_kwargs.width=16", "finetune_freeze_bn=false",
                        "data.n_pool=100", "data.objects=[2, 3]"])
    assert (p.pretraining.teacher.epochs, p.student.block.lr, p.nets.arch_kwargs, p.student.finetune_freeze_bn) == (3, 0.5, {"width": 16}, False)
    assert p.data.n_pool == 100 and p.data.objects == (2, 3) and p.data.key() != base.data.key()
    assert base.pretraining.teacher.epochs == 1 and base.nets.arch_kwargs == {"width": 8}       # the preset itself is unchanged


def test_ctrl_c_and_unexpected_failures_are_one_line_too(capsys, teachers, monkeypatch):
    import kalib.runs.teachers

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(kalib.runs.teachers, "pretrain", interrupted)
    code, _, err = cli(capsys, "pretrain", "--preset", "smoke", "--out", teachers)
    assert code == 130 and err == ("kalib pretrain: interrupted; finished epochs and blocks are saved, rerun the "
                                   "same command to resume")

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors ...")
    monkeypatch.setattr(kalib.runs.teachers, "pretrain", broken)
    code, _, err = cli(capsys, "pretrain", "--preset", "smoke", "--out", teachers)
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err
    assert "unexpected RuntimeError: CUDA error: an illegal memory access" in err and "--debug" in err
    with pytest.raises(RuntimeError, match="illegal memory access"):
        main(["--debug", "pretrain", "--preset", "smoke", "--out", str(teachers)])


def test_a_value_error_from_deep_inside_a_command_is_a_bug_exit_1(capsys, smoke_target, monkeypatch):
    """A ``ValueError`` that escapes from inside a computation (here the AP of ``kalib evaluate``, as numpy or
    torch might raise one) is not a user's mistake: one "internal error ... please report it" line, exit 1."""
    import kalib.metrics

    def boom(*args, **kwargs):
        raise ValueError("boom")
    monkeypatch.setattr(kalib.metrics, "ap_voc07", boom)
    target = smoke_target[0] / "targetnet.pt"
    code, _, err = cli(capsys, "evaluate", target, "--device", "cpu")
    assert code == 1 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("kalib evaluate: internal error: unexpected ValueError: boom")
    assert "please report it; rerun with --debug for the traceback" in err
    with pytest.raises(ValueError, match="boom"):
        main(["--debug", "evaluate", str(target), "--device", "cpu"])


@pytest.mark.parametrize("args, needle", [
    (["--set", "loss_slice=0"], "loss_slice must be >= 1"),
    (["--set", "block.lr=inf"], "--set block.lr=inf: invalid schedule: lr must be > 0 and finite, got inf"),
    (["--preset", "huge"], "invalid choice: 'huge'"),
])
def test_bad_configuration_values_are_still_one_line_and_exit_2(capsys, teachers, finished, args, needle):
    before = snapshot(finished)
    code, _, err = cli(capsys, *amalgamate(teachers, finished, *args))
    assert_one_line(code, err, needle)
    assert snapshot(finished) == before


def test_an_unknown_preset_recorded_in_a_checkpoint_is_a_config_error(capsys, teachers):
    meta = json.loads((teachers / T1).with_suffix(".json").read_text())
    (teachers / T1).with_suffix(".json").write_text(json.dumps({**meta, "preset": "huge", "data": "elsewhere"}))
    code, _, err = cli(capsys, "evaluate", teachers / T1)
    assert_one_line(code, err, "unknown preset 'huge'; valid presets: ")


def test_user_mistakes_raise_kalib_errors_that_keep_their_standard_base(tmp_path):
    """The classes that replaced plain ``ValueError``/``FileNotFoundError``/``FileExistsError`` raises are
    KalibErrors (exit 2 in the CLI) and still what ``except ValueError`` (etc.) callers catch."""
    from kalib.errors import ConfigError, KalibError, MissingFileError
    from kalib.runs import experiments
    from kalib.runs.presets import get_preset
    from kalib.runs.state import teacher_files
    with pytest.raises(ConfigError, match="unknown table variant"):
        experiments.variant_data(get_preset("smoke"), "table9")
    with pytest.raises(MissingFileError, match="run the amalgamation first") as missing:
        experiments.load_run(tmp_path)
    with pytest.raises(MissingFileError, match="no teacher checkpoints") as no_teachers:
        teacher_files(get_preset("smoke"), tmp_path)
    for err in (missing.value, no_teachers.value):
        assert isinstance(err, KalibError) and isinstance(err, FileNotFoundError)
    with pytest.raises(ValueError):
        experiments.variant_data(get_preset("smoke"), "table9")
