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
from matplotlib.ticker import MultipleLocator

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


def filter_weight_limits(*weights) -> tuple[float, float]:
    """One colour scale for several :func:`filter_weights` figures (e.g. an early and the last block):
    symmetric about 1 (passed unchanged) and just wide enough for every array given, so that a colour means
    the same weight in each figure. Pass the result as ``limits`` to every call."""
    spread = max(float(np.max(np.abs(np.asarray(w, dtype=float) - 1.0))) for w in weights)
    spread = max(spread, 0.01)                              # all ones: still a scale, not vmin == vmax
    return 1.0 - spread, 1.0 + spread


@_styled
def filter_weights(weights: np.ndarray, teacher_names, title: str, path=None,
                   limits: tuple[float, float] | None = None):
    """Mean channel weights $w$ of the filters $f_n^k$ (Eq. 4), one row per teacher: 1 = channel passed
    unchanged, > 1 amplified, < 1 suppressed. Every teacher's row uses one colour scale and one colour bar;
    ``limits`` (vmin, vmax; from :func:`filter_weight_limits` over all the arrays to compare) gives several
    figures the same scale, otherwise the scale is :func:`filter_weight_limits` of these weights alone.
    Weights outside ``limits`` are refused rather than clipped to the end colours."""
    weights = np.asarray(weights)
    vmin, vmax = filter_weight_limits(weights) if limits is None else (float(limits[0]), float(limits[1]))
    if not vmin < vmax:
        raise ValueError(f"limits must be (vmin, vmax) with vmin < vmax, got {limits}")
    if weights.min() < vmin - 1e-9 or weights.max() > vmax + 1e-9:
        raise ValueError(f"weights from {weights.min():.4g} to {weights.max():.4g} lie outside the colour scale "
                         f"({vmin:.4g}, {vmax:.4g}); compute limits from every array drawn")
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(teacher_names) + 1.5))
    step = max(1, int(np.ceil(weights.shape[1] / 16)))
    sns.heatmap(weights, ax=ax, cmap="RdBu_r", center=1.0, vmin=vmin, vmax=vmax, xticklabels=step,
                yticklabels=teacher_names, cbar_kws={"pad": 0.02})
    ax.tick_params(axis="y", rotation=0)
    ax.tick_params(axis="x", rotation=0)
    ax.collections[0].colorbar.set_label("$w$", rotation=0, labelpad=8)
    ax.set_xlabel("student channel ($w$ averaged over images; 1 = passed unchanged)")
    ax.set_title(title)
    return _save(fig, path)


LOSS_COLOUR_SPAN = 0.02     # nats: the smallest colour range of loss_heatmap (the quick preset's tolerance)


