"""The two-step filtering of paper §3.4: teacher-level filter f_n^k (Eq. 4) and task-level selection g.

* :class:`TeacherFilter` is f_n^k: "a light channel coding module consisting of a global pooling layer and
  two fully connected layers" whose output re-weights the channels of the student's block-k features
  F_u^k before they enter teacher n (F_un^k = f_n^k(F_u^k), Eq. 4). One filter per (teacher, block).
* :func:`select_tasks` is g: it keeps the teacher outputs of the customized tasks C_n ⊆ A_n (no
  parameters); :func:`task_plan` maps the task *names* of C to (teacher, output index) pairs.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError, UnknownTaskError
from ..labels import resolve_tasks


class TeacherFilter(nn.Module):
    """Eq. 4: F_un^k = f_n^k(F_u^k), a channel re-weighting of the student's block-k features.

    global average pool -> FC(C -> C/r) -> ReLU -> FC(C/r -> C) -> w = 2·sigmoid(.) in (0, 2), then
    ``x * w`` channel-wise. The last FC starts at zero, so w = 1 and the filter starts as the identity
    (docs/design.md §1: a plain sigmoid would halve every channel and the teacher's frozen BatchNorm would see
    features at the wrong scale). When the teacher's width differs from the student's
    (``out_channels != in_channels``), a 1x1 conv adapter follows the re-weighting.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, reduction: int = 4):
        super().__init__()
        if in_channels < 1 or reduction < 1:
            raise ValueError(f"need in_channels >= 1 and reduction >= 1, got {in_channels}, {reduction}")
        self.in_channels = in_channels
        self.out_channels = in_channels if out_channels is None else out_channels
        self.reduction = reduction
        hidden = max(in_channels // reduction, 1)
        self.fc1 = nn.Linear(in_channels, hidden)
        self.fc2 = nn.Linear(hidden, in_channels)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)
        self.adapter = (nn.Conv2d(in_channels, self.out_channels, 1, bias=False)
                        if self.out_channels != in_channels else None)

    def channel_weights(self, x: torch.Tensor) -> torch.Tensor:
        """w = 2·sigmoid(FC(ReLU(FC(GAP(x))))), shape ``(batch, channels)``."""
        return 2.0 * torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * self.channel_weights(x)[:, :, None, None]
        return y if self.adapter is None else self.adapter(y)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, reduction={self.reduction}"


def select_tasks(logits: torch.Tensor, index: Sequence[int]) -> torch.Tensor:
    """Task-level filter g: the outputs of teacher n for its customized tasks C_n (columns ``index``).

    g is the identity when C_n = A_n (paper §3.4); it has no parameters.
    """
    return logits[:, list(index)]


@dataclass(frozen=True)
class TaskPlan:
    """Where every task of C comes from.

    ``tasks`` (names, in the order of C), ``teacher`` (n, 0-based, for each task), ``local`` (the task's
    output index in teacher n), and per teacher ``per_teacher[n]`` = positions in C of the tasks of C_n
    and ``local_per_teacher[n]`` = their output indices in teacher n (empty when C_n = ∅).
    ``temperatures`` (beyond the paper; empty: every teacher multi-label, the paper's case): per teacher,
    ``None`` for a multi-label (sigmoid) head, or the temperature T of a single-label (softmax) head, whose
    tasks of C are learnt with a cross-entropy against its softmax (:attr:`softmax_groups`).
    """
    tasks: tuple[str, ...]
    teacher: tuple[int, ...]
    local: tuple[int, ...]
    num_teachers: int
    temperatures: tuple[float | None, ...] = ()

    @property
    def per_teacher(self) -> list[list[int]]:
        return [[i for i, t in enumerate(self.teacher) if t == n] for n in range(self.num_teachers)]

    @property
    def local_per_teacher(self) -> list[list[int]]:
        return [[self.local[i] for i in pos] for pos in self.per_teacher]

    @property
    def active_teachers(self) -> list[int]:
        """Teachers with at least one selected task (only these need filters and forward passes)."""
        return [n for n, pos in enumerate(self.per_teacher) if pos]

    @property
    def softmax_groups(self) -> tuple[tuple[tuple[int, ...], float], ...]:
        """``((positions in C, T), …)``: the tasks of every single-label teacher with tasks in C and its
        temperature; ``()`` when every teacher is multi-label (the paper's case)."""
        temps = self.temperatures or (None,) * self.num_teachers
        return tuple((tuple(pos), float(t)) for pos, t in zip(self.per_teacher, temps) if pos and t is not None)


def task_plan(tasks: str | Iterable[str] | None, teacher_labels: Sequence[Sequence[str]], *,
              shared: str = "refuse", temperatures: Sequence[float | None] = ()) -> TaskPlan:
    """Resolve the customized task set C (names, or a comma-separated string; ``None`` = all labels of
    all teachers, C = A) against the teachers' label lists A_1..A_N.

    Raises :class:`~kalib.data.UnknownTaskError` (with a suggestion) for a name no teacher knows, and
    ``ValueError`` if a name belongs to more than one teacher (the paper's teachers are disjoint), unless
    ``shared="first"``: then such a label is taken from the first teacher that has it (teachers a user
    brings, :func:`shared_labels` says which). ``temperatures``: :attr:`TaskPlan.temperatures`.
    """
    all_labels = [name for labels in teacher_labels for name in labels]
    if shared == "first":
        all_labels = list(dict.fromkeys(all_labels))
    elif len(set(all_labels)) != len(all_labels):
        dup = sorted({n for n in all_labels if all_labels.count(n) > 1})
        raise ConfigError(f"teachers share task names {dup}; each task must belong to one teacher")
    names = all_labels if tasks is None else [all_labels[i] for i in resolve_tasks(tasks, all_labels)]
    owner = {}
    for n, labels in enumerate(teacher_labels):
        for name in labels:
            owner.setdefault(name, (n, list(labels).index(name)))
    teacher = tuple(owner[name][0] for name in names)
    local = tuple(owner[name][1] for name in names)
    if not names:
        raise UnknownTaskError("the customized task set C is empty")
    return TaskPlan(tuple(names), teacher, local, len(teacher_labels), tuple(temperatures))


def shared_labels(teacher_labels: Sequence[Sequence[str]]) -> dict[str, list[int]]:
    """Labels that more than one teacher has: name -> the teachers (0-based) that have it, first the one
    ``task_plan(..., shared="first")`` takes it from."""
    owners: dict[str, list[int]] = {}
    for n, labels in enumerate(teacher_labels):
        for name in labels:
            owners.setdefault(name, []).append(n)
    return {name: ns for name, ns in owners.items() if len(ns) > 1}
