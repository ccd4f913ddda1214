"""Bad input, held to one standard (issue 36): every command, given a value out of range, of the wrong kind, empty,
beside an option it excludes, or a file that is missing, empty, truncated, foreign or of a newer kalib, ends with one
line naming the problem and the fix (exit 2) before any work, and leaves no output behind (the table). Then the
cases that are accepted and handled instead: symbolic-link loops, 16-bit and other image modes, ``predict`` on
kalib's own teachers, a broken pipe, ``--set`` independent of option order and validated where it is used, bounds
from disk and memory, and runs keyed by the teachers' weights rather than their metadata files.

Everything runs in this process (:func:`kalib.cli.main`) on untrained networks: no case trains."""

import contextlib
import io
import json
import os
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import kalib.resources
from kalib.cli import main, one_line
from kalib.data.folder import list_files, load_folder
from kalib.data.paper import decode_image
from kalib.data.sources import cache_dir
from kalib.errors import ConfigError, ResourceError
from kalib.models import build_backbone
from kalib.runs.checkpoints import save_model
from kalib.runs.config import override
from kalib.runs.own import own_schedule
from kalib.runs.presets import get_preset

SMOKE = get_preset("smoke")


def filled(args, d: Path, out: Path) -> list[str]:
    """A table row's arguments with ``{d}`` and ``{out}`` filled in."""
    return [a.replace("{d}", str(d)).replace("{out}", str(out)) for a in args]


def cli(*args) -> tuple[int, str, str]:
    """``kalib ARGS`` in this process: exit code (argparse's SystemExit included), stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as exit_:
            code = exit_.code
    return code, out.getvalue(), err.getvalue()


def png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    """Every file the table reads: two untrained torchvision teachers and their labels, a pool and a labelled
    folder of tiny PNGs, an untrained kalib teacher of the smoke preset, and damaged or foreign files."""
    d = tmp_path_factory.mktemp("bad-input")
    torch.manual_seed(0)
    for name, labels in (("a", ["red", "green"]), ("b", ["circle", "square", "triangle"])):
        torch.save(torchvision.models.resnet18(num_classes=len(labels)).state_dict(), d / f"{name}.pt")
        (d / f"{name}.txt").write_text("\n".join(labels) + "\n")
    rng = np.random.default_rng(0)
    for i in range(4):
        png(d / "pool" / f"p{i}.png", rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
        png(d / "eval" / f"e{i}.png", rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
    rows = "".join(f"e{i}.png,{i % 2},1\n" for i in range(4))
    (d / "eval.csv").write_text("file,red,circle\n" + rows)
    (d / "unknown.csv").write_text("file,red,rde\n" + rows)
    (d / "twice.csv").write_text("file,red,red\n" + rows)
    (d / "empty.csv").write_text("")
    (d / "empty.pt").write_bytes(b"")
    (d / "text.pt").write_text("not weights\n")
    torch.save(torch.nn.Linear(2, 2), d / "model.pt")            # a whole pickled model: torch's advice, ANSI codes
    whole = (d / "a.pt").read_bytes()
    (d / "cut.pt").write_bytes(whole[:len(whole) // 2])
    (d / "dup.txt").write_text("red\nred\n")
    (d / "empty-dir").mkdir()
    teacher = save_model(d / "kt" / "set2-teacher1-resnet18_narrow.pt",
                         build_backbone(SMOKE.nets.arch, 10, **SMOKE.nets.arch_kwargs), role="teacher",
                         labels=list(SMOKE.labels.groups[0]), data=SMOKE.data.key(), config_hash="untrained")
    save_model(d / "kt" / "set2-teacher2-resnet18_narrow.pt",
               build_backbone(SMOKE.nets.arch, 10, **SMOKE.nets.arch_kwargs), role="teacher",
               labels=list(SMOKE.labels.groups[1]), data=SMOKE.data.key(), config_hash="untrained")
    (d / "kt1").mkdir()
    for ext in (".pt", ".json"):
        shutil.copyfile(teacher.with_suffix(ext), d / "kt1" / teacher.with_suffix(ext).name)
    meta = json.loads(teacher.with_suffix(".json").read_text())
    damaged = {"newer": {"version": 99}, "no-config": {"config": None}, "config-text": {"config": "x"},
               "labels-text": {"labels": "abc"}, "labels-short": {"labels": ["shirt"]},
               "size-text": {"input_size": "big"}, "size-zero": {"input_size": 0}, "heads-text": {"heads": "x"},
               "unknown-kwarg": {"config": {**meta["config"], "depth": 3}}}
    for name, change in damaged.items():
        (d / f"{name}.json").write_text(json.dumps({**meta, **change}))
        shutil.copyfile(teacher, d / f"{name}.pt")
    (d / "own.json").write_text(json.dumps({"format": "kalib-checkpoint", "version": 1, "kind": "targetnet",
                                            "own_format": 1, "labels": ["red"], "config": {"arch": "targetnet"}}))
    (d / "own.pt").write_bytes(b"")
    (d / "file.txt").write_text("a file, not a folder\n")
    return d


A, B = "resnet18:{d}/a.pt:{d}/a.txt", "resnet18:{d}/b.pt:{d}/b.txt"
OWN = ["amalgamate", "--teacher", A, "--teacher", B, "--pool", "{d}/pool", "--out", "{out}"]


def own_with_first(teacher: str) -> list[str]:
    """OWN with its first teacher's ``ARCH:WEIGHTS:LABELS`` replaced by ``teacher``."""
    return [*OWN[:2], teacher, *OWN[3:]]
