"""Branch-out (paper Eq. 9) and the assembled TargetNet (Eq. 10) on tiny width-8 networks at 32 px."""
import json

import numpy as np
import pytest
import torch

from kalib.cli import main
from kalib.errors import CheckpointError
from kalib.method.blockwise import entangled_predictions, soft_targets
from kalib.method.branch import branch_points, forced_branch_points, tolerant_branch_points
from kalib.method.filters import task_plan
from kalib.method.finetune import finetune
from kalib.method.student import make_filters
from kalib.method.targetnet import TargetNet, assemble, count_parameters
from kalib.models import build_backbone
from kalib.runs.checkpoints import load_target, save_model, save_target
from kalib.train import Schedule, to_input

LABELS = [("a", "b", "c"), ("d", "e")]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def nets():
    """Student, two teachers and trained-looking (non-identity) filters, all in eval mode."""
    torch.manual_seed(0)
    student = build_backbone("resnet18_narrow", 6, width=8).eval()
    teachers = []
    for labels in LABELS:
        t = student.with_new_head(len(labels))
        with torch.no_grad():
            for p in t.parameters():
                p.add_(0.1 * torch.randn_like(p))
        teachers.append(t.eval().requires_grad_(False))
    filters = make_filters(student, teachers)
    with torch.no_grad():
        for row in filters:
            for f in row:
                torch.nn.init.normal_(f.fc2.weight, std=0.5)
    filters.eval()
    x = to_input(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)))
    return student, teachers, filters, x


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_branch_points_are_argmin_of_converged_loss():
    losses = np.array([[0.5, 0.2, 0.3],
                       [0.4, 0.3, 0.3],
                       [0.6, 0.1, 0.9]])
    assert branch_points(losses) == [2, 3, 1]        # Eq. 9, 1-based blocks; ties -> earliest
    with pytest.raises(ValueError, match="NaN"):
        branch_points([[0.1, np.nan]])


def test_tolerant_branch_points_take_the_deepest_block_within_the_tolerance():
    losses = np.array([[0.50, 0.20, 0.30],
                       [0.40, 0.30, 0.30],
                       [0.43, 0.25, 0.90],
                       [0.46, 0.21, 0.35]])
    assert tolerant_branch_points(losses, 0.0) == branch_points(losses) == [2, 1, 1]
    assert tolerant_branch_points(losses, 0.03) == [3, 4, 2]      # within 0.03 of 0.40, 0.20 and 0.30
    assert tolerant_branch_points(losses, 0.06) == [4, 4, 4]
    assert tolerant_branch_points(losses, 1.0) == [4, 4, 4]
    with pytest.raises(ValueError, match=">= 0"):
        tolerant_branch_points(losses, -0.1)
    with pytest.raises(ValueError, match="NaN"):
        tolerant_branch_points([[0.1, np.nan]], 0.1)


def test_forced_branch_points(nets):
    student = nets[0]
    assert forced_branch_points(student, "b2", 3) == [4, 4, 4]       # last block of stage 2
    assert forced_branch_points(student, "b3_1", 2) == [5, 5]
    assert forced_branch_points(student, 8, 1) == [8]
    with pytest.raises(ValueError, match="valid"):
        forced_branch_points(student, "b9", 1)


@pytest.mark.parametrize("tasks,points", [(None, [2, 2, 8, 5, 2]), ("e,a,c", [1, 3, 3]), ("d", [8]),
                                          (None, [1, 1, 1, 1, 1]), (None, [1, 1, 1, 1, 2]), ("e,d", [6, 3])])
def test_targetnet_equals_entangled_forward(nets, tasks, points):
    """Eq. 10: task i's TargetNet output = student 1..S_i -> f_n^{S_i} -> teacher n's rest, row i of
    teacher n's head; tasks with the same (teacher, S) share one branch, a teacher's branches one copy."""
    student, teachers, filters, x = nets
    plan = task_plan(tasks, LABELS)
    target = assemble(student, filters, teachers, plan, points)
    assert len(target.trunk) == max(points)
    assert len(target.branches) == len(set(zip(plan.teacher, points)))
    assert sorted(target.tails) == sorted({str(n) for n in plan.teacher})
    with torch.no_grad():
        out = target(x)
        assert out.shape == (4, len(plan.tasks))
        for i, s in enumerate(points):
            ref = entangled_predictions(student.prefix(x, s), s, filters[s - 1], teachers, plan)[:, i]
            assert torch.allclose(out[:, i], ref, atol=1e-5), (plan.tasks[i], s)


def blocks_params(net, first, last):
    """Parameters of ``net``'s blocks first..last (1-based, inclusive)."""
    return sum(count_parameters(b) for b in net.blocks[first - 1:last])


