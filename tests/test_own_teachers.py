"""Bring your own teachers (issue 29): torchvision ResNet-18 teachers trained here on generated coloured shapes
(one for colours, one for shapes, fine-tuned from one start) and a folder of unlabelled PNGs with one broken
file, amalgamated by `kalib amalgamate --teacher … --pool DIR` and scored by `kalib predict`; every bad input
exits 2 with one line and leaves nothing behind; the pool and F^{k-1} are streamed, never one tensor; the
default multi-label loss is bit-identical to the paper's, a softmax teacher's columns take a cross-entropy."""

import contextlib
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import kalib.method.pool
from kalib.cli import main
from kalib.demo import COLOURS, SHAPES, coloured_shapes, write_example, write_images
from kalib.errors import TeacherFileError
from kalib.method.blockwise import filtered_loss, task_losses
from kalib.method.filters import shared_labels, task_plan
from kalib.metrics import ap_dict
from kalib.models import build_backbone
from kalib.models.torchvision_teachers import IMAGENET_MEAN, IMAGENET_STD, last_block_size, torchvision_teacher
from kalib.runs.checkpoints import save_model
from kalib.runs.own import OwnSchedule, amalgamate_teachers, image_pool, load_torchvision_teachers, parse_teacher
from kalib.runs.predict import predict_images, probabilities
from kalib.train import Schedule, to_input