PRE = ["pretrain", "--preset", "smoke", "--out", "{out}"]
AMP = ["amalgamate", "--preset", "smoke", "--teachers", "{d}/kt", "--out", "{out}"]
IMG = "{d}/pool/p0.png"
MRG = ["merge", "--teacher", A, "--teacher", B, "--pool", "{d}/pool", "--out", "{out}"]

# (id, arguments, what the one line says); {d}: the fixture's folder, {out}: an output that must not appear
TABLE = [
    # pretrain: options, --set values, files
    ("pretrain-unknown-set", [*PRE, "--set", "teachr.epochs=2"], "unknown field 'teachr'"),
    ("pretrain-set-empty", [*PRE, "--set", ""], "FIELD=VALUE"),
    ("pretrain-set-wrong-kind", [*PRE, "--set", "block_epochs=3"], "expected a JSON list"),
    ("pretrain-set-schedule-kind", [*PRE, "--set", "block=3"], "expected a JSON object of Schedule fields"),
    ("pretrain-set-schedule-field", [*PRE, "--set", 'block={"epoch": 2}'], "Schedule's fields are"),
    ("pretrain-set-nan", [*PRE, "--set", "block.lr=nan"], "lr must be > 0 and finite"),
    ("pretrain-set-pairs-shape", [*PRE, "--set", 'pairs={"x": ["a"]}'], "pairs must map names to two labels"),
    ("pretrain-set-objects-short", [*PRE, "--set", "data.objects=[2]"], "objects and scale must be (low, high)"),
    ("pretrain-groups-one", [*PRE, "--set", 'groups=[["shirt", "two"]]'], "two or more groups"),
    ("pretrain-groups-empty", [*PRE, "--set", "groups=[]"], "two or more groups"),
    ("pretrain-groups-unknown-label", [*PRE, "--set", 'groups=[["shrt"], ["two"]]'],
     "groups name labels the data does not have: shrt"),
    ("pretrain-arch-kwargs", [*PRE, "--set", 'arch_kwargs={"depth": 3}'], "do not build a resnet18_narrow"),
    ("pretrain-weights-paths", [*PRE, "--set", "weights_paths.resnet50=3"], "weights_paths must map an arch"),
    ("pretrain-seed-huge", [*PRE, "--seed", str(2 ** 70)], "must be at most 2147483647"),
    ("pretrain-set-seed-huge", [*PRE, "--set", f"seed={2 ** 40}"], "seed must be at most 2147483647"),
    ("pretrain-seed-negative", [*PRE, "--seed", "-1"], "must be >= 0"),
    ("pretrain-teacher-sets", [*PRE, "--teacher-sets", ","], "unknown teacher set"),
    ("pretrain-device", [*PRE, "--device", "tpu"], "unknown device 'tpu'"),
    ("pretrain-out-empty", ["pretrain", "--preset", "smoke", "--out", ""], "--out: empty"),
    ("pretrain-out-file", ["pretrain", "--preset", "smoke", "--out", "{d}/file.txt"], "is a file"),
    ("pretrain-data-root-file", [*PRE, "--data-root", "{d}/file.txt"], "not a directory"),
    ("pretrain-canvases-too-large", [*PRE, "--set", "data.size=100000"], "of memory, but"),
    # amalgamate, a preset's teachers
    ("amalgamate-no-teachers", ["amalgamate", "--out", "{out}"], "no teachers"),
    ("amalgamate-teachers-file", ["amalgamate", "--preset", "smoke", "--teachers", "{d}/file.txt", "--out", "{out}"],
     "is a file; give the folder"),
    ("amalgamate-teachers-missing", [*AMP[:-4], "--teachers", "{d}/kt1", "--out", "{out}"],
     "no teacher checkpoints set2-teacher2"),
    ("amalgamate-pool-beside-teachers", [*AMP, "--pool", "{d}/pool"], "--pool goes with --teacher"),
    ("amalgamate-image-size-beside-teachers", [*AMP, "--image-size", "64"], "--image-size goes with --teacher"),
    ("amalgamate-teacher-set", [*AMP, "--teacher-set", "4"], "invalid choice: '4'"),
    # amalgamate --teacher: options
    ("own-image-size-huge", [*OWN, "--image-size", "100000"], "between 1 and 4096"),
    ("own-image-size-negative", [*OWN, "--image-size", "-5"], "between 1 and 4096"),
    ("own-image-size-zero", [*OWN, "--image-size", "0"], "between 1 and 4096"),
    ("own-image-size-text", [*OWN, "--image-size", "1.5"], "not a whole number"),
    ("own-mean-nan", [*OWN, "--mean", "nan,0.5,0.5"], "finite"),
    ("own-mean-255", [*OWN, "--mean", "123.7,116.3,103.5"], "0..255 scale"),
    ("own-std-255", [*OWN, "--std", "58.4,57.1,57.4"], "0..255 scale"),
    ("own-std-zero", [*OWN, "--std", "0,0.2,0.2"], "standard deviations in (0, 1]"),
    ("own-mean-two", [*OWN, "--mean", "0.5,0.5"], "three comma-separated numbers"),
    ("own-teacher-set", [*OWN, "--teacher-set", "3"], "--teacher-set goes with --teachers DIR"),
    ("own-eval-split", [*OWN, "--eval-split", "val"], "--eval-split goes with --teachers DIR"),
    ("own-data-root", [*OWN, "--data-root", "{d}"], "--data-root goes with --teachers DIR"),
    ("own-preset", [*OWN, "--preset", "smoke"], "--teacher and --preset exclude each other"),
    ("own-teachers", [*OWN, "--teachers", "{d}"], "--teacher and --teachers exclude each other"),
    ("own-sofmax", ["amalgamate", "--teacher", A + ":sofmax", "--teacher", B, "--pool", "{d}/pool", "--out", "{out}"],
     "':sofmax' is no suffix kalib knows"),
    ("own-one-teacher", ["amalgamate", "--teacher", A, "--pool", "{d}/pool", "--out", "{out}"], "two or more"),
    ("own-no-pool", ["amalgamate", "--teacher", A, "--teacher", B, "--out", "{out}"], "needs --pool DIR"),
    ("own-pool-empty-path", [*OWN[:-4], "--pool", "", "--out", "{out}"], "--pool: empty"),
    ("own-pool-file", [*OWN[:-4], "--pool", "{d}/file.txt", "--out", "{out}"], "is not a folder of images"),
    ("own-pool-empty", [*OWN[:-4], "--pool", "{d}/empty-dir", "--out", "{out}"], "holds no files"),
    ("own-seed-huge", [*OWN, "--seed", str(2 ** 70)], "must be at most"),
    ("own-set-unknown", [*OWN, "--set", "blok.epochs=1"], "unknown field"),
    ("own-set-heldout", [*OWN, "--set", "heldout_fraction=1"], "heldout_fraction must be in (0, 1)"),
    ("own-eval-alone", [*OWN, "--eval", "{d}/eval"], "go together"),
    # amalgamate --teacher: files
    ("own-weights-missing", own_with_first("resnet18:{d}/none.pt:{d}/a.txt"), "not found"),
    ("own-weights-folder", own_with_first("resnet18:{d}:{d}/a.txt"), "is a folder"),
    ("own-weights-empty", own_with_first("resnet18:{d}/empty.pt:{d}/a.txt"), "empty or cut off"),
    ("own-weights-truncated", own_with_first("resnet18:{d}/cut.pt:{d}/a.txt"), "truncated or damaged"),
    ("own-weights-text", own_with_first("resnet18:{d}/text.pt:{d}/a.txt"), "not a file of torch.save"),
    ("own-weights-pickled-model", own_with_first("resnet18:{d}/model.pt:{d}/a.txt"), "Python objects besides tensors"),
    ("own-labels-twice", own_with_first("resnet18:{d}/a.pt:{d}/dup.txt"), "names red more than once"),
    ("own-labels-folder", own_with_first("resnet18:{d}/a.pt:{d}"), "cannot be read"),
    ("own-imagenet-weights-text", [*OWN, "--weights", "{d}/a.txt"], "give the ImageNet state dict"),
    ("own-eval-labels-unknown-column", [*OWN, "--eval", "{d}/eval", "--eval-labels", "{d}/unknown.csv"],
     "column rde names no label of the teachers"),
    ("own-eval-labels-column-twice", [*OWN, "--eval", "{d}/eval", "--eval-labels", "{d}/twice.csv"],
     "names red twice"),
    ("own-eval-labels-empty", [*OWN, "--eval", "{d}/eval", "--eval-labels", "{d}/empty.csv"], "header"),
    ("own-eval-missing", [*OWN, "--eval", "{d}/none", "--eval-labels", "{d}/eval.csv"], "is not a folder of images"),
    # evaluate
    ("evaluate-own-targetnet", ["evaluate", "{d}/own.pt"], "amalgamate command and --eval DIR"),
    ("evaluate-missing", ["evaluate", "{d}/none.pt"], "not found"),
    ("evaluate-out-folder", ["evaluate", "{d}/kt/set2-teacher1-resnet18_narrow.pt", "--out", "{d}"],
     "is a directory"),
    ("evaluate-out-empty", ["evaluate", "{d}/kt/set2-teacher1-resnet18_narrow.pt", "--out", ""], "--out: empty"),
    ("evaluate-newer-kalib", ["evaluate", "{d}/newer.pt", "--preset", "smoke"], "written by a newer kalib"),
    ("evaluate-no-config", ["evaluate", "{d}/no-config.pt", "--preset", "smoke"], "holds no network config"),
    ("evaluate-unknown-kwarg", ["evaluate", "{d}/unknown-kwarg.pt", "--preset", "smoke"],
     "network config does not fit"),
    ("evaluate-unknown-task", ["evaluate", "{d}/kt/set2-teacher1-resnet18_narrow.pt", "--tasks", "nosuch"],
     "unknown task 'nosuch'"),
    ("evaluate-metric", ["evaluate", "{d}/kt/set2-teacher1-resnet18_narrow.pt", "--metric", "x"], "invalid choice"),
    # predict
    ("predict-missing", ["predict", "{d}/none.pt", IMG], "not found"),
    ("predict-threshold-nan", ["predict", "{d}/kt/set2-teacher1-resnet18_narrow.pt", IMG, "--threshold", "nan"],
     "between 0 and 1"),
    ("predict-threshold-with-json", ["predict", "{d}/kt/set2-teacher1-resnet18_narrow.pt", IMG, "--json",
                                     "--threshold", "0.9"], "--threshold goes without --json"),
    ("predict-image-missing", ["predict", "{d}/kt/set2-teacher1-resnet18_narrow.pt", "{d}/none.png"],
     "neither an image file nor a folder"),
    ("predict-image-empty-path", ["predict", "{d}/kt/set2-teacher1-resnet18_narrow.pt", ""], "empty"),
    ("predict-no-image", ["predict", "{d}/kt/set2-teacher1-resnet18_narrow.pt", "{d}/file.txt"],
     "is a readable image (e.g."),
    ("predict-config-text", ["predict", "{d}/config-text.pt", IMG], "holds no network config"),
    ("predict-labels-text", ["predict", "{d}/labels-text.pt", IMG], "label names are damaged"),
    ("predict-labels-short", ["predict", "{d}/labels-short.pt", IMG], "names 1 labels for its 10 outputs"),
    ("predict-size-text", ["predict", "{d}/size-text.pt", IMG], "input size 'big' is damaged"),
    ("predict-size-zero", ["predict", "{d}/size-zero.pt", IMG], "input size 0 is damaged"),
    ("predict-heads-text", ["predict", "{d}/heads-text.pt", IMG], "heads are damaged"),
    # merge
    ("merge-neither", ["merge", "--out", "{out}"], "give either --teachers DIR"),
    ("merge-out-empty", ["merge", "--teachers", "{d}/kt", "--out", ""], "--out: empty"),
    ("merge-pool-images-zero", ["merge", "--teachers", "{d}/kt", "--out", "{out}", "--pool-images", "0"],
     "must be >= 1"),
    ("merge-image-size-beside-teachers", ["merge", "--teachers", "{d}/kt", "--out", "{out}", "--image-size", "64"],
     "--image-size goes with --teacher"),
    ("merge-mean-beside-teachers", ["merge", "--teachers", "{d}/kt", "--out", "{out}", "--mean", "0.5,0.5,0.5"],
     "--mean goes with --teacher"),
    ("merge-teacher-set-beside-teacher", [*MRG, "--teacher-set", "3"], "--teacher-set goes with --teachers DIR"),
    ("merge-data-root-beside-teacher", [*MRG, "--data-root", "{d}"], "--data-root goes with --teachers DIR"),
    ("merge-image-size-huge", [*MRG, "--image-size", "100000"], "between 1 and 4096"),
    ("merge-mean-255", [*MRG, "--mean", "123.7,116.3,103.5"], "0..255 scale"),
    ("merge-lam-nan", [*MRG, "--lam", "nan"], "--lam must be a positive number"),
    ("merge-weights-text", ["merge", "--teacher", "resnet18:{d}/text.pt:{d}/a.txt", "--teacher", B,
                            "--pool", "{d}/pool", "--out", "{out}"], "not a file of torch.save"),
    ("merge-pool-empty", ["merge", "--teacher", A, "--teacher", B, "--pool", "{d}/empty-dir", "--out", "{out}"],
     "holds no files"),
    # reproduce, study
    ("reproduce-pairs-outside-groups", ["reproduce", "--preset", "smoke", "--out", "{out}", "--set",
                                        'groups=[["shirt"], ["two"]]'], "Fig. 3 pairs"),
    ("reproduce-figures-file", ["reproduce", "--preset", "smoke", "--out", "{out}", "--figures", "{d}/file.txt"],
     "--figures"),
    ("reproduce-seeds-one", ["reproduce", "--preset", "smoke", "--out", "{out}", "--seeds", "1"], "two or more"),
    ("reproduce-seeds-huge", ["reproduce", "--preset", "smoke", "--out", "{out}", "--seeds", f"0,{2 ** 40}"],
     "at most"),
    ("study-name", ["study", "nothing"], "invalid choice"),
    ("study-preset", ["study", "crossover", "--preset", "paper-voc07"], "invalid choice"),
    ("study-out-empty", ["study", "crossover", "--out", ""], "--out: empty"),
    ("study-pools-empty", ["study", "crossover", "--out", "{out}", "--pools", ","], "names no value"),
    ("study-pools-twice", ["study", "crossover", "--out", "{out}", "--pools", "250,250"], "repeats a value"),
    ("study-pools-unknown", ["study", "crossover", "--out", "{out}", "--pools", "7"], "not part of the quick study"),
]


