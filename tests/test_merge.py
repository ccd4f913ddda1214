"""The training-free merge (kalib.method.merge, `kalib merge`, Table 1's Merge row): task arithmetic from the
shared start, BatchNorm statistics estimated again, each label's head row from its teacher; kalib's teachers and
bad input. Own torchvision teachers are merged in tests/test_own_teachers.py."""

import contextlib
import copy
import io
import json

import pytest
import torch
from torch import nn

from kalib.cli import main
from kalib.errors import ConfigError
from kalib.method.filters import task_plan
from kalib.method.merge import merged_student, reestimate_batchnorm, task_arithmetic
from kalib.models import build_backbone
from kalib.runs.checkpoints import load_model, read_meta


def nets(seed: int, n: int = 2):
    """A width-8 ResNet-18 start and ``n`` teachers: the start plus seeded noise (as if fine-tuned from it)."""
    torch.manual_seed(seed)
    start = build_backbone("resnet18_narrow", 5, width=8)
    teachers = []
    for _ in range(n):
        t = copy.deepcopy(start)
        with torch.no_grad():
            for p in t.parameters():
                p.add_(0.01 * torch.randn_like(p))
        teachers.append(t.eval())
    return start.eval(), teachers


def test_the_average_of_two_identical_teachers_is_that_teacher():
    _, (teacher, _) = nets(0)
    merged = task_arithmetic(None, [teacher, copy.deepcopy(teacher)], 0.5)
    for key, value in teacher.blocks.state_dict().items():
        assert torch.allclose(merged.blocks.state_dict()[key].float(), value.float(), atol=1e-7), key


def test_task_arithmetic_is_the_start_plus_lambda_times_the_summed_task_vectors():
    start, teachers = nets(1, 3)
    merged = task_arithmetic(start, teachers, 0.7)
    key = "blocks.3.conv1.weight"
    s = start.blocks.state_dict()[key.removeprefix("blocks.")]
    by_hand = s + 0.7 * sum(t.blocks.state_dict()[key.removeprefix("blocks.")] - s for t in teachers)
    assert torch.allclose(merged.blocks.state_dict()[key.removeprefix("blocks.")], by_hand, atol=1e-6)
    mean = task_arithmetic(start, teachers, 1 / 3)
    plain = task_arithmetic(None, teachers, 1 / 3)
    for k, v in mean.blocks.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(v, plain.blocks.state_dict()[k], atol=1e-6), k


def test_a_lambda_other_than_the_mean_needs_the_start_and_architectures_must_match():
    _, teachers = nets(2)
    with pytest.raises(ConfigError, match="needs the teachers' shared start"):
        task_arithmetic(None, teachers, 0.3)
    other = build_backbone("resnet18_narrow", 5, width=16)
    with pytest.raises(ConfigError, match="different architectures"):
        task_arithmetic(None, [teachers[0], other], 0.5)
    with pytest.raises(ConfigError, match="positive"):
        task_arithmetic(None, teachers, float("nan"))


def test_batchnorm_statistics_are_estimated_again_on_the_images():
    """After re-estimation on one batch, the first BatchNorm's running mean is that batch's channel mean of its
    input (and differs from the teacher's own statistics)."""
    _, (teacher, _) = nets(3)
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    net = copy.deepcopy(teacher)
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    seen = []
    handle = bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    before = bn.running_mean.clone()
    reestimate_batchnorm(net, images, batch_size=16)
    handle.remove()
    assert not net.training and bn.momentum == 0.1
    assert torch.allclose(bn.running_mean, seen[0].mean(dim=(0, 2, 3)), atol=1e-5)
    assert not torch.allclose(bn.running_mean, before)


def test_the_merged_student_has_each_label_s_head_row_from_its_teacher():
    start, teachers = nets(4)
    labels = [["a", "b", "c", "d", "e"], ["f", "g", "h", "i", "j"]]
    plan = task_plan(["b", "h", "i"], labels)
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    net = merged_student(start, teachers, plan, 0.5, images)
    assert net.num_classes == 3
    assert torch.equal(net.head.fc.weight[0], teachers[0].head.fc.weight[1])
    assert torch.equal(net.head.fc.weight[2], teachers[1].head.fc.weight[3])


def cli(*args) -> tuple[int, str]:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        code = main(list(args))
    return code, buffer.getvalue()


def test_kalib_merge_of_kalib_teachers_is_read_by_evaluate_and_predict(smoke_teachers, tmp_path, one_thread):
    out = tmp_path / "merged.pt"
    code, log = cli("merge", "--teachers", str(smoke_teachers), "--preset", "smoke", "--out", str(out),
                    "--tasks", "pullover,two", "--pool-images", "64")
    assert code == 0, log
    meta = read_meta(out)
    assert meta["role"] == "merged" and meta["labels"] == ["pullover", "two"] and meta["lam"] == 0.5
    assert meta["pool_images"] == 64 and "test_map" in meta and "merged 2 teachers (lambda 0.5)" in log
    net, _ = load_model(out)
    assert net.num_classes == 2
    code, log = cli("evaluate", str(out), "--preset", "smoke", "--json")
    assert code == 0 and json.loads(log)["mAP"] == pytest.approx(meta["test_map"], abs=0.01)


@pytest.mark.parametrize("extra, message", [
    ([], "give either --teachers DIR"),
    (["--teachers", "T", "--pool", "p"], "--pool goes with --teacher"),
    (["--teachers", "T", "--lam", "-1"], "--lam must be a positive number"),
    (["--teacher", "resnet18:a.pt:a.txt"], "--teacher needs --pool DIR"),
    (["--teacher", "resnet18:a.pt:a.txt", "--teacher", "resnet34:b.pt:b.txt", "--pool", "P"],
     "teachers of different architectures"),
])
def test_kalib_merge_refuses_bad_input_in_one_line(smoke_teachers, tmp_path, extra, message):
    args = [a.replace("T", str(smoke_teachers)) if a == "T" else a for a in extra]
    (tmp_path / "P").mkdir()
    code, log = cli("merge", "--out", str(tmp_path / "m.pt"), "--preset", "smoke", *args) if "--teachers" in args \
        else cli("merge", "--out", str(tmp_path / "m.pt"), *[str(tmp_path / "P") if a == "P" else a for a in args])
    assert code == 2 and message in log and len(log.strip().splitlines()) == 1, log
    assert not (tmp_path / "m.pt").exists()
