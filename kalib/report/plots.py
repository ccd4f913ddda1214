"""Figures of the walk-through: benchmark canvases, teacher AP, filter weights, block-training losses,
converged losses, Fig. 3, the assembled TargetNet and teacher alignment. Every function returns the
matplotlib ``Figure`` and saves it when given a path. Symbols are mathtext ($f_n^k$, $L_i^k$), sizes are
chosen for a page about 8 inches wide (a README), and layouts are constrained so no label is clipped."""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

TEACHER_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "figure.constrained_layout.use": True}


def _styled(plot):
    """Build the figure under :data:`STYLE`."""
    @functools.wraps(plot)
    def styled(*args, **kwargs):
        with plt.rc_context(STYLE):
            fig = plot(*args, **kwargs)
            interactive = plt.isinteractive()
        # Jupyter's inline backend switches interactive mode on when it draws its first figure, inside the
        # context; restoring the value from before would keep every later figure of a notebook from showing
        plt.interactive(interactive)
        return fig
    return styled


def _save(fig, path):
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=150, bbox_inches="tight")
    return fig


def _colour(teacher: int) -> str:
    return TEACHER_COLOURS[(teacher - 1) % len(TEACHER_COLOURS)]


def _block_ticks(ax, blocks, positions=None):
    positions = range(len(blocks)) if positions is None else positions
    ax.set_xticks(list(positions), blocks, rotation=0 if len(blocks) <= 10 else 60)


@_styled
def canvas_grid(images, labels, label_names, n: int = 12, cols: int = 6, path=None):
    """A grid of benchmark canvases (pixels shown as they are), each titled with its label names."""
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.6 * rows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < n:
            ax.imshow(np.asarray(images[i]).transpose(1, 2, 0), interpolation="nearest")
            names = [label_names[j] for j in np.flatnonzero(np.asarray(labels[i]) > 0)]
            ax.set_title("\n".join([", ".join(names[:2]), ", ".join(names[2:])]).strip(), fontsize=7)
    return _save(fig, path)


@_styled
def ap_bars(ap: dict[str, float], title: str, path=None):
    """Per-label AP (%) as horizontal bars, with the mAP as a dashed line."""
    labels = [k for k in ap if k != "mAP"]
    fig, ax = plt.subplots(figsize=(5, 0.25 * len(labels) + 1.1))
    ax.barh(labels, [ap[k] for k in labels], color=TEACHER_COLOURS[0])
    ax.axvline(ap["mAP"], color="k", ls="--", lw=1, label=f"mAP {ap['mAP']:.1f}")
    ax.set_xlim(0, 100)
    ax.set_xlabel("AP on the test split (%)")
    ax.invert_yaxis()
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _save(fig, path)


@_styled
def filter_weights(weights: np.ndarray, teacher_names, title: str, path=None):
    """Mean channel weights $w$ of the filters $f_n^k$ (Eq. 4), one row per teacher: 1 = channel passed
    unchanged, > 1 amplified, < 1 suppressed."""
    weights = np.asarray(weights)
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(teacher_names) + 1.5))
    step = max(1, int(np.ceil(weights.shape[1] / 16)))
    sns.heatmap(weights, ax=ax, cmap="RdBu_r", center=1.0, xticklabels=step, yticklabels=teacher_names,
                cbar_kws={"pad": 0.02})
    ax.tick_params(axis="y", rotation=0)
    ax.tick_params(axis="x", rotation=0)
    ax.collections[0].colorbar.set_label("$w$", rotation=0, labelpad=8)
    ax.set_xlabel("student channel ($w$ averaged over images; 1 = passed unchanged)")
    ax.set_title(title)
    return _save(fig, path)


