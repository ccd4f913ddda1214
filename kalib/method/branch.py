"""Branch-out (paper §3.5, Eq. 9): where each task leaves the shared student trunk.

After the B blocks of the student have been trained with Eq. 7, every task i of C has a converged loss
L_i^k per block k. Eq. 9 picks its branch-out block S_i = argmin_k L_i^k (:func:`branch_points`); kalib's
named alternative :func:`tolerant_branch_points` (beyond the paper) takes the deepest block within a loss
tolerance of the minimum; :func:`forced_branch_points` sends every task to one block (Table 1's
``Target bK`` rows). The TargetNet these blocks define is Eq. 10 (:mod:`kalib.method.targetnet`).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from ..models import BlockNet


def branch_points(losses) -> list[int]:
    """Eq. 9: S_i = argmin_k L_i^k for every task i.

    ``losses`` is ``(B, |C|)`` (row k-1 = block k); returns 1-based block indices, one per task. Exact
    ties go to the earliest block (``numpy.argmin``).
    """
    return [int(k) + 1 for k in _checked(losses).argmin(axis=0)]


def tolerant_branch_points(losses, tolerance: float) -> list[int]:
    """Beyond the paper: S_i = the deepest block k with L_i^k <= min_k L_i^k + ``tolerance``.

    Eq. 9's argmin lets a loss that rises by a hair with depth keep every task at the first block, and so
    keeps the whole of every teacher. Trading a stated loss margin (in the units of Eq. 7, nats of binary
    cross-entropy per task) for a deeper shared trunk is what makes the TargetNet compact. ``tolerance``
    0 is Eq. 9 (:func:`branch_points`).
    """
    if not tolerance >= 0:
        raise ConfigError(f"branch tolerance must be >= 0, got {tolerance}")
    if tolerance == 0:
        return branch_points(losses)
    losses = _checked(losses)
    within = losses <= losses.min(axis=0) + tolerance
    return [int(np.flatnonzero(within[:, i]).max()) + 1 for i in range(losses.shape[1])]


def _checked(losses) -> np.ndarray:
    losses = np.asarray(losses, dtype=np.float64)
    if losses.ndim != 2 or losses.shape[0] < 1:
        raise ValueError(f"losses must be (blocks, tasks), got shape {losses.shape}")
    if not np.isfinite(losses).all():
        raise ValueError("converged losses contain NaN or inf; cannot choose branch-out blocks")
    return losses


def forced_branch_points(student: BlockNet, where: str | int, num_tasks: int) -> list[int]:
    """Every task branches at one block (the "Target b1..b4" rows of Table 1).

    ``where``: a stage name ("b1".."b4": its last block, ``stage_ends``), a block name ("b2_1") or a
    1-based block index.
    """
    if isinstance(where, int) or (isinstance(where, str) and where.isdigit()):
        k = int(where)
        if not 1 <= k <= student.num_blocks:
            raise ConfigError(f"branch block must be in 1..{student.num_blocks}, got {k}")
    elif where in student.stage_ends:
        k = student.stage_ends[where]
    elif where in student.block_names:
        k = student.block_index(where)
    else:
        raise ConfigError(f"unknown branch block {where!r}; valid: stages {', '.join(student.stage_ends)} "
                         f"or blocks {', '.join(student.block_names)}")
    return [k] * num_tasks
