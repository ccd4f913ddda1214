"""The assembled task-customized TargetNet (paper §3.5, Eq. 10).

    T_i = [T^1 .. T^{S_i}  (the shared student trunk),  f_n^{S_i},  A_n^{S_i+1} .. A_n^B,  F_n^i]

i.e. the student blocks up to max_i S_i (later ones are dropped), and per task a branch made of the
filter of its teacher n at S_i (Eq. 4), a *copy* of teacher n's blocks S_i+1..B and the head row of task i.
Tasks with the same (teacher, S_i) share one branch. Branches of one teacher at different blocks also
share one copy of that teacher's blocks (kalib's choice; the paper replicates per task): a branch at S
enters the copy at block S+1, so every task computes exactly what Eq. 10 says, and a teacher is never
copied twice. :class:`TargetNet` is that network as one module; the branch blocks S_i come from
:mod:`kalib.method.branch` (Eq. 9).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..models import BlockNet, build_backbone
from .filters import TaskPlan, TeacherFilter


def _head_rows(fc: nn.Linear, rows: Sequence[int]) -> nn.Sequential:
    """Global pool -> flatten -> a Linear holding only the head rows ``rows`` of ``fc`` (copied)."""
    new = nn.Linear(fc.in_features, len(rows), bias=fc.bias is not None)
    with torch.no_grad():
        new.weight.copy_(fc.weight[list(rows)])
        if fc.bias is not None:
            new.bias.copy_(fc.bias[list(rows)])
    return nn.Sequential(OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1), fc=new))


class Branch(nn.Module):
    """One branch of Eq. 10 at block S: the filter f_n^S and teacher n's head rows of the branch's tasks.
    Teacher n's blocks S+1..B between them are the teacher's copy in :attr:`TargetNet.tails`."""

    def __init__(self, teacher_filter: nn.Module, teacher: BlockNet, rows: Sequence[int]):
        super().__init__()
        self.filter = copy.deepcopy(teacher_filter)
        self.head = _head_rows(teacher.head.fc, rows)


class TargetNet(nn.Module):
    """Eq. 10: the task-customized student. Forward returns logits ``(batch, |C|)`` in the order of C.

    ``trunk`` = copies of student blocks 1..max_i S_i; ``tails[str(n)]`` = one copy of teacher n's blocks
    after its earliest branch-out block; ``branches[j]`` taps the trunk after block ``branch_block[j]``,
    runs its filter, then teacher ``branch_teacher[j]``'s tail from block ``branch_block[j] + 1`` and its
    head rows, and serves the tasks at positions ``branch_tasks[j]`` of C. ``spec`` is a JSON description
    from which :meth:`from_spec` rebuilds it.
    """

    def __init__(self, student: BlockNet, filters, teachers: Sequence[BlockNet], plan: TaskPlan,
                 points: Sequence[int]):
        super().__init__()
        if len(points) != len(plan.tasks):
            raise ValueError(f"need one branch block per task ({len(plan.tasks)}), got {len(points)}")
        num_blocks = student.num_blocks
        if any(not 1 <= s <= num_blocks for s in points):
            raise ValueError(f"branch blocks must be in 1..{num_blocks}, got {list(points)}")
        self.tasks = list(plan.tasks)
        self.points = [int(s) for s in points]
        self.trunk = nn.ModuleList(copy.deepcopy(b) for b in student.blocks[:max(self.points)])
        groups: dict[tuple[int, int], list[int]] = {}
        for i, (n, s) in enumerate(zip(plan.teacher, self.points)):
            groups.setdefault((n, s), []).append(i)
        self.branch_teacher, self.branch_block, self.branch_tasks = [], [], []
        branches = []
        for (n, s), positions in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            rows = [plan.local[i] for i in positions]
            branches.append(Branch(filters[s - 1][n], teachers[n], rows))
            self.branch_teacher.append(n)
            self.branch_block.append(s)
            self.branch_tasks.append(positions)
        self.branches = nn.ModuleList(branches)
        self.tail_start = {}                       # teacher -> its earliest branch-out block
        for n, s in zip(self.branch_teacher, self.branch_block):
            self.tail_start.setdefault(n, s)       # branches are sorted by block
        self.tails = nn.ModuleDict({str(n): nn.ModuleList(copy.deepcopy(b) for b in teachers[n].blocks[s:])
                                    for n, s in sorted(self.tail_start.items())})
        order = [i for positions in self.branch_tasks for i in positions]
        self.register_buffer("_unpermute", torch.tensor(np.argsort(order), dtype=torch.long), persistent=False)
        self.spec = {
            "tasks": self.tasks, "points": self.points,
            "block_names": list(student.block_names),
            "student_config": dict(student.config),
            "teacher_configs": {str(n): dict(teachers[n].config) for n in sorted(set(plan.teacher))},
            "teacher": list(plan.teacher), "local": list(plan.local),
            "num_teachers": plan.num_teachers,
            "filters": {f"{s}:{n}": _filter_config(filters[s - 1][n]) for (n, s) in groups},
            "teacher_copies": "one per teacher",
        }

    @property
    def branch_names(self) -> list[str]:
        names = self.spec["block_names"]
        return [f"teacher{n + 1}@{names[s - 1]}" for n, s in zip(self.branch_teacher, self.branch_block)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [None] * len(self.branches)
        h = x
        for k, block in enumerate(self.trunk, start=1):
            h = block(h)
            for j, s in enumerate(self.branch_block):
                if s == k:
                    outs[j] = self._branch_forward(j, h)
        return torch.cat(outs, dim=1)[:, self._unpermute]

    def _branch_forward(self, j: int, h: torch.Tensor) -> torch.Tensor:
        """Branch j on the trunk's features after its block S: f_n^S, teacher n's blocks S+1..B, head."""
        n, s = self.branch_teacher[j], self.branch_block[j]
        h = self.branches[j].filter(h)
        for block in self.tails[str(n)][s - self.tail_start[n]:]:
            h = block(h)
        return self.branches[j].head(h)

    @classmethod
    def from_spec(cls, spec: dict) -> "TargetNet":
        """An untrained TargetNet of the shape described by ``spec`` (load weights afterwards)."""
        student = build_backbone(**spec["student_config"])
        teachers = {int(n): build_backbone(**cfg) for n, cfg in spec["teacher_configs"].items()}
        num_blocks = student.num_blocks
        filters = [[None] * spec["num_teachers"] for _ in range(num_blocks)]
        for key, cfg in spec["filters"].items():
            s, n = (int(v) for v in key.split(":"))
            filters[s - 1][n] = TeacherFilter(**cfg)
        plan = TaskPlan(tuple(spec["tasks"]), tuple(spec["teacher"]), tuple(spec["local"]), spec["num_teachers"])
        teacher_list = [teachers.get(n) for n in range(spec["num_teachers"])]
        return cls(student, filters, teacher_list, plan, spec["points"])


def _filter_config(f: TeacherFilter) -> dict:
    return {"in_channels": f.in_channels, "out_channels": f.out_channels, "reduction": f.reduction}


def assemble(student: BlockNet, filters, teachers: Sequence[BlockNet], plan: TaskPlan,
             points: Sequence[int]) -> TargetNet:
    """Eq. 10: the TargetNet for branch-out blocks ``points`` (from :func:`branch_points` or
    :func:`forced_branch_points`), in eval mode. Student, filters and teachers are copied, not shared."""
    return TargetNet(student, filters, teachers, plan, points).eval()


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
