"""The lessons' build-it checkers (kalib.report.builds): each accepts a right version of Eq. 4, Eq. 6, Eq. 7–8 or a
block's loop, says "not written yet" for the skeleton (NotImplementedError), and refuses a version with a typical
mistake with a hint. Tiny random networks stand in for a run."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kalib.method.blockwise import soft_targets
from kalib.method.filters import task_plan
from kalib.method.student import freeze, init_student, make_filters
from kalib.models import build_backbone
from kalib.report import builds
from kalib.train import Schedule, batches, to_input

LABELS = [["a0", "a1", "a2"], ["b0", "b1"]]
pytestmark = pytest.mark.usefixtures("one_thread")      # tiny networks: one thread (tests/conftest.py)


class RightFilter(nn.Module):
    def __init__(self, channels, reduction=4, identity=True, factor=2.0):
        super().__init__()
        self.fc1, self.fc2, self.factor = nn.Linear(channels, channels // reduction), nn.Linear(channels // reduction, channels), factor
        if identity:
            nn.init.zeros_(self.fc2.weight)
            nn.init.zeros_(self.fc2.bias)

    def forward(self, x):
        w = self.factor * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * w[:, :, None, None]


class Skeleton(RightFilter):
    def forward(self, x):
        raise NotImplementedError("your lines")


def test_the_filter_checker():
    assert builds.check_filter(RightFilter)
    assert builds.check_filter(Skeleton).ok is None and "Not written yet" in builds.check_filter(Skeleton).message
    not_identity = builds.check_filter(lambda c, r: RightFilter(c, r, identity=False))
    assert not not_identity and "identity" in not_identity.message

    class OneSigmoid(RightFilter):                        # w = σ(...): the identity start fails
        def __init__(self, c, r):
            super().__init__(c, r, factor=1.0)
    assert "identity" in builds.check_filter(OneSigmoid).message

    class NoRelu(RightFilter):
        def forward(self, x):
            w = 2 * torch.sigmoid(self.fc2(self.fc1(x.mean(dim=(2, 3)))))
            return x * w[:, :, None, None]
    refused = builds.check_filter(NoRelu)
    assert not refused and "outputs differ" in refused.message

    class Detached(RightFilter):                          # right numbers, no gradient to the weights
        def forward(self, x):
            with torch.no_grad():
                return super().forward(x)
    assert "no gradient" in builds.check_filter(Detached).message


@pytest.fixture(scope="module")
def run():
    torch.manual_seed(0)
    teachers = freeze([build_backbone("resnet18_narrow", num_classes=len(g), width=8) for g in LABELS])
    plan = task_plan(["a2", "b1", "a0"], LABELS)
    student = init_student("teacher-mean", teachers).eval()
    filters = make_filters(student, teachers)
    images = torch.randint(0, 256, (48, 3, 16, 16), dtype=torch.uint8)
    return student, filters, teachers, plan, images


def entangled(F_u, k, filters_k, teachers, plan):
    out = F_u.new_zeros(len(F_u), len(plan.tasks))
    for n in plan.active_teachers:
        out[:, plan.per_teacher[n]] = teachers[n].suffix(filters_k[n](F_u), k)[:, plan.local_per_teacher[n]]
    return out


def loss(pred, target):
    q = torch.sigmoid(target)
    return (-(q * F.logsigmoid(pred) + (1 - q) * F.logsigmoid(-pred))).mean(0).sum() / pred.shape[1]


def test_the_eq6_and_eq7_checkers(run):
    student, filters, teachers, plan, images = run
    k = 3
    with torch.no_grad():
        feats = student.prefix(to_input(images[:8]), k - 1)
    soft = soft_targets(teachers, images[:8], plan)
    args = (student.blocks[k - 1], filters[k - 1], teachers, plan, feats)
    assert builds.check_entangled(entangled, *args, k)
    assert builds.check_filtered_loss(loss, entangled, *args, soft, k)

    def unwritten(*_):
        raise NotImplementedError
    assert builds.check_entangled(unwritten, *args, k).ok is None
    assert builds.check_filtered_loss(unwritten, entangled, *args, soft, k).ok is None

    def in_teacher_order(F_u, k, filters_k, teachers, plan):      # the columns not put back in C's order
        return torch.cat([teachers[n].suffix(filters_k[n](F_u), k)[:, plan.local_per_teacher[n]]
                          for n in plan.active_teachers], dim=1)
    assert "outputs differ" in builds.check_entangled(in_teacher_order, *args, k).message

    def hard_targets(pred, target):                               # the teacher's 0/1 decision, not σ
        return F.binary_cross_entropy_with_logits(pred, (target > 0).float(), reduction="none").mean(0).sum() / pred.shape[1]
    assert "on kalib's own predictions" in builds.check_filtered_loss(hard_targets, entangled, *args, soft, k).message

    def summed(pred, target):                                     # no division by |C| (Eq. 8)
        return loss(pred, target) * pred.shape[1]
    assert not builds.check_filtered_loss(summed, entangled, *args, soft, k)


def _loop(step_lines):
    def my_train_block(block, filters_k, feats, soft, k, schedule, seed=0):
        params = [p for part in (block, *filters_k) for p in part.parameters()]
        opt = torch.optim.SGD(params, lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay)
        steps = len(feats) // schedule.batch_size
        poly = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=schedule.epochs * steps, power=schedule.power)
        order = torch.Generator().manual_seed(seed)
        block.train()
        for _ in range(schedule.epochs):
            for idx in batches(len(feats), schedule.batch_size, order, drop_last=True):
                step_lines(block, filters_k, feats[idx], soft[idx], k, opt, poly)
    return my_train_block


def _step(block, filters_k, h, target, k, opt, poly, teachers, plan):
    value = loss(entangled(block(h), k, filters_k, teachers, plan), target)
    opt.zero_grad()
    value.backward()
    opt.step()
    poly.step()


def test_the_loop_checker(run):
    student, filters, teachers, plan, images = run
    k, schedule = 3, Schedule(epochs=2, lr=0.05, batch_size=16)
    soft = soft_targets(teachers, images, plan)
    args = (student, filters[k - 1], teachers, plan, images, soft, k, schedule)
    right = builds.check_train_loop(_loop(lambda *a: _step(*a, teachers, plan)), *args)
    assert right and "After 6 steps" in right.message

    def unwritten(*_):
        raise NotImplementedError
    assert builds.check_train_loop(_loop(unwritten), *args).ok is None
    assert builds.check_train_loop(_loop(lambda *a: None), *args).ok is None      # a loop that never steps

    def no_schedule(block, filters_k, h, target, k, opt, poly):                 # the poly learning rate forgotten
        value = loss(entangled(block(h), k, filters_k, teachers, plan), target)
        opt.zero_grad()
        value.backward()
        opt.step()
    refused = builds.check_train_loop(_loop(no_schedule), *args)
    assert not refused and "differ from kalib's train_block" in refused.message
    fewer = dataclasses.replace(schedule, epochs=1)
    assert builds.check_train_loop(_loop(lambda *a: _step(*a, teachers, plan)), *args[:-1], fewer)
