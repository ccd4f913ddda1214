"""Figures of the walk-through: benchmark canvases, filter weights, converged losses, Fig. 3 and a
drawing of the assembled TargetNet. Every function returns the matplotlib ``Figure`` and saves it
when given a path."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

TEACHER_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")


def _save(fig, path):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return fig


def canvas_grid(images, labels, label_names, n: int = 12, cols: int = 6, path=None):
    """A grid of benchmark canvases, each titled with its label names."""
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.0 * cols, 2.3 * rows))
    for i, ax in enumerate(np.ravel(axes)):
        ax.axis("off")
        if i < n:
            ax.imshow(np.asarray(images[i]).transpose(1, 2, 0))
            names = [label_names[j] for j in np.flatnonzero(np.asarray(labels[i]) > 0)]
            ax.set_title("\n".join([", ".join(names[:2]), ", ".join(names[2:])]).strip(), fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def ap_bars(ap: dict[str, float], title: str, path=None):
    """Per-label AP (%) as horizontal bars, with the mAP as a dashed line."""
    labels = [k for k in ap if k != "mAP"]
    fig, ax = plt.subplots(figsize=(5, 0.3 * len(labels) + 1))
    ax.barh(labels, [ap[k] for k in labels], color="#1f77b4")
    ax.axvline(ap["mAP"], color="k", ls="--", lw=1, label=f"mAP {ap['mAP']:.1f}")
    ax.set_xlim(0, 100)
    ax.set_xlabel("AP on the test split (%)")
    ax.invert_yaxis()
    ax.set_title(title)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def filter_weights(weights: np.ndarray, teacher_names, title: str, path=None):
    """Mean channel weights w of the filters f_n^k (Eq. 4), one row per teacher: 1 = channel passed
    unchanged, > 1 amplified, < 1 suppressed."""
    fig, ax = plt.subplots(figsize=(8, 0.6 * len(teacher_names) + 1.2))
    sns.heatmap(weights, ax=ax, cmap="RdBu_r", center=1.0, yticklabels=teacher_names,
                cbar_kws={"label": "channel weight w (mean over images)"})
    ax.set_xlabel("student channel")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


def loss_heatmap(converged_loss: dict[str, dict[str, float]], chosen: dict[str, str], path=None):
    """The converged loss L_i^k (task x block, Eq. 9's input; numbers) coloured by its excess over the
    task's minimum, with each row's argmin boxed."""
    frame = pd.DataFrame(converged_loss).T
    fig, ax = plt.subplots(figsize=(0.7 * frame.shape[1] + 2.5, 0.3 * frame.shape[0] + 1.2))
    excess = frame.sub(frame.min(axis=1), axis=0)   # colour: how far above the task's best block
    sns.heatmap(excess, ax=ax, cmap="viridis", annot=frame if frame.shape[0] <= 24 else False, fmt=".3f",
                annot_kws={"fontsize": 6}, cbar_kws={"label": "L_i^k minus the task's minimum"})
    for i, task in enumerate(frame.index):
        j = list(frame.columns).index(chosen[task])
        ax.add_patch(plt.Rectangle((j, i), 1, 1, fill=False, edgecolor="white", lw=2))
    ax.set_xlabel("student block k")
    ax.set_ylabel("task i")
    ax.set_title("Converged loss per task and block (box: Eq. 9 branch-out block)")
    fig.tight_layout()
    return _save(fig, path)


def block_losses(block_train_loss: dict[str, list[float]], path=None):
    """Mean training loss (Eq. 7) of every epoch of every block's training."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    x = 0
    for name, losses in block_train_loss.items():
        xs = np.arange(x, x + len(losses)) + 1
        ax.plot(xs, losses, marker="o", label=name)
        x += len(losses)
    ax.set_xlabel("epoch (blocks trained one after the other)")
    ax.set_ylabel("training loss (Eq. 7)")
    ax.set_title("Entangled block-wise training")
    ax.legend(ncol=4, fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def fig3(data: dict[str, dict], blocks, path=None, titles=None):
    """Fig. 3: per pair of tasks (one per teacher; ``data`` as :func:`kalib.results.fig3_data`), AP (%)
    when branching out after each block, the teachers' AP as dashed lines, Eq. 9's choice as a star and
    the AP-best block as a ring."""
    pairs = list(data)
    fig, axes = plt.subplots(len(pairs), 1, figsize=(10, 3.4 * len(pairs)), squeeze=False)
    x = np.arange(len(blocks))
    for ax, pair in zip(axes[:, 0], pairs):
        for task, d in data[pair]["tasks"].items():
            colour = TEACHER_COLOURS[(d["teacher"] - 1) % len(TEACHER_COLOURS)]
            ap = [d["ap_by_block"][b] for b in blocks]
            ax.plot(x, ap, marker="o", color=colour, label=f"'{task}' (teacher {d['teacher']})")
            ax.axhline(d["teacher_ap"], color=colour, ls="--", lw=1, label=f"teacher {d['teacher']} on '{task}'")
            c = blocks.index(d["chosen_block"])
            ax.plot(x[c], ap[c], marker="*", ms=16, color=colour, mec="k", ls="none",
                    label=f"Eq. 9 choice for '{task}': {d['chosen_block']}")
            b = blocks.index(d["best_ap_block"])
            ax.plot(x[b], ap[b], marker="o", ms=14, mfc="none", mec=colour, ls="none")
        ax.set_xticks(x, blocks, rotation=45)
        ax.set_xlabel("branch-out block k (student blocks 1..k, filter, teacher's blocks k+1..B)")
        ax.set_ylabel("AP on the test split (%)")
        ax.set_title((titles or {}).get(pair, f"{pair} pair"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save(fig, path)


def targetnet_drawing(record: dict, path=None):
    """The assembled TargetNet (Eq. 10): the shared student trunk up to the last branch-out block and
    one branch per (teacher, block) = filter + the teacher's remaining blocks (one copy per teacher, which
    the teacher's branches share), labelled with its tasks."""
    blocks = record["blocks"]
    points = record["branch_block"]
    groups: dict[tuple[int, str], list[str]] = {}
    for task, block in points.items():
        teacher = record["task_teacher"][record["tasks"].index(task)]
        groups.setdefault((teacher, block), []).append(task)
    trunk_end = max(blocks.index(b) for b in points.values())
    n = len(groups)
    fig, ax = plt.subplots(figsize=(10, 1.0 + 0.7 * max(n, 2)))
    ax.plot([-0.8, trunk_end], [0, 0], color="0.3", lw=8, solid_capstyle="butt")
    ax.text(-0.9, 0, "input", ha="right", va="center", fontsize=9)
    ax.set_xlabel(f"block (thick grey line: the shared student trunk, {blocks[0]}..{blocks[trunk_end]})")
    order = sorted(groups, key=lambda g: (blocks.index(g[1]), g[0]))
    ys = (np.arange(n) - (n - 1) / 2) * 0.8 + (0.4 if n % 2 else 0.0)   # never on the trunk's line
    for y, key in zip(ys, order):
        teacher, block = key
        k = blocks.index(block)
        colour = TEACHER_COLOURS[(teacher - 1) % len(TEACHER_COLOURS)]
        ax.plot([k, k + 0.4], [0, y], color=colour, lw=2)
        ax.plot(k + 0.4, y, marker="s", ms=9, color=colour, mec="k")
        ax.plot([k + 0.4, len(blocks) - 0.6], [y, y], color=colour, lw=3)
        ax.text(len(blocks) - 0.5, y, f"teacher {teacher} from {block}: " + ", ".join(groups[key]),
                va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(blocks)), blocks)
    ax.set_yticks([])
    ax.set_xlim(-1.8, len(blocks) + 6)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title("TargetNet (Eq. 10): square = filter f_n^k, then teacher n's blocks after k (one copy per "
                 "teacher) and its task heads", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def alignment(table: dict[str, dict[str, float]], path=None):
    """Teacher alignment per block (:func:`kalib.alignment.teacher_alignment`): the mean channel
    correlation between two teachers, and between each teacher and the shared start."""
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for name, values in table.items():
        blocks = list(values)
        ax.plot(range(len(blocks)), list(values.values()), marker="o", ls="-" if "start" not in name else "--",
                label=name)
    ax.set_xticks(range(len(blocks)), blocks)
    ax.set_ylim(min(0.0, min(min(v.values()) for v in table.values())), 1.02)
    ax.set_xlabel("block k")
    ax.set_ylabel("mean channel correlation")
    ax.set_title("How far the teachers' block features drift apart (1 = aligned channel by channel)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