@pytest.mark.parametrize("points", [[1, 1, 1, 1, 2], [2, 2, 8, 5, 2], [3, 6, 3, 7, 4], [8] * 5])
def test_targetnet_copies_every_teacher_block_once(nets, points):
    """The parameters are the student's blocks 1..max S_i, one copy of each teacher's blocks after its
    earliest branch-out block, one filter per (teacher, S_i) and one head row per task, nothing more."""
    student, teachers, filters, _ = nets
    plan = task_plan(None, LABELS)
    target = assemble(student, filters, teachers, plan, points)
    earliest = {n: min(s for m, s in zip(plan.teacher, points) if m == n) for n in set(plan.teacher)}
    num_blocks = student.num_blocks
    expected = (blocks_params(student, 1, max(points))
                + sum(blocks_params(teachers[n], s + 1, num_blocks) for n, s in earliest.items())
                + sum(count_parameters(filters[s - 1][n]) for n, s in set(zip(plan.teacher, points)))
                + len(plan.tasks) * (teachers[0].head.fc.in_features + 1))
    assert count_parameters(target) == expected


@pytest.mark.parametrize("points,smaller", [([k] * 5, True) for k in range(1, 8)] + [
    ([1, 1, 1, 1, 2], True), ([2, 2, 2, 1, 2], True), ([3, 3, 3, 7, 7], True), ([6, 6, 6, 5, 5], True),
    ([7, 7, 7, 1, 7], False), ([1, 2, 3, 2, 4], False)])
def test_parameter_count_against_teachers_when_branching_early(nets, points, smaller):
    """max S_i < B: the TargetNet is smaller than the teachers together exactly when the teacher
    prefixes its copies skip (blocks 1..earliest S of each teacher) outweigh the trunk (student blocks
    1..max S) and the filters. That always holds with one branch-out block per teacher (N >= 2), and
    here also when one teacher's tasks branch at two blocks; it fails when a teacher's tasks branch both
    early (a long copy) and at the trunk's end (a long trunk)."""
    student, teachers, filters, _ = nets
    plan = task_plan(None, LABELS)
    together = sum(count_parameters(t) for t in teachers)
    assert (count_parameters(assemble(student, filters, teachers, plan, points)) < together) == smaller


def test_targetnet_copies_its_parts_and_finetunes_without_touching_teachers(nets):
    student, teachers, filters, x = nets
    plan = task_plan(None, LABELS)
    before = [state(t) for t in teachers] + [state(student), state(filters)]
    target = assemble(student, filters, teachers, plan, [3, 3, 3, 6, 6])
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    soft = soft_targets(teachers, images, plan)
    start = state(target)
    finetune(target, images, soft, Schedule(epochs=1, lr=0.05, batch_size=8))
    assert not all(torch.equal(v, start[k]) for k, v in target.state_dict().items())
    for module, b in zip(teachers + [student, filters], before):
        after = state(module)
        assert all(torch.equal(after[k], b[k]) for k in b), "fine-tuning changed a teacher/student/filter"
    assert not target.training


def test_save_and_load_targetnet(nets, tmp_path):
    student, teachers, filters, x = nets
    plan = task_plan("e,a,d", LABELS)
    target = assemble(student, filters, teachers, plan, [2, 5, 2])
    path = save_target(tmp_path / "target.pt", target, role="targetnet")
    loaded, meta = load_target(path)
    assert isinstance(loaded, TargetNet) and meta["labels"] == ["e", "a", "d"]
    with torch.no_grad():
        assert torch.equal(loaded(x), target(x))
    meta_file = path.with_suffix(".json")
    meta = json.loads(meta_file.read_text())
    del meta["targetnet"]["teacher_copies"]          # as written before teachers were copied once
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="older kalib.*--restart"):
        load_target(path)


def test_cli_unknown_task_is_one_line_error(nets, tmp_path, capsys):
    student, teachers, _, _ = nets
    save_model(tmp_path / "generic-resnet18_narrow.pt", student, role="generic")
    for n, (t, labels) in enumerate(zip(teachers, LABELS), start=1):
        save_model(tmp_path / f"teacher2-resnet18_narrow-{n}.pt", t, role="teacher", labels=list(labels))
    code = main(["amalgamate", "--preset", "smoke", "--teachers", str(tmp_path), "--tasks", "a,ee",
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "unknown task 'ee'" in err and "Did you mean 'e'" in err
    code = main(["amalgamate", "--preset", "smoke", "--teachers", str(tmp_path / "none"),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and "pretrain" in capsys.readouterr().err
