"""The start of Alg. 1 (line 1): the student T(θ_0), the teacher-level filters f_n^k (Eq. 4) of every
block, and the teachers A_n(θ_n), which stay fixed throughout amalgamation."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..device import as_device
from ..errors import ConfigError
from ..models.blocknet import BlockNet, build_backbone
from .filters import TeacherFilter

INITS = ("generic", "random", "teacher1", "teacher-mean")
CL = torch.channels_last        # as kalib.train: ~1.5x faster convolutions on the CPU


def freeze(teachers: Sequence[BlockNet], device=None) -> list[BlockNet]:
    """Teachers are fixed during amalgamation: eval mode (BatchNorm uses its running statistics and
    never updates them) and no gradients for their weights; moved to ``device`` (default CPU)."""
    device = as_device(device)
    for t in teachers:
        t.to(device=device, memory_format=CL).eval().requires_grad_(False)
    return list(teachers)



def make_filters(student: BlockNet, teachers: Sequence[BlockNet], reduction: int = 4) -> nn.ModuleList:
    """f_n^k for every block k and teacher n (``filters[k-1][n]``), each starting as the identity."""
    for t in teachers:
        if t.num_blocks != student.num_blocks:
            raise ValueError(f"student has {student.num_blocks} blocks but a teacher ({t.arch}) has "
                             f"{t.num_blocks}; block-wise amalgamation needs the same block count")
    return nn.ModuleList(
        nn.ModuleList(TeacherFilter(student.out_channels[k], t.out_channels[k], reduction) for t in teachers)
        for k in range(student.num_blocks))


def init_student(init: str, teachers: Sequence[BlockNet], generic: BlockNet | None = None,
                 seed: int = 0) -> BlockNet:
    """The student T(θ_0) of Alg. 1 line 1.

    ``generic``: the shared generic backbone the teachers started from (docs/design.md §1, the default);
    ``random``: a fresh network of the teachers' architecture; ``teacher1``: a copy of teacher 1;
    ``teacher-mean`` (beyond the paper): the average of the teachers' weights and BatchNorm statistics, which
    sits between teachers fine-tuned from one shared start.
    """
    if init == "generic":
        if generic is None:
            raise ValueError("init='generic' needs the generic backbone the teachers started from")
        student = copy.deepcopy(generic)
    elif init == "random":
        torch.manual_seed(seed)
        student = build_backbone(**teachers[0].config)
    elif init == "teacher1":
        student = copy.deepcopy(teachers[0])
    elif init == "teacher-mean":      # the blocks' weights and statistics; the head (never used) is teacher 1's
        student = copy.deepcopy(teachers[0])
        states = [t.blocks.state_dict() for t in teachers]
        student.blocks.load_state_dict({k: (sum(s[k].double() for s in states) / len(states)).to(v.dtype)
                                        if v.is_floating_point() else v for k, v in states[0].items()})
    else:
        raise ConfigError(f"unknown student init '{init}'; valid: {', '.join(INITS)}")
    return student.requires_grad_(True).train()