@pytest.mark.parametrize("args, says", [pytest.param(a, s, id=i) for i, a, s in TABLE])
def test_bad_input_is_one_line_and_exit_2_before_any_work(d, tmp_path, args, says):
    out = tmp_path / "out"
    code, printed, err = cli(*filled(args, d, out))
    said = [line for line in err.splitlines() if line.startswith("kalib")]
    assert code == 2 and len(said) == 1 and said[0] == err.strip().splitlines()[-1], err
    assert ": error: " in said[0] and says in said[0], said[0]
    assert "\x1b" not in err and "PyTorch" not in err and "weights_only=False" not in err
    assert not out.exists()


def test_the_table_covers_every_command():
    from kalib.cli import build_parser
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert commands == {args[0] for _, args, _ in TABLE}


def test_messages_are_one_plain_line():
    assert one_line("a\x1b[1mbold\x1b[0m\n\tb\x07c") == "a bold b c"


# ------------------------------------------------------------------------------------ accepted and handled

def test_a_loop_of_links_lists_each_file_once_and_ends(d, tmp_path):
    folder = tmp_path / "loop"
    shutil.copytree(d / "pool", folder)
    (folder / "up").symlink_to(folder, target_is_directory=True)
    (folder / "sub").mkdir()
    (folder / "sub" / "again").symlink_to(folder, target_is_directory=True)       # two ways back: no end before
    (folder / "sub" / "up").symlink_to(folder / "sub", target_is_directory=True)
    assert list_files(folder) == [f"p{i}.png" for i in range(4)]
    code, printed, err = cli("predict", d / "kt" / "set2-teacher1-resnet18_narrow.pt", folder, folder / "p0.png",
                             "--json")
    assert code == 0, err
    assert sorted(json.loads(printed)) == [str(folder / f"p{i}.png") for i in range(4)]


