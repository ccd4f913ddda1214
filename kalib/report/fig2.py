"""The paper's Fig. 2, drawn from a run: the entangled training of one student block (Alg. 1 lines 5–9).

The image goes through the student's frozen blocks 1..k-1 and its block k, the one that learns; for every
teacher n with tasks in C, the filter f_n^k (Eq. 4) turns F_u^k into F_un^k, which replaces teacher n's own
block-k features and runs through its frozen blocks k+1..B and head, and g keeps the tasks of C_n (Eq. 6). The
same image through teacher n alone gives its own predictions O_n, the soft targets; Eq. 7 compares the two.
Every box is labelled with the shape of the tensor it produces, measured by one forward pass of the networks
given (so the drawing is of the run's own networks, not of a sketch), and coloured by what trains.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.patches import FancyBboxPatch

LEARNS, FROZEN_STUDENT, TEACHER, FILTER, LOSS = "#ff7f0e", "0.6", "#9ecae1", "#2ca02c", "#d62728"


def _shape(x: torch.Tensor) -> str:
    return "×".join(str(d) for d in x.shape[1:])


@torch.no_grad()
def entangled_shapes(student, teachers, filters_k, plan, k: int, image: torch.Tensor) -> dict:
    """The shapes of one network input ``image`` (a batch of one) along the entangled paths of block ``k``:
    F_u^{k-1}, F_u^k, and per teacher n with tasks in C: F_un^k, the output of its last block, its head's
    outputs (its tasks A_n) and g's (its tasks of C)."""
    student.eval()
    prefix = student.prefix(image, k - 1) if k > 1 else image
    features = student.blocks[k - 1](prefix)
    out = {"input": _shape(image), "prefix": _shape(prefix), "block": _shape(features), "teachers": []}
    for n in plan.active_teachers:
        h = filters_k[n](features)
        entangled = h
        for block in teachers[n].blocks[k:]:
            h = block(h)
        out["teachers"].append({"n": n + 1, "filtered": _shape(entangled), "last": _shape(h),
                                "head": teachers[n].head(h).shape[1], "selected": len(plan.per_teacher[n])})
    return out


def _box(ax, x0, x1, y, text, colour, ls="-"):
    ax.add_patch(FancyBboxPatch((x0, y - 0.3), x1 - x0, 0.6, boxstyle="round,pad=0.02", facecolor=colour,
                                edgecolor="0.2", lw=0.8, ls=ls))
    ax.text((x0 + x1) / 2, y, text, ha="center", va="center", fontsize=7.5)


def _arrow(ax, start, end, colour="0.2", ls="-"):
    ax.annotate("", xy=end, xytext=start, arrowprops={"arrowstyle": "-|>", "color": colour, "lw": 1, "ls": ls,
                                                      "shrinkA": 0, "shrinkB": 0})


def _remaining(blocks: Sequence[str], k: int, n: int) -> str:
    after = blocks[k:]
    if not after:
        return f"teacher {n}: none after {blocks[-1]}"
    return f"teacher {n}'s {after[0]}…{after[-1]}" if len(after) > 1 else f"teacher {n}'s {after[0]}"


def entangled_training(shapes: dict, blocks: Sequence[str], k: int, size_c: int, path=None):
    """The drawing of :func:`entangled_shapes`' ``shapes`` for block ``k`` of a network with ``blocks`` (names),
    for a task set C of ``size_c`` tasks. The figure's label is its alternative text."""
    teachers = shapes["teachers"]
    fig, ax = plt.subplots(figsize=(12, 1.2 + 1.5 * len(teachers)))
    top, name = 0.0, blocks[k - 1]
    _box(ax, 0, 1.3, top, f"image\n{shapes['input']}", "white")
    start = 1.3
    if k > 1:
        frozen = f"{blocks[0]}…{blocks[k - 2]}" if k > 2 else blocks[0]
        _arrow(ax, (1.3, top), (1.6, top))
        _box(ax, 1.6, 3.9, top, f"student {frozen} (frozen)\n$F_u^{{{k - 1}}}$: {shapes['prefix']}", FROZEN_STUDENT)
        start = 3.9
    _arrow(ax, (start, top), (4.2, top))
    _box(ax, 4.2, 6.2, top, f"student {name} (learns)\n$F_u^{{{k}}}$: {shapes['block']}", LEARNS)
    rows = [top - 1.3 - 2.0 * i for i in range(len(teachers))]
    ax.plot([6.2, 6.5, 6.5], [top, top, rows[-1]], color=FILTER, lw=1)
    loss_y = (rows[0] + rows[-1] - 0.85) / 2
    for t, y in zip(teachers, rows):
        n, own = t["n"], y - 0.85
        _arrow(ax, (6.5, y), (6.8, y), colour=FILTER)
        _box(ax, 6.8, 8.3, y, f"$f_{{{n}}}^{{{k}}}$ (learns)\n$F_{{u{n}}}^{{{k}}}$: {t['filtered']}", FILTER)
        _arrow(ax, (8.3, y), (8.6, y))
        _box(ax, 8.6, 11.2, y, f"{_remaining(blocks, k, n)} (frozen)\n{t['last']}", TEACHER)
        _arrow(ax, (11.2, y), (11.5, y))
        _box(ax, 11.5, 13.6, y, f"head: {t['head']} ($A_{{{n}}}$), g: {t['selected']} ($C_{{{n}}}$)\n$O_{{u{n}}}$",
             TEACHER)
        _box(ax, 8.6, 13.6, own, f"teacher {n} alone on the image (frozen) → g: $O_{{{n}}}$, the soft targets",
             "white", ls="--")
        _arrow(ax, (13.6, y), (14.3, loss_y), colour=LOSS)
        _arrow(ax, (13.6, own), (14.3, loss_y), colour=LOSS, ls="--")
    _box(ax, 14.3, 16.0, loss_y, f"Eq. 7: $\\ell(O_n, O_{{un}})$\nover $|C|$ = {size_c} tasks", "#fcbba1")
    ax.set_xlim(-0.1, 16.1)
    ax.set_ylim(rows[-1] - 1.3, top + 0.5)
    ax.axis("off")
    ax.set_title(f"Entangled training of student block {name} (k = {k} of {len(blocks)}), the paper's Fig. 2: only "
                 "the orange block and the green filters learn; shapes are this run's (channels × height × width)",
                 fontsize=9, loc="left")
    fig.set_label(alt_text(shapes, blocks, k, size_c))
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return fig


def alt_text(shapes: dict, blocks: Sequence[str], k: int, size_c: int) -> str:
    """What the drawing shows, in words (the image's alternative text)."""
    paths = "; ".join(f"filter f_{t['n']}^{k} ({t['filtered']}) into teacher {t['n']}'s frozen blocks after "
                      f"{blocks[k - 1]} ({t['last']}), its head ({t['head']} outputs) and g ({t['selected']} tasks of C)"
                      for t in shapes["teachers"])
    return (f"Diagram of the entangled training of student block {blocks[k - 1]} (block {k} of {len(blocks)}): the "
            f"image ({shapes['input']}) passes the frozen student blocks before it ({shapes['prefix']}) and block "
            f"{blocks[k - 1]}, which learns ({shapes['block']}); then, per teacher, {paths}. Each teacher alone gives "
            f"its own outputs on the image, and Eq. 7 compares both over the {size_c} tasks of C.")