@_styled
def loss_heatmap(converged_loss: dict[str, dict[str, float]], chosen: dict[str, str], path=None):
    """The converged loss $L_i^k$ (task x block, Eq. 9's input; numbers) coloured by its excess over the
    task's minimum, with each row's argmin (Eq. 9's $S_i$) boxed."""
    frame = pd.DataFrame(converged_loss).T
    rows, cols = frame.shape
    fig, ax = plt.subplots(figsize=(0.6 * cols + 2.4, 0.28 * rows + 1.3))
    excess = frame.sub(frame.min(axis=1), axis=0)   # colour: how far above the task's best block
    annotate = rows <= 24 and cols <= 12
    sns.heatmap(excess, ax=ax, cmap="viridis", annot=frame if annotate else False, fmt=".3f",
                annot_kws={"fontsize": 7}, cbar_kws={"label": r"$L_i^k - \min_{k'}\,L_i^{k'}$", "pad": 0.02})
    for i, task in enumerate(frame.index):
        j = list(frame.columns).index(chosen[task])
        ax.add_patch(plt.Rectangle((j, i), 1, 1, fill=False, edgecolor="white", lw=2))
    ax.tick_params(axis="x", rotation=0 if cols <= 10 else 60)
    ax.tick_params(axis="y", rotation=0)
    ax.set_xlabel("student block $k$")
    ax.set_ylabel("task $i$")
    ax.set_title("Converged loss $L_i^k$ (white box: Eq. 9's branch-out block $S_i$)")
    return _save(fig, path)


@_styled
def block_losses(block_train_loss: dict[str, list[float]], path=None):
    """Mean training loss (Eq. 7) of every epoch, the blocks trained one after the other: one curve over
    all epochs (a block trained for one epoch is one point of it), each block's epochs in its colour on
    its own band."""
    names = list(block_train_loss)
    losses = [float(v) for name in names for v in block_train_loss[name]]
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    ax.plot(np.arange(1, len(losses) + 1), losses, color="0.55", lw=1, zorder=1)
    start, centres = 1, []
    palette = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(names)))
    for i, name in enumerate(names):
        xs = np.arange(start, start + len(block_train_loss[name]))
        if i % 2 == 0:
            ax.axvspan(xs[0] - 0.5, xs[-1] + 0.5, color="0.93", zorder=0)
        ax.plot(xs, block_train_loss[name], marker="o", ms=4, color=palette[i], zorder=2)
        centres.append(xs.mean())
        start += len(xs)
    ax.set_xlim(0.5, len(losses) + 0.5)
    top = ax.secondary_xaxis("top")
    spacing = 6.8 * min(np.diff(centres), default=len(losses)) / len(losses)     # inches between names
    top.set_xticks(centres, names, rotation=0 if spacing > 0.5 else 90)
    top.tick_params(length=0)
    ax.set_xlabel("epoch of entangled block-wise training (the blocks, named on top, one after the other)")
    ax.set_ylabel("training loss (Eq. 7)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


@_styled
def fig3(data: dict[str, dict], blocks, path=None, titles=None):
    """Fig. 3: per pair of tasks (one per teacher; ``data`` as :func:`kalib.report.results.fig3_data`), AP (%)
    when branching out after each block, the teachers' AP as dashed lines, Eq. 9's choice as a star and
    the AP-best block as a ring; the legend, below each panel, has one column per task."""
    pairs = list(data)
    fig, axes = plt.subplots(len(pairs), 1, figsize=(7.5, 3.9 * len(pairs)), squeeze=False)
    x = np.arange(len(blocks))
    for ax, pair in zip(axes[:, 0], pairs):
        for task, d in data[pair]["tasks"].items():
            colour, n = _colour(d["teacher"]), d["teacher"]
            ap = [d["ap_by_block"][b] for b in blocks]
            ax.plot(x, ap, marker="o", ms=4, color=colour, label=f"'{task}' (teacher {n}), branched after $k$")
            ax.axhline(d["teacher_ap"], color=colour, ls="--", lw=1, label=f"teacher {n} alone on '{task}'")
            c = blocks.index(d["chosen_block"])
            ax.plot(x[c], ap[c], marker="*", ms=14, color=colour, mec="k", ls="none",
                    label=f"Eq. 9 choice $S_i$: {d['chosen_block']}")
            b = blocks.index(d["best_ap_block"])
            ax.plot(x[b], ap[b], marker="o", ms=12, mfc="none", mec=colour, mew=1.5, ls="none",
                    label=f"best AP: {d['best_ap_block']}")
        _block_ticks(ax, blocks)
        ax.set_xlabel("branch-out block $k$ (student blocks 1..$k$, then $f_n^k$ and teacher $n$'s "
                      "blocks after $k$)")
        ax.set_ylabel("AP on the test split (%)")
        ax.set_title((titles or {}).get(pair, f"{pair} pair"))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2 if len(blocks) <= 10 else -0.3),
                  ncol=len(data[pair]["tasks"]), frameon=False)
    return _save(fig, path)


