"""Figures (kalib/plots.py): mathtext symbols, complete legends, no overlapping or clipped text, sizes
readable at a README's width, and the drawings show what their captions say."""

import re

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from kalib.report import plots

BLOCKS = ["b1_1", "b1_2", "b2_1", "b2_2", "b3_1", "b3_2", "b4_1", "b4_2"]
GROUPS = {1: "pullover dress coat shirt bag zero one three six nine".split(),
          2: "t-shirt trouser sandal sneaker boot two four five seven eight".split()}
TASKS = GROUPS[1] + GROUPS[2]
RAW_SYMBOL = re.compile(r"\b[A-Za-z]_[A-Za-z0-9]\^")            # f_n^k, L_i^k written as plain text


def _record(branch_block):
    return {"blocks": BLOCKS, "tasks": TASKS, "task_teacher": [1] * 10 + [2] * 10, "branch_block": branch_block}


def _fig3_data():
    rng = np.random.default_rng(0)
    tasks = {}
    for task, teacher, base in (("shirt", 1, 50.0), ("t-shirt", 2, 71.0)):
        ap = dict(zip(BLOCKS, base + rng.normal(0, 1, len(BLOCKS)).round(2)))
        tasks[task] = {"teacher": teacher, "teacher_ap": base, "ap_by_block": ap, "chosen_block": "b1_1",
                       "best_ap_block": max(ap, key=ap.get)}
    return {"related": {"C": ["shirt", "t-shirt"], "tasks": tasks}}


def _figures():
    rng = np.random.default_rng(1)
    one_epoch = {b: [0.64 + 0.001 * i] for i, b in enumerate(BLOCKS)}
    profile = {b: list(np.linspace(0.1, 0.09, e)) for b, e in zip(BLOCKS, (1, 1, 2, 2, 4, 4, 8, 8))}
    loss = {t: {b: 0.1 + 0.001 * j + 0.01 * i for j, b in enumerate(BLOCKS)} for i, t in enumerate(TASKS)}
    merged = {**{t: "b1_1" for t in TASKS}, "coat": "b2_1", "shirt": "b2_1", "two": "b3_2", "bag": "b4_2"}
    images = rng.integers(0, 255, (12, 3, 64, 64), dtype=np.uint8)
    labels = (rng.random((12, 20)) < 0.15).astype(np.float32)
    return {
        "canvas_grid": lambda: plots.canvas_grid(images, labels, TASKS),
        "ap_bars": lambda: plots.ap_bars({**{t: 80.0 for t in TASKS}, "mAP": 80.0}, "Teacher 1: test AP per label"),
        "filter_weights": lambda: plots.filter_weights(1 + 0.3 * rng.standard_normal((2, 128)),
                                                       ["teacher 1", "teacher 2"], "Filter weights $f_n^k$"),
        "loss_heatmap": lambda: plots.loss_heatmap(loss, {t: "b1_1" for t in TASKS}),
        "block_losses (one epoch per block)": lambda: plots.block_losses(one_epoch),
        "block_losses (a depth profile)": lambda: plots.block_losses(profile),
        "fig3": lambda: plots.fig3(_fig3_data(), BLOCKS, titles={"related": "Visually related pair"}),
        "targetnet (one branch per teacher)": lambda: plots.targetnet_drawing(_record({t: "b4_2" for t in TASKS})),
        "targetnet (branches merging)": lambda: plots.targetnet_drawing(_record(merged)),
        "alignment": lambda: plots.alignment({"teacher 1 vs teacher 2": dict(zip(BLOCKS, np.linspace(0.9, 0.2, 8))),
                                              "teacher 1 vs start": dict(zip(BLOCKS, np.linspace(0.9, 0.4, 8)))}),
    }


def _drawn_texts(fig):
    """Every visible, non-empty text as drawn, with its box in pixels (tick labels of ticks outside the
    axes' limits are not drawn and are left out)."""
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    drawn = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            if ax.axison and axis.get_visible():
                drawn.update(label for tick in axis.get_major_ticks() + axis.get_minor_ticks()
                             if lo - 1e-9 <= tick.get_loc() <= hi + 1e-9 for label in (tick.label1, tick.label2))
    texts = []
    for t in fig.findobj(Text):
        is_tick = any(t in (tick.label1, tick.label2) for ax in fig.axes for axis in (ax.xaxis, ax.yaxis)
                      for tick in axis.majorTicks + axis.minorTicks)
        if t.get_visible() and t.get_text().strip() and (not is_tick or t in drawn):
            texts.append((t.get_text(), t.get_window_extent(renderer)))
    return texts