@_styled
def loss_heatmap(converged_loss: dict[str, dict[str, float]], chosen: dict[str, str], path=None,
                 min_colour_span: float = LOSS_COLOUR_SPAN):
    """The converged loss $L_i^k$ (task x block, Eq. 9's input; numbers) coloured by its excess over the
    task's minimum, with each row's argmin (Eq. 9's $S_i$) boxed. The colour scale starts at 0 and spans
    at least ``min_colour_span`` nats (stated on the colour bar), so that excesses of a few thousandths of
    a nat do not take the far end of the colour map."""
    frame = pd.DataFrame(converged_loss).T
    rows, cols = frame.shape
    fig, ax = plt.subplots(figsize=(0.6 * cols + 2.4, 0.28 * rows + 1.3))
    excess = frame.sub(frame.min(axis=1), axis=0)   # colour: how far above the task's best block
    vmax = max(float(excess.to_numpy().max()), min_colour_span)
    annotate = rows <= 24 and cols <= 12
    sns.heatmap(excess, ax=ax, cmap="viridis", vmin=0.0, vmax=vmax, annot=frame if annotate else False, fmt=".3f",
                annot_kws={"fontsize": 7},
                cbar_kws={"label": r"$L_i^k - \min_{k'}\,L_i^{k'}$ (nats; scale 0 to at least "
                                   f"{min_colour_span:g})", "pad": 0.02})
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
def block_losses(block_train_loss: dict[str, list[float]], path=None, from_zero: bool = True):
    """Mean training loss (Eq. 7) of every epoch, the blocks trained one after the other: one curve over
    all epochs (a block trained for one epoch is one point of it), each block's epochs in its colour on
    its own band. The y-axis starts at 0 nats; ``from_zero=False`` zooms onto the curve, and the axis
    label then says where the axis starts and how many nats it spans."""
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
    if from_zero:
        ax.set_ylim(0.0, 1.08 * max(max(losses), 1e-9))
        ax.set_ylabel("training loss (Eq. 7, nats)")
    else:
        ax.margins(y=0.1)
        low, high = ax.get_ylim()
        ax.set_ylabel(f"training loss (Eq. 7, nats)\ny-axis does not start at 0:\n{low:.3f} to {high:.3f}")
    top = ax.secondary_xaxis("top")
    spacing = 6.8 * min(np.diff(centres), default=len(losses)) / len(losses)     # inches between names
    top.set_xticks(centres, names, rotation=0 if spacing > 0.5 else 90)
    top.tick_params(length=0)
    ax.set_xlabel("epoch of entangled block-wise training (the blocks, named on top, one after the other)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


FIG3_MIN_SPAN = 20.0    # AP points: the least height of Fig. 3's AP axis


def _ap_range(values, span: float) -> tuple[float, float]:
    """An AP axis ``span`` points tall inside 0..100, centred on ``values`` (``span`` must cover them with
    a point to spare) and starting on a multiple of 5, or of 1, where that still holds them."""
    centre = (min(values) + max(values)) / 2
    low = min(max(centre - span / 2, 0.0), 100.0 - span)
    for step in (5, 1):
        rounded = np.floor(low / step) * step
        if rounded + span >= min(max(values) + 1, 100):
            low = rounded
            break
    return float(low), float(low + span)


@_styled
def fig3(data: dict[str, dict], blocks, path=None, titles=None, min_span: float = FIG3_MIN_SPAN):
    """Fig. 3: per pair of tasks (one per teacher; ``data`` as :func:`kalib.report.results.fig3_data`), AP (%)
    when branching out after each block, the teachers' AP as dashed lines, Eq. 9's choice as a star and
    the AP-best block as a ring; the legend, below each panel, has one column per task.

    The AP axis has one height in every panel: ``min_span`` AP points, or more where a panel's curves and
    teacher lines need it (plus a point of margin either side; a multiple of 5), placed inside 0..100 so that
    it holds every curve and every teacher line. Where it does not start at 0 its label says so."""
    pairs = list(data)
    values = {pair: [v for d in data[pair]["tasks"].values() for v in [d["teacher_ap"]] +
                     [d["ap_by_block"][b] for b in blocks]] for pair in pairs}
    span = min(100.0, 5 * np.ceil(max([min_span] + [max(v) - min(v) + 2 for v in values.values()]) / 5))
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
        low, high = _ap_range(values[pair], span)
        ax.set_ylim(low, high)
        ax.yaxis.set_major_locator(MultipleLocator(5 if span <= 40 else 10))
        _block_ticks(ax, blocks)
        ax.set_xlabel("branch-out block $k$ (student blocks 1..$k$, then $f_n^k$ and teacher $n$'s "
                      "blocks after $k$)")
        ax.set_ylabel("AP on the test split (%)" + ("" if low == 0 else
                      f"\naxis from {low:g}, not 0; {span:g} points tall"))
        ax.set_title((titles or {}).get(pair, f"{pair} pair"))
        ax.grid(alpha=0.3)
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2 if len(blocks) <= 10 else -0.3),
                  ncol=len(data[pair]["tasks"]), frameon=False)
    return _save(fig, path)


def _branch_groups(record: dict) -> dict[int, dict[int, list[str]]]:
    """teacher n -> 0-based index of a branch-out block -> the tasks of C leaving the trunk there, from a run
    record's ``tasks``, ``task_teacher`` and ``branch_block``; checked against ``params["branches"]``."""
    blocks = list(record["blocks"])
    groups: dict[int, dict[int, list[str]]] = {}
    for task, teacher in zip(record["tasks"], record["task_teacher"]):
        block = record["branch_block"][task]
        if block not in blocks:
            raise ValueError(f"task {task!r} branches out at {block!r}, which is not a block of {blocks}")
        groups.setdefault(int(teacher), {}).setdefault(blocks.index(block), []).append(task)
    recorded = record.get("params", {}).get("branches")
    drawn = sorted(f"teacher{n}@{blocks[k]}" for n, branches in groups.items() for k in branches)
    if recorded is not None and sorted(recorded) != drawn:
        raise ValueError(f"the record's branches {sorted(recorded)} disagree with its branch blocks {drawn}")
    return groups