def test_16_bit_and_other_modes_are_converted_by_their_real_range(tmp_path):
    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I;16")
    got = decode_image(tmp_path / "grey16.png", 32)[0].astype(int)
    assert np.abs(got - np.rint(ramp / 257)).max() <= 2            # clipped at 255 before: almost all white
    Image.fromarray((ramp / 65535).astype(np.float32)).save(tmp_path / "float.tiff")
    assert np.abs(decode_image(tmp_path / "float.tiff", 32)[0].astype(int) - np.rint(ramp / 257)).max() <= 2
    palette = Image.fromarray(np.arange(256, dtype=np.uint8).reshape(16, 16)).convert("P")
    palette.info["transparency"] = b"\x00" * 256
    palette.save(tmp_path / "palette.png")
    with warnings.catch_warnings(record=True) as caught:       # PIL's warning about the palette stays quiet
        warnings.simplefilter("always")
        assert decode_image(tmp_path / "palette.png", 8).shape == (3, 8, 8)
    assert not caught
    for mode in ("1", "L", "LA", "RGBA", "CMYK", "I"):
        image = Image.new(mode, (9, 7), 1 if mode in ("1", "I") else None)
        image.save(tmp_path / f"m{mode}.{'jpg' if mode == 'CMYK' else 'tiff' if mode == 'I' else 'png'}")
    folder = load_folder(tmp_path, 16, log=lambda *_: None)
    assert len(folder.files) == 9 and not folder.skipped