@pytest.mark.parametrize("name", list(_figures()))
def test_text_is_inside_the_figure_never_overlaps_and_is_readable(name):
    fig = _figures()[name]()
    try:
        texts = _drawn_texts(fig)
        box = fig.bbox
        for text, ext in texts:
            assert box.x0 - 1 <= ext.x0 and ext.x1 <= box.x1 + 1 and box.y0 - 1 <= ext.y0 and ext.y1 <= box.y1 + 1, \
                f"{name}: {text!r} is clipped by the figure's edge"
        for i, (a, ea) in enumerate(texts):
            for b, eb in texts[i + 1:]:
                overlap_x = min(ea.x1, eb.x1) - max(ea.x0, eb.x0)
                overlap_y = min(ea.y1, eb.y1) - max(ea.y0, eb.y0)
                assert overlap_x <= 1 or overlap_y <= 1, f"{name}: {a!r} overlaps {b!r}"
        assert all(t.get_fontsize() >= 7 for t in fig.findobj(Text) if t.get_text().strip()), \
            f"{name}: text below 7 pt is unreadable at README width"
        assert fig.get_figwidth() <= 9, f"{name}: {fig.get_figwidth()} in is too wide for a README"
        raw = [text for text, _ in texts if RAW_SYMBOL.search(re.sub(r"\$[^$]*\$", "", text))]
        assert raw == [], f"{name}: symbols outside mathtext: {raw}"
    finally:
        plt.close(fig)


def test_fig3_legend_names_every_marker():
    fig = plots.fig3(_fig3_data(), BLOCKS)
    legend = fig.axes[0].get_legend()
    labels = [t.get_text() for t in legend.get_texts()]
    assert sum(label.startswith("Eq. 9 choice") for label in labels) == 2
    assert sum(label.startswith("best AP") for label in labels) == 2
    rings = [h for h, label in zip(legend.legend_handles, labels) if label.startswith("best AP")]
    assert all(h.get_markerfacecolor() == "none" and h.get_marker() == "o" for h in rings), "hollow rings"
    plt.close(fig)


def test_block_losses_draws_one_curve_through_blocks_of_one_epoch():
    losses = {b: [0.64 + 0.001 * i] for i, b in enumerate(BLOCKS)}
    fig = plots.block_losses(losses)
    curves = [line for line in fig.axes[0].get_lines() if len(line.get_xdata()) == len(BLOCKS)]
    assert len(curves) == 1 and list(curves[0].get_ydata()) == [v[0] for v in losses.values()]
    plt.close(fig)


def test_targetnet_drawing_merges_the_branches_of_one_teacher_into_one_band():
    branch = {**{t: "b1_1" for t in TASKS}, "coat": "b2_1", "shirt": "b2_1", "bag": "b4_2"}
    fig = plots.targetnet_drawing(_record(branch))
    ax = fig.axes[0]
    blue = [line for line in ax.get_lines() if line.get_color() == plots.TEACHER_COLOURS[0]]
    bands = [line for line in blue if line.get_linewidth() == 4]
    links = [line for line in blue if line.get_marker() in (None, "None", "") and line.get_linewidth() == 1.5]
    squares = [line for line in blue if line.get_marker() == "s"]
    assert len(bands) == 1 and len(links) == 3 and len(squares) == 3, "three branches, one copy of teacher 1"
    band_y = bands[0].get_ydata()[0]
    assert all(link.get_ydata()[1] == band_y for link in links), "every branch of teacher 1 joins its band"
    assert bands[0].get_xdata()[0] == pytest.approx(BLOCKS.index("b1_1") + 0.5)
    side = "\n".join(t.get_text() for t in fig.axes[1].texts)
    assert "after b1_1:" in side and "after b2_1: coat, shirt" in side and "after b4_2: bag" in side
    plt.close(fig)


def test_filter_weights_name_the_teachers_horizontally_and_label_the_colour_bar_briefly():
    fig = plots.filter_weights(np.ones((3, 64)), ["teacher 1", "teacher 2", "teacher 3"], "Filters $f_n^k$")
    heat, bar = fig.axes
    assert [t.get_text() for t in heat.get_yticklabels()] == ["teacher 1", "teacher 2", "teacher 3"]
    assert all(t.get_rotation() == 0 for t in heat.get_yticklabels()), "vertical names run into each other"
    assert bar.get_ylabel() == "$w$"
    plt.close(fig)