@_styled
def targetnet_drawing(record: dict, path=None):
    """The assembled TargetNet (Eq. 10): the shared student trunk up to the last branch-out block, one
    copy of each teacher's blocks after its earliest branch-out block (a band; teachers alternate above
    and below the trunk), and every branch: the filter $f_n^k$ (a square) leaving the trunk after block
    $k$ and merging into teacher $n$'s copy at block $k+1$. The tasks of each branch, whose head rows end
    the band, are listed on the right."""
    blocks = record["blocks"]
    groups: dict[int, dict[int, list[str]]] = {}                # teacher -> branch block index -> tasks
    for task, block in record["branch_block"].items():
        teacher = record["task_teacher"][record["tasks"].index(task)]
        groups.setdefault(teacher, {}).setdefault(blocks.index(block), []).append(task)
    labels = {t: [f"teacher {t}"] + [line for k, tasks in sorted(branches.items())
                                     for line in textwrap.wrap(f"after {blocks[k]}: " + ", ".join(tasks), 48,
                                                               subsequent_indent="    ")]
              for t, branches in groups.items()}
    end = len(blocks) - 0.5                                     # the output of the last block
    trunk_end = max(k for branches in groups.values() for k in branches) + 0.5
    ys, reach = {}, {1: 0.0, -1: 0.0}                           # teacher -> y; side -> farthest y used
    for rank, teacher in enumerate(sorted(groups)):
        side = 1 if rank % 2 == 0 else -1
        half = 0.14 * len(labels[teacher])
        ys[teacher] = side * (reach[side] + 0.45 + half)
        reach[side] = abs(ys[teacher]) + half
    width = max(len(line) for lines in labels.values() for line in lines) * 0.057 + 0.3
    fig, (ax, side_ax) = plt.subplots(
        1, 2, sharey=True, figsize=(0.55 * len(blocks) + 1.2 + width, 1.3 + 0.55 * (reach[1] + reach[-1])),
        gridspec_kw={"width_ratios": [0.55 * len(blocks) + 1.0, width], "wspace": 0})
    ax.plot([-0.5, trunk_end], [0, 0], color="0.3", lw=7, solid_capstyle="butt", zorder=2)
    ax.text(-0.6, 0, "input", ha="right", va="center")
    for rank, teacher in enumerate(sorted(groups)):
        branches, colour, y = groups[teacher], _colour(teacher), ys[teacher]
        shift = 0.12 * (rank // 2)                              # outer teachers' links pass beside inner ones
        ax.plot([min(branches) + 0.5 + shift, end], [y, y], color=colour, lw=4, alpha=0.6,
                solid_capstyle="butt", zorder=2)
        for k in branches:
            ax.plot([k + 0.5 + shift] * 2, [0, y], color=colour, lw=1.5, zorder=1)
            ax.plot(k + 0.5 + shift, y, marker="s", ms=8, color=colour, mec="k", zorder=3)
        side_ax.text(0.05, y, "\n".join(labels[teacher]), va="center", fontsize=8, color=colour)
    _block_ticks(ax, blocks)
    ax.set_xlim(-1.4, end + 0.2)
    ax.set_ylim(-reach[-1] - 0.3, reach[1] + 0.3)
    ax.set_yticks([])
    for spine in ("left", "right", "top"):
        ax.spines[spine].set_visible(False)
    side_ax.axis("off")
    side_ax.set_xlim(0, 1)
    ax.set_xlabel(f"block (grey: the shared student trunk, {blocks[0]}..{blocks[int(trunk_end)]}; "
                  "band: one copy of teacher $n$'s later blocks)", loc="left")
    ax.set_title(r"TargetNet (Eq. 10): square = filter $f_n^k$, joining teacher $n$'s copy at block $k+1$",
                 loc="left")
    return _save(fig, path)


@_styled
def alignment(table: dict[str, dict[str, float]], path=None):
    """Teacher alignment per block (:func:`kalib.report.alignment.teacher_alignment`): the mean channel
    correlation between two teachers, and between each teacher and the shared start."""
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for name, values in table.items():
        ax.plot(range(len(values)), list(values.values()), marker="o", ms=4,
                ls="--" if "start" in name else "-", label=name)
    _block_ticks(ax, list(next(iter(table.values()))))
    ax.set_ylim(min(0.0, min(min(v.values()) for v in table.values())), 1.02)
    ax.set_xlabel("block $k$")
    ax.set_ylabel("mean channel correlation")
    ax.set_title("The teachers' block features drift apart with depth (1 = aligned channel by channel)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left")
    return _save(fig, path)