TARGETNET_TALLEST = 0.8     # data units: the height of the largest block when block sizes are drawn to scale


def _named(blocks, lo: int, hi: int) -> str:
    return blocks[lo] if lo == hi else f"{blocks[lo]}..{blocks[hi]}"


def _targetnet_sizes(record: dict, blocks, block_params, last: int, first: dict) -> tuple:
    """Parameter counts per block (or None), the trunk's and each copy's size, and the boxes' heights."""
    if block_params is None:
        return None, {}, np.full(len(blocks), 0.3)
    missing = [b for b in blocks if b not in block_params]
    if missing or any(block_params[b] < 0 for b in blocks) or max(block_params[b] for b in blocks) <= 0:
        raise ValueError(f"block_params needs a non-negative count for every block {blocks} (missing: {missing})")
    counts = np.array([int(block_params[b]) for b in blocks])
    sizes = {"trunk": int(counts[:last + 1].sum()), **{n: int(counts[k + 1:].sum()) for n, k in first.items()}}
    total = record.get("params", {}).get("targetnet")
    if total is not None and sum(sizes.values()) > total:
        raise ValueError(f"trunk and teacher copies of {sum(sizes.values()):,} parameters exceed the record's "
                         f"TargetNet of {total:,}: block_params are not this run's blocks")
    return counts, sizes, TARGETNET_TALLEST * counts / counts.max()


def _targetnet_labels(blocks, groups: dict, first: dict, last: int, sizes: dict) -> tuple[list, dict]:
    """The side texts: the trunk's lines, and per teacher its copy and its branches' tasks."""
    num = len(blocks)
    trunk_lines = [f"student trunk {_named(blocks, 0, last)}"] + ([f"{sizes['trunk']:,} parameters"] if sizes else [])
    labels = {}
    for n, branches in groups.items():
        copied = (f"copy of {_named(blocks, first[n] + 1, num - 1)}" + (f": {sizes[n]:,} parameters" if sizes else "")
                  if first[n] < num - 1 else "no blocks copied (branches after the last block)")
        labels[n] = [f"teacher {n}", copied] + [
            line for k, tasks in sorted(branches.items())
            for line in textwrap.wrap(f"after {blocks[k]}: " + ", ".join(tasks), 48, subsequent_indent="    ")]
    return trunk_lines, labels