def test_predict_reads_kalib_s_own_teachers(d):
    code, printed, err = cli("predict", d / "kt" / "set2-teacher1-resnet18_narrow.pt", d / "pool" / "p0.png", "--json")
    assert code == 0, err
    assert list(json.loads(printed)[str(d / "pool" / "p0.png")]) == list(SMOKE.labels.groups[0])


class _ClosedPipe(io.StringIO):
    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_broken_pipe_ends_quietly(d, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["predict", str(d / "kt" / "set2-teacher1-resnet18_narrow.pt"), str(d / "pool"), "--json"])
    assert code == 141 and err.getvalue() == ""


def test_set_is_independent_of_option_order_and_pairs_are_checked_only_by_fig3():
    groups, pairs = 'groups=[["shirt"], ["two"]]', 'pairs={"p": ["shirt", "two"]}'
    quick = get_preset("quick")
    assert override(quick, [groups, pairs]) == override(quick, [pairs, groups])
    assert override(quick, [groups, pairs]).labels.pairs == {"p": ["shirt", "two"]}
    alone = override(quick, [groups])                # pretrain and amalgamate do not draw Fig. 3
    assert alone.labels.groups == (("shirt",), ("two",))
    with pytest.raises(ConfigError, match=r"Fig. 3 pairs .* --set 'pairs="):
        alone.labels.check_pairs()
    assert override(quick, ["block.lr=0.2", "block.lr=0.3"]).student.block.lr == 0.3       # the last one wins
    assert override(quick, ["block.lr=0", "block.lr=0.3"]).student.block.lr == 0.3       # checked at the end
    assert own_schedule(["block.lr=0", "block.lr=0.2"]).block.lr == 0.2                   # --teacher's too
    with pytest.raises(ConfigError, match=r"--set teacher.lr=0.1, teacher.batch_size=0: invalid schedule: batch_size"):
        override(quick, ["teacher.lr=0.1", "teacher.batch_size=0"])