NORM = {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
QUICK = ["--set", "block.epochs=1", "--set", "finetune.epochs=1", "--set", "block_images=96", "--set",
         "finetune_images=96"]      # the test's schedule: seconds


@pytest.fixture(scope="module")
def example(tmp_path_factory, one_thread):
    """Two torchvision resnet18 teachers (colours, shapes) from one start, a pool of 200 PNGs and a broken file,
    a labelled test folder of 120 (seconds)."""
    return write_example(tmp_path_factory.mktemp("example"), train=240, pool=200, test=120, start_images=200)


def cli(*args) -> tuple[int, str]:
    """``kalib ARGS`` in this process (the parser and error handling of ``python -m kalib``): exit code, output."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = main(list(args))
    return code, buffer.getvalue()


def teachers_args(example, *extra):
    d = example["colours"].parent
    return ["amalgamate", "--teacher", f"resnet18:{d / 'colours.pt'}:{d / 'colours.txt'}",
            "--teacher", f"resnet18:{d / 'shapes.pt'}:{d / 'shapes.txt'}", *extra]


@pytest.fixture(scope="module")
def own_run(example, one_thread):
    """`kalib amalgamate --teacher … --teacher … --pool DIR --out DIR --image-size 32` with an evaluation folder
    (relative paths, as a user types them)."""
    d = example["colours"].parent
    here = os.getcwd()
    os.chdir(d)
    try:
        done = cli("amalgamate", "--teacher", "resnet18:colours.pt:colours.txt", "--teacher",
                   "resnet18:shapes.pt:shapes.txt", "--pool", "pool", "--out", "out", "--image-size", "32",
                   "--eval", "test", "--eval-labels", "test.csv", *QUICK)
    finally:
        os.chdir(here)
    return d / "out", done


def test_own_teachers_amalgamate_and_predict_within_5_points(example, own_run):
    out, (code, log) = own_run
    assert code == 0, log[-2000:]
    assert "skipped 1 file" in log and "broken.png" in log
    assert "student start: teacher-mean" in log and "do not look like fine-tunings" not in log
    record = json.loads((out / "run.json").read_text())
    assert record["pool"]["images"] == 200 and record["pool"]["skipped"] == ["broken.png"]
    assert record["tasks"] == [*COLOURS, *SHAPES] and set(record["branch_block"]) == set(record["tasks"])
    assert record["macs_per_image"]["teachers"] > 0 and record["params"]["targetnet"] > 0
    meta = json.loads((out / "targetnet.json").read_text())
    assert meta["input_size"] == 32 and meta["normalisation"] == NORM and meta["own_format"] == 1
    assert [h["labels"] for h in meta["heads"]] == [list(COLOURS), list(SHAPES)]

    code, printed = cli("predict", str(out / "targetnet.pt"), str(example["test"]), "--json")
    assert code == 0, printed[-2000:]
    probs = json.loads(printed)
    rows = list(csv_rows(example["test_labels"]))
    scores = np.array([[probs[str(example["test"] / f)][n] for n in record["tasks"]] for f, _ in rows])
    targets = np.array([t for _, t in rows])
    target_map = ap_dict(record["tasks"], scores, targets)["mAP"]
    x = torch.stack([torch.from_numpy(np.array(Image.open(example["test"] / f))).permute(2, 0, 1)
                     for f, _ in rows])
    teacher_scores = []
    for name, k in (("colours", 3), ("shapes", 3)):
        model = torchvision.models.resnet18(num_classes=k)
        model.load_state_dict(torch.load(example[name], weights_only=True))
        with torch.no_grad():
            teacher_scores.append(torch.sigmoid(model.eval()(torchvision.transforms.functional.normalize(
                x.float() / 255, IMAGENET_MEAN, IMAGENET_STD))))
    teacher_map = ap_dict(record["tasks"], torch.cat(teacher_scores, 1).numpy(), targets)["mAP"]
    assert abs(target_map - teacher_map) <= 5, (target_map, teacher_map)
    assert abs(record["teacher_ap"]["mAP"] - teacher_map) < 0.5       # --eval reports the same teachers
    assert teacher_map > 70       # the colours teacher is near 100, the shapes teacher far above chance


def csv_rows(path):
    lines = Path(path).read_text().splitlines()
    for line in lines[1:]:
        file, *values = line.split(",")
        yield file, [float(v) for v in values]


def test_a_rerun_reuses_the_finished_run_and_predict_prints_a_table(example, own_run, capsys, one_thread):
    out, (code, _) = own_run
    assert code == 0
    d = example["colours"].parent
    code = main(teachers_args(example, "--pool", str(d / "pool"), "--out", str(out), "--image-size", "32",
                              "--eval", str(d / "test"), "--eval-labels", str(d / "test.csv"), *QUICK))
    assert code == 0 and "re-using the finished run" in capsys.readouterr().out
    image = example["test"] / "img_00000.png"
    assert main(["predict", str(out / "targetnet.pt"), str(image), "--threshold", "0.0"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and all(n in line for n in [*COLOURS, *SHAPES])
    assert main(["predict", str(out / "targetnet.pt"), str(image), "--threshold", "1.5"]) == 2


def bad_inputs(example, tmp: Path):
    """(arguments, what the one line says) of every bad input of issue 29."""
    d = example["colours"].parent
    pool, test = str(d / "pool"), str(d / "test")
    (tmp / "two.txt").write_text("red\ngreen\n")
    (tmp / "junk.pt").write_bytes(b"not a state dict")
    (tmp / "empty").mkdir()
    (tmp / "unreadable").mkdir()
    (tmp / "unreadable" / "a.png").write_bytes(b"broken")
    rows = (d / "test.csv").read_text().splitlines()
    (tmp / "short.csv").write_text("\n".join(rows[:-1]) + "\n")
    c, s = f"{d / 'colours.pt'}", f"{d / 'shapes.pt'}"
    cl, sl = f"{d / 'colours.txt'}", f"{d / 'shapes.txt'}"
    own = ["--teacher", f"resnet18:{c}:{cl}", "--teacher", f"resnet18:{s}:{sl}"]
    return [
        (["--teacher", f"resnet18:{c}:{tmp / 'two.txt'}", "--teacher", f"resnet18:{s}:{sl}", "--pool", pool],
         "head has 3 outputs but its labels file names 2"),
        (["--teacher", f"resnet34:{c}:{cl}", "--teacher", f"resnet34:{s}:{sl}", "--pool", pool],
         "state dict of torchvision's resnet18, not resnet34"),
        (["--teacher", f"resnet18:{tmp / 'junk.pt'}:{cl}", "--teacher", f"resnet18:{s}:{sl}", "--pool", pool],
         "cannot be read as a state dict"),
        (["--teacher", f"resnet18:{c}:{cl}", "--teacher", f"resnet34:{s}:{sl}", "--pool", pool],
         "teachers of different architectures"),
        ([*own, "--pool", str(tmp / "empty")], "holds no files"),
        ([*own, "--pool", str(tmp / "unreadable")], "none of its 1 files is a readable image"),
        (["--teacher", f"densenet121:{c}:{cl}", "--teacher", f"densenet121:{s}:{sl}", "--pool", pool,
          "--image-size", "16"], "smaller than 1x1"),
        ([*own, "--pool", pool, "--tasks", "red,purple"], "unknown task 'purple'"),
        ([*own, "--pool", pool, "--eval", test, "--eval-labels", str(tmp / "short.csv")], "1 images have no row"),
        ([*own, "--pool", pool, "--teachers", str(tmp)], "--teacher and --teachers exclude each other"),
        ([*own, "--pool", pool, "--preset", "smoke"], "--teacher and --preset exclude each other"),
        (own, "--teacher needs --pool DIR"),
        ([*own, "--pool", pool, "--init", "generic"], "no generic backbone"),
        ([*own, "--pool", pool, "--weights", c], "is not a torchvision resnet18 ImageNet state dict"),
        ([*own, "--pool", pool, "--set", "block.epoch=2"], "unknown field"),
    ]


def test_every_bad_input_exits_2_with_one_line_and_leaves_nothing(example, tmp_path, capsys, one_thread):
    for n, (args, says) in enumerate(bad_inputs(example, tmp_path)):
        out = tmp_path / f"out{n}"
        size = [] if "--image-size" in args else ["--image-size", "32"]
        code = main(["amalgamate", *args, "--out", str(out), *size, *QUICK])
        err = capsys.readouterr().err.strip().splitlines()       # progress bars aside: one line, the last
        assert code == 2, (says, err)
        said = [line for line in err if line.startswith("kalib")]
        assert said == [err[-1]] and said[0].startswith("kalib amalgamate: error: ") and says in said[0], (says, err)
        assert not out.exists(), says


def test_teacher_specs_split_at_the_first_and_last_colon():
    assert parse_teacher("resnet18:a.pt:a.txt") == parse_teacher("resnet18:a.pt:a.txt")
    spec = parse_teacher(r"resnet50:C:\models\a:b.pt:labels.txt:softmax")
    assert (spec.arch, str(spec.weights), str(spec.labels), spec.softmax) == (
        "resnet50", r"C:\models\a:b.pt", "labels.txt", True)
    assert not parse_teacher("resnet18:runs/x:y.pt:l.txt").softmax
    for bad in ("resnet18:a.pt", "resnet18", ":a.pt:l.txt", "resnet18:a.pt:softmax"):
        with pytest.raises(ValueError, match="ARCH:WEIGHTS:LABELS"):
            parse_teacher(bad)


def test_a_torchvision_teacher_keeps_its_head_and_normalisation():
    torch.manual_seed(0)
    tv = torchvision.models.resnet18(num_classes=4).eval()
    net = torchvision_teacher("resnet18", tv.state_dict(), list("abcd"), "tv", NORM)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        expected = tv(torchvision.transforms.functional.normalize(x.float() / 255, IMAGENET_MEAN, IMAGENET_STD))
        assert torch.allclose(net.eval()(to_input(x)), expected, atol=1e-4)
    assert net.num_classes == 4 and net.config["input_norm"] == NORM
    rebuilt = build_backbone(**json.loads(json.dumps(net.config)))
    rebuilt.load_state_dict(net.state_dict())
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(to_input(x)), net(to_input(x)))
    with torch.device("meta"):
        resnet50 = torchvision.models.resnet50(num_classes=4).state_dict()
    with pytest.raises(TeacherFileError, match="state dict of torchvision's resnet50, not resnet18"):
        torchvision_teacher("resnet18", resnet50, list("abcd"))
    with pytest.raises(TeacherFileError, match="not a state dict of torchvision's resnet18"):
        torchvision_teacher("resnet18", {"w": torch.zeros(1)}, list("abcd"))
    assert last_block_size("resnet18", 32) == (1, 1) and last_block_size("densenet121", 16) is None


def test_the_multi_label_loss_is_bit_identical_and_a_softmax_teacher_takes_cross_entropy():
    torch.manual_seed(0)
    pred, target = torch.randn(8, 5, requires_grad=True), torch.randn(8, 5)
    plan = task_plan(None, [["a", "b"], ["c", "d", "e"]], temperatures=(None, None))
    assert plan.softmax_groups == () and task_plan(None, [["a", "b"], ["c", "d", "e"]]).softmax_groups == ()
    reference = F.binary_cross_entropy_with_logits(pred, torch.sigmoid(target), reduction="none").mean(0)
    assert torch.equal(task_losses(pred, target), reference)
    assert torch.equal(task_losses(pred, target, plan.softmax_groups), reference)
    assert torch.equal(filtered_loss(pred, target)[0], reference.sum() / 5)

    plan = task_plan(None, [["a", "b"], ["c", "d", "e"]], temperatures=(None, 2.0))
    assert plan.softmax_groups == (((2, 3, 4), 2.0),)
    losses = task_losses(pred, target, plan.softmax_groups)
    assert torch.equal(losses[:2], reference[:2])
    p, log_q = torch.softmax(target[:, 2:] / 2, 1), torch.log_softmax(pred[:, 2:] / 2, 1)
    assert torch.allclose(losses[2:].sum(), 4 * -(p * log_q).sum(1).mean())
    filtered_loss(pred, target, plan.softmax_groups)[0].backward()
    assert pred.grad[:, 2:].abs().sum() > 0
    probs = probabilities(target, [[2, 3, 4]])
    assert torch.allclose(probs[:, 2:].sum(1), torch.ones(8)) and torch.equal(probs[:, :2], torch.sigmoid(target[:, :2]))


def test_a_shared_label_comes_from_the_first_teacher_that_has_it():
    labels = [["cat", "dog"], ["dog", "car"]]
    plan = task_plan(None, labels, shared="first")
    assert plan.tasks == ("cat", "dog", "car") and plan.teacher == (0, 0, 1) and plan.local == (0, 1, 1)
    assert shared_labels(labels) == {"dog": [0, 1]}
    with pytest.raises(ValueError, match="share task names"):
        task_plan(None, labels)


def test_prefix_features_too_large_to_keep_are_recomputed_with_the_same_numbers(one_thread):
    torch.manual_seed(0)
    student = build_backbone("resnet18_narrow", 3, width=8).eval()
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    kept = kalib.method.pool.prefix_features(student, images, 3, torch.float32)
    lazy = kalib.method.pool.prefix_features(student, images, 3, torch.float32, max_bytes=0)
    assert isinstance(kept, torch.Tensor) and isinstance(lazy, kalib.method.pool.PrefixFeatures)
    idx = torch.tensor([3, 17, 39])
    assert len(lazy) == 40 and torch.equal(lazy[idx], kept[idx])


class LargestRows(TorchDispatchMode):
    """The most rows of any 4-D tensor an operation produced (images, feature maps; weights have <= 512)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.dim() == 4:
                self.largest = max(self.largest, t.shape[0])
        return out


def test_the_pool_and_its_features_are_streamed_never_one_tensor(example, tmp_path, monkeypatch, one_thread):
    """A pool of 600 images: memory-mapped from disk, and no operation of the whole run (soft targets, blocks
    with F^{k-1} recomputed per batch, fine-tuning, held-out losses, alignment, MACs) ever makes a tensor of
    more than 512 images or feature maps; reading it whole would (the check's control)."""
    write_images(tmp_path / "pool", coloured_shapes(600, 16, seed=5)[0])
    teachers = load_torchvision_teachers([f"resnet18:{example[n]}:{example[n + '_labels']}" for n in ("colours", "shapes")])
    pool = image_pool(tmp_path / "pool", 16, log=lambda *_: None)
    assert str(pool.cache / "images.npy") in Path("/proc/self/maps").read_text()      # memory-mapped, not loaded
    monkeypatch.setattr(kalib.method.pool, "FEATURE_CACHE_BYTES", 0)               # as for a pool too large to cache
    schedule = OwnSchedule(block=Schedule(epochs=1, lr=0.01, batch_size=64), block_epochs=(1, 0, 0, 0, 0, 0, 0, 1),
                           finetune=Schedule(epochs=1, lr=0.01, batch_size=64), finetune_images=128, alignment_images=32)
    with LargestRows() as seen:
        record = amalgamate_teachers(teachers, pool, tmp_path / "out", schedule=schedule, log=lambda *_: None)
    assert record["pool"]["train"] == 570 and (tmp_path / "out" / "targetnet.pt").is_file()
    assert 0 < seen.largest <= 512, seen.largest
    with LargestRows() as control:
        pool.rows.tensor()
    assert control.largest == 600


def test_predict_reads_a_preset_checkpoint_at_its_preset_size(tmp_path, capsys):
    torch.manual_seed(0)
    net = build_backbone("resnet18_narrow", 2, width=8)
    save_model(tmp_path / "teacher.pt", net, role="teacher", labels=["coat", "bag"], preset="smoke")
    write_images(tmp_path / "images", coloured_shapes(3, 20, seed=1)[0])
    scores = predict_images(tmp_path / "teacher.pt", [tmp_path / "images"], log=print)
    assert len(scores) == 3 and all(set(v) == {"coat", "bag"} for v in scores.values())
    x = torch.from_numpy(np.stack([np.asarray(Image.open(tmp_path / "images" / f"img_0000{i}.png")
                                              .resize((64, 64), 2)).transpose(2, 0, 1) for i in range(3)]))
    with torch.no_grad():
        expected = torch.sigmoid(net.eval()(to_input(x)))
    got = torch.tensor([list(scores[str(tmp_path / "images" / f"img_0000{i}.png")].values()) for i in range(3)])
    assert torch.allclose(got, expected, atol=1e-5)


def test_kalib_merge_of_own_teachers_from_their_start_is_read_by_predict(example, tmp_path, one_thread):
    """`kalib merge --teacher … --pool DIR`: the plain average needs no start; another lambda needs --start (the
    weights both teachers were fine-tuned from), and a start of another architecture is refused in one line."""
    d = example["colours"].parent
    teachers = ["--teacher", f"resnet18:{d / 'colours.pt'}:{d / 'colours.txt'}",
                "--teacher", f"resnet18:{d / 'shapes.pt'}:{d / 'shapes.txt'}", "--pool", str(example["pool"]),
                "--image-size", "32"]
    code, log = cli("merge", *teachers, "--out", str(tmp_path / "mean.pt"))
    assert code == 0 and "merged 2 teachers (lambda 0.5) for 6 labels" in log, log
    code, printed = cli("predict", str(tmp_path / "mean.pt"), str(example["test"]), "--json")
    scores = json.loads(printed)
    assert code == 0 and len(scores) == len(list(example["test"].iterdir()))
    code, log = cli("merge", *teachers, "--lam", "0.3", "--out", str(tmp_path / "no-start.pt"))
    assert code == 2 and "needs the teachers' shared start" in log and not (tmp_path / "no-start.pt").exists()
    code, log = cli("merge", *teachers, "--lam", "0.3", "--start", str(example["start"]), "--out", str(tmp_path / "l.pt"))
    assert code == 0, log
    torch.save(torchvision.models.resnet34(num_classes=3).state_dict(), tmp_path / "r34.pt")
    code, log = cli("merge", *teachers, "--lam", "0.3", "--start", str(tmp_path / "r34.pt"), "--out", str(tmp_path / "x.pt"))
    assert code == 2 and "is a resnet34 state dict, but the teachers are resnet18" in log
    assert len(log.strip().splitlines()) == 1