@_styled
def targetnet_drawing(record: dict, path=None, block_params: dict[str, int] | None = None):
    """The assembled TargetNet (Eq. 10) of a run record (run.json): the shared student trunk from the first
    block to the deepest branch-out block, one copy of each teacher's blocks after its earliest branch-out
    block (teachers alternate above and below the trunk), and every branch: the filter $f_n^k$ (a square)
    leaving the trunk after its recorded block $k$ and entering teacher $n$'s copy at block $k+1$ (or, after
    the last block, going straight to the head rows). The tasks of each branch, whose head rows end the
    copy, are listed on the right.

    Every block is a box in its block's column. ``block_params`` ({block name: parameter count}, the
    student's blocks, e.g. ``count_parameters`` of each of ``student.blocks``) draws the boxes' heights in
    proportion to the parameter counts and prints the trunk's and each copy's size; the teachers share
    the student's architecture (the student starts from them), so the same counts size their copies, and
    a trunk plus copies larger than the record's ``params["targetnet"]`` is refused. Without it every box
    has one height and the figure says that sizes are not to scale. Artists carry gids for inspection:
    ``trunk:BLOCK``, ``teacherN:BLOCK`` (a copied block), ``branch:teacherN@BLOCK`` (the link),
    ``filter:teacherN@BLOCK``."""
    blocks = list(record["blocks"])
    num = len(blocks)
    groups = _branch_groups(record)
    last = max(k for branches in groups.values() for k in branches)          # the trunk's last block
    first = {n: min(branches) for n, branches in groups.items()}             # each copy starts after it
    counts, sizes, heights = _targetnet_sizes(record, blocks, block_params, last, first)
    trunk_lines, labels = _targetnet_labels(blocks, groups, first, last, sizes)
    end = num - 0.5 + 0.35                                      # the head rows, after the last block
    half_trunk = max(heights[:last + 1].max() / 2, 0.14 * len(trunk_lines))
    ys, reach = {}, {1: half_trunk, -1: half_trunk}             # teacher -> y; side -> farthest y used
    for rank, n in enumerate(sorted(groups)):
        side = 1 if rank % 2 == 0 else -1
        copy_half = heights[first[n] + 1:].max() / 2 if first[n] < num - 1 else 0.0
        half = max(0.14 * len(labels[n]), copy_half)
        ys[n] = side * (reach[side] + 0.3 + half)
        reach[side] = abs(ys[n]) + half
    width = max(len(line) for lines in [trunk_lines, *labels.values()] for line in lines) * 0.057 + 0.3
    fig, (ax, side_ax) = plt.subplots(
        1, 2, sharey=True, figsize=(0.55 * num + 1.4 + width, 1.5 + 0.55 * (reach[1] + reach[-1])),
        gridspec_kw={"width_ratios": [0.55 * num + 1.2, width], "wspace": 0})
    box = 0.64                                                  # a box's width; links pass between boxes

    def block_box(k: int, y: float, colour, gid: str, **kwargs):
        h = heights[k]
        ax.add_patch(plt.Rectangle((k - box / 2, y - h / 2), box, h, facecolor=colour, edgecolor=colour,
                                   lw=0.8, zorder=2, gid=gid, **kwargs))

    ax.plot([-0.5, last + 0.5], [0, 0], color="0.3", lw=1, zorder=1, gid="trunk")
    for k in range(last + 1):
        block_box(k, 0.0, "0.45", f"trunk:{blocks[k]}")
    ax.text(-0.6, 0, "input", ha="right", va="center")
    side_ax.text(0.05, 0, "\n".join(trunk_lines), va="center", fontsize=8, color="0.3")
    for rank, n in enumerate(sorted(groups)):
        branches, colour, y = groups[n], _colour(n), ys[n]
        shift = 0.12 * (rank // 2)                              # outer teachers' links pass beside inner ones
        ax.plot([first[n] + 0.5 + shift, end], [y, y], color=colour, lw=1, zorder=1, gid=f"teacher{n}:flow")
        for k in range(first[n] + 1, num):
            block_box(k, y, colour, f"teacher{n}:{blocks[k]}", alpha=0.6)
        for k in branches:
            x = k + 0.5 + shift
            ax.plot([x, x], [0, y], color=colour, lw=1.5, zorder=1, gid=f"branch:teacher{n}@{blocks[k]}")
            ax.plot(x, y, marker="s", ms=8, color=colour, mec="k", zorder=3, gid=f"filter:teacher{n}@{blocks[k]}")
        ax.plot(end, y, marker=">", ms=6, color=colour, zorder=3, gid=f"head:teacher{n}")
        side_ax.text(0.05, y, "\n".join(labels[n]), va="center", fontsize=8, color=colour)
    _block_ticks(ax, blocks)
    ax.set_xlim(-1.4, end + 0.2)
    ax.set_ylim(-reach[-1] - 0.3, reach[1] + 0.3)
    ax.set_yticks([])
    for spine in ("left", "right", "top"):
        ax.spines[spine].set_visible(False)
    side_ax.axis("off")
    side_ax.set_xlim(0, 1)
    if counts is not None:
        tallest = int(np.argmax(counts))
        scale = (f"box height proportional to parameters (tallest: {blocks[tallest]}, {counts[tallest]:,})"
                 + (f"; TargetNet {record['params']['targetnet']:,} in all" if "targetnet" in record.get("params", {})
                    else ""))
    else:
        scale = "box heights not to scale (no parameter counts given)"
    ax.set_xlabel(f"block (grey: the shared student trunk, {_named(blocks, 0, last)}; coloured: one copy of teacher "
                  f"$n$'s blocks)\n{scale}", loc="left")
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