# --------------------------------------------------------------------------------------- bounds from resources

def test_a_cache_larger_than_the_free_disk_is_refused_with_its_size(d, tmp_path, monkeypatch):
    monkeypatch.setattr(kalib.resources, "free_disk", lambda path: 100 << 20)
    monkeypatch.setattr(kalib.resources, "available_memory", lambda: 1 << 50)
    code, _, err = cli(*filled(OWN, d, tmp_path / "out"), "--image-size", "4096")
    assert code == 2 and "(4 files at 4096 px) would take 201 MB of disk, but" in err and "has 105 MB free" in err
    assert "lower --image-size (4096 now)" in err and not (tmp_path / "out").exists()
    with pytest.raises(ResourceError, match=r"\(4 files at 1024 px\) would take 12.6 MB of disk, but .* has 10.5 MB"):
        monkeypatch.setattr(kalib.resources, "free_disk", lambda path: 10 << 20)
        monkeypatch.setattr(kalib.resources, "DISK_SPARE", 0)
        load_folder(d / "pool", 1024, log=lambda *_: None)
    assert not list((cache_dir() / "folders").glob(f"pool-*px-*.tmp{os.getpid()}"))     # this process's, none left


def test_arrays_larger_than_the_memory_are_refused_with_their_size(d, tmp_path, monkeypatch):
    monkeypatch.setattr(kalib.resources, "available_memory", lambda: 1 << 30)
    code, _, err = cli(*filled(PRE, d, tmp_path / "out"), "--set", "data.n_train=10000000")
    assert code == 2 and "10,001,536 canvases of 64 px would take 123 GB of memory, but 1.07 GB is available" in err
    assert "lower data.size or the data.n_* counts" in err
    code, _, err = cli(*filled(OWN, d, tmp_path / "out"), "--image-size", "1024")
    assert code == 2 and "a training step on 32 images of 1024 px would take 33.6 GB of memory" in err
    assert "lower --image-size or the batch size" in err and not (tmp_path / "out").exists()
    monkeypatch.setattr(kalib.resources, "available_memory", lambda: 1 << 18)
    code, _, err = cli("predict", d / "kt" / "set2-teacher1-resnet18_narrow.pt", d / "pool")
    assert code == 2 and "scoring one image of 64 px would take 492 kB of memory, but 262 kB is available" in err


def test_check_disk_and_memory_pass_what_fits(tmp_path, monkeypatch):
    kalib.resources.check_disk(1, tmp_path, "one byte", "nothing")
    kalib.resources.check_memory(1, "one byte", "nothing")
    monkeypatch.setattr(kalib.resources, "available_memory", lambda: None)      # unknown: nothing is refused
    kalib.resources.check_memory(1 << 60, "an exabyte", "nothing")
