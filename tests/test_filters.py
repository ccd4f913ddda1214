"""Eq. 4 teacher-level filter f_n^k and the task-level selection g (paper §3.4, docs/design.md §1)."""
import pytest
import torch

from kalib.errors import UnknownTaskError
from kalib.method.filters import TeacherFilter, select_tasks, task_plan


def test_filter_starts_as_identity():
    """2·sigmoid(0) = 1: the untrained filter must not rescale the features (docs/design.md §1)."""
    torch.manual_seed(0)
    f = TeacherFilter(8)
    x = torch.randn(3, 8, 5, 5)
    assert torch.equal(f(x), x)


def test_filter_is_channel_reweighting_from_pooled_features():
    """Eq. 4: GAP -> FC -> ReLU -> FC -> 2·sigmoid gives one weight per (image, channel) in (0, 2)."""
    torch.manual_seed(0)
    f = TeacherFilter(8, reduction=2)
    torch.nn.init.normal_(f.fc2.weight)
    torch.nn.init.normal_(f.fc2.bias)
    x = torch.randn(3, 8, 5, 5)
    pooled = x.mean(dim=(2, 3))
    w = 2 * torch.sigmoid(f.fc2(torch.relu(f.fc1(pooled))))
    assert f.fc1.out_features == 4
    assert torch.allclose(f(x), x * w[:, :, None, None], atol=1e-6)
    assert ((w > 0) & (w < 2)).all()
    # the weight depends only on the pooled features: a spatial permutation permutes the output
    perm = torch.randperm(25)
    xs = x.flatten(2)[:, :, perm].reshape_as(x)
    assert torch.allclose(f(xs).flatten(2), f(x).flatten(2)[:, :, perm], atol=1e-6)


def test_filter_adapter_only_when_widths_differ():
    assert TeacherFilter(8).adapter is None
    assert TeacherFilter(8, 8).adapter is None
    f = TeacherFilter(8, 12)
    assert f(torch.randn(2, 8, 4, 4)).shape == (2, 12, 4, 4)


def test_filter_learns():
    """The zero-initialised last FC still receives gradient, so the filter can move off the identity."""
    torch.manual_seed(0)
    f = TeacherFilter(8)
    f(torch.randn(4, 8, 3, 3)).pow(2).mul(torch.linspace(-1, 1, 8)[None, :, None, None]).sum().backward()
    assert f.fc2.weight.grad.abs().sum() > 0


def test_select_tasks_picks_columns():
    logits = torch.arange(12.0).reshape(2, 6)
    assert torch.equal(select_tasks(logits, [4, 1]), logits[:, [4, 1]])
    assert torch.equal(select_tasks(logits, range(6)), logits)      # g = identity when C_n = A_n


def test_task_plan_maps_names_to_teachers():
    labels = [("a", "b", "c"), ("d", "e")]
    plan = task_plan("e,b,d", labels)
    assert plan.tasks == ("e", "b", "d")
    assert plan.teacher == (1, 0, 1) and plan.local == (1, 1, 0)
    assert plan.per_teacher == [[1], [0, 2]]
    assert plan.local_per_teacher == [[1], [1, 0]]
    full = task_plan(None, labels)                                   # C = A
    assert full.tasks == ("a", "b", "c", "d", "e") and full.active_teachers == [0, 1]
    only = task_plan(["c"], labels)
    assert only.active_teachers == [0] and only.per_teacher == [[0], []]


def test_task_plan_errors():
    labels = [("coat", "bag"), ("one", "two")]
    with pytest.raises(UnknownTaskError, match="coat"):
        task_plan("caot", labels)
    with pytest.raises(UnknownTaskError):
        task_plan("coat,coat", labels)
    with pytest.raises(ValueError, match="share"):
        task_plan(None, [("coat",), ("coat", "bag")])
