"""Branch-out (paper Eq. 9) and the assembled TargetNet (Eq. 10) on tiny width-8 networks at 32 px."""
import numpy as np
import pytest
import torch

from kalib.amalgamate import entangled_predictions, finetune, make_filters, soft_targets
from kalib.branch import (TargetNet, assemble, branch_points, count_parameters, forced_branch_points,
                          load_target, save_target)
from kalib.checkpoints import save_model
from kalib.cli import main
from kalib.filters import task_plan
from kalib.models import build_backbone
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


def test_forced_branch_points(nets):
    student = nets[0]
    assert forced_branch_points(student, "b2", 3) == [4, 4, 4]       # last block of stage 2
    assert forced_branch_points(student, "b3_1", 2) == [5, 5]
    assert forced_branch_points(student, 8, 1) == [8]
    with pytest.raises(ValueError, match="valid"):
        forced_branch_points(student, "b9", 1)


@pytest.mark.parametrize("tasks,points", [(None, [2, 2, 8, 5, 2]), ("e,a,c", [1, 3, 3]), ("d", [8]),
                                          (None, [1, 1, 1, 1, 1])])
def test_targetnet_equals_entangled_forward(nets, tasks, points):
    """Eq. 10: task i's TargetNet output = student 1..S_i -> f_n^{S_i} -> teacher n's rest, row i of
    teacher n's head; tasks with the same (teacher, S) share one branch."""
    student, teachers, filters, x = nets
    plan = task_plan(tasks, LABELS)
    target = assemble(student, filters, teachers, plan, points)
    assert len(target.trunk) == max(points)
    assert len(target.branches) == len(set(zip(plan.teacher, points)))
    with torch.no_grad():
        out = target(x)
        assert out.shape == (4, len(plan.tasks))
        for i, s in enumerate(points):
            ref = entangled_predictions(student.prefix(x, s), s, filters[s - 1], teachers, plan)[:, i]
            assert torch.allclose(out[:, i], ref, atol=1e-5), (plan.tasks[i], s)


def test_parameter_count_below_teachers_when_branching_early(nets):
    student, teachers, filters, _ = nets
    plan = task_plan(None, LABELS)
    together = sum(count_parameters(t) for t in teachers)
    for k in range(1, 8):                           # max S < B: one trunk replaces N teacher prefixes
        assert count_parameters(assemble(student, filters, teachers, plan, [k] * 5)) < together
    assert count_parameters(assemble(student, filters, teachers, plan, [8] * 5)) > 0


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
