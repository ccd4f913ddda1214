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


# the parameters of resnet18_narrow's blocks at width 16 (the lesson and quick presets' networks)
BLOCK_PARAMS = dict(zip(BLOCKS, (5136, 4672, 14528, 18560, 57728, 73984, 230144, 295424)))
TOLERANCE = {t: "b4_2" for t in TASKS}                       # every task at the last block (the quick preset)
EQ9 = {t: "b1_1" for t in TASKS}                             # every task at the first block (Eq. 9 on lesson)
MIXED = {**EQ9, "coat": "b2_1", "shirt": "b2_1", "two": "b3_2", "bag": "b4_2"}


def _record(branch_block, branches=None, targetnet=None):
    """A run record as kalib.runs.amalgamation writes it (the keys the drawing reads)."""
    record = {"blocks": BLOCKS, "tasks": TASKS, "task_teacher": [1] * 10 + [2] * 10, "branch_block": branch_block}
    if branches is not None:
        record["params"] = {"targetnet": targetnet or 3_000_000, "teachers": 1_402_932, "branches": branches}
    return record


def _branches(branch_block):
    return sorted({f"teacher{1 if TASKS.index(t) < 10 else 2}@{b}" for t, b in branch_block.items()})


def _fig3_data(shirt=50.0, t_shirt=71.0):
    rng = np.random.default_rng(0)
    tasks = {}
    for task, teacher, base in (("shirt", 1, shirt), ("t-shirt", 2, t_shirt)):
        ap = dict(zip(BLOCKS, np.clip(base + rng.normal(0, 1, len(BLOCKS)), 0, 100).round(2)))
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
        "filter_weights (shared limits)": lambda: plots.filter_weights(
            np.full((2, 64), 1.1), ["teacher 1", "teacher 2"], "Filter weights $f_n^k$ (colour scale shared)",
            limits=(0.4, 1.6)),
        "loss_heatmap": lambda: plots.loss_heatmap(loss, {t: "b1_1" for t in TASKS}),
        "block_losses (one epoch per block)": lambda: plots.block_losses(one_epoch),
        "block_losses (a depth profile)": lambda: plots.block_losses(profile),
        "block_losses (zoomed)": lambda: plots.block_losses(profile, from_zero=False),
        "fig3": lambda: plots.fig3(_fig3_data(), BLOCKS, titles={"related": "Visually related pair"}),
        "fig3 (two panels, one near 90 AP)": lambda: plots.fig3(
            {**_fig3_data(90.0, 90.5), "unrelated": _fig3_data()["related"]}, BLOCKS),
        "targetnet (one branch per teacher)": lambda: plots.targetnet_drawing(_record(TOLERANCE)),
        "targetnet (branches merging)": lambda: plots.targetnet_drawing(_record(merged)),
        "targetnet (Eq. 9, to scale)": lambda: plots.targetnet_drawing(_record(EQ9, _branches(EQ9)),
                                                                       block_params=BLOCK_PARAMS),
        "targetnet (mixed, to scale)": lambda: plots.targetnet_drawing(_record(MIXED, _branches(MIXED)),
                                                                       block_params=BLOCK_PARAMS),
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


def _gids(ax, prefix):
    """{gid: artist} of the axes' lines and patches whose gid starts with ``prefix``."""
    return {a.get_gid(): a for a in ax.lines + ax.patches if (a.get_gid() or "").startswith(prefix)}


def test_targetnet_drawing_merges_the_branches_of_one_teacher_into_one_band():
    branch = {**EQ9, "coat": "b2_1", "shirt": "b2_1", "bag": "b4_2"}
    fig = plots.targetnet_drawing(_record(branch))
    ax = fig.axes[0]
    flows = _gids(ax, "teacher1:flow")
    links = _gids(ax, "branch:teacher1@")
    squares = _gids(ax, "filter:teacher1@")
    assert len(flows) == 1 and len(links) == 3 and len(squares) == 3, "three branches, one copy of teacher 1"
    band_y = flows["teacher1:flow"].get_ydata()[0]
    assert all(link.get_ydata()[1] == band_y for link in links.values()), "every branch of teacher 1 joins its band"
    assert flows["teacher1:flow"].get_xdata()[0] == pytest.approx(BLOCKS.index("b1_1") + 0.5)
    side = "\n".join(t.get_text() for t in fig.axes[1].texts)
    assert "after b1_1:" in side and "after b2_1: coat, shirt" in side and "after b4_2: bag" in side
    plt.close(fig)


@pytest.mark.parametrize("branch_block", [TOLERANCE, EQ9, MIXED], ids=["tolerance", "eq9", "mixed"])
@pytest.mark.parametrize("to_scale", [True, False], ids=["to scale", "not to scale"])
def test_targetnet_drawing_places_trunk_branches_and_copies_at_the_records_blocks(branch_block, to_scale):
    record = _record(branch_block, _branches(branch_block))
    fig = plots.targetnet_drawing(record, block_params=BLOCK_PARAMS if to_scale else None)
    ax = fig.axes[0]
    last = max(BLOCKS.index(b) for b in branch_block.values())
    trunk = _gids(ax, "trunk:")
    assert sorted(trunk, key=lambda g: BLOCKS.index(g[6:])) == [f"trunk:{b}" for b in BLOCKS[:last + 1]], \
        "the trunk ends at the deepest branch-out block"
    for gid, box in trunk.items():
        assert box.get_x() + box.get_width() / 2 == pytest.approx(BLOCKS.index(gid[6:])), "a box in its block's column"
    for teacher, tasks in ((1, TASKS[:10]), (2, TASKS[10:])):
        at = sorted({BLOCKS.index(branch_block[t]) for t in tasks})
        links = _gids(ax, f"branch:teacher{teacher}@")
        assert sorted(links) == [f"branch:teacher{teacher}@{BLOCKS[k]}" for k in at]
        for k in at:
            xs, ys = links[f"branch:teacher{teacher}@{BLOCKS[k]}"].get_data()
            assert list(xs) == pytest.approx([k + 0.5] * 2), "the branch leaves the trunk after its block"
            assert ys[0] == 0
        copy = _gids(ax, f"teacher{teacher}:b")
        assert sorted(copy) == sorted(f"teacher{teacher}:{b}" for b in BLOCKS[at[0] + 1:]), \
            "one copy of the teacher's blocks after its earliest branch-out block"
    side = "\n".join(t.get_text() for t in fig.axes[1].texts)
    for block in set(branch_block.values()):
        assert f"after {block}:" in side
    boxes = {**trunk, **_gids(ax, "teacher1:b"), **_gids(ax, "teacher2:b")}
    heights = {gid: box.get_height() for gid, box in boxes.items()}
    if to_scale:
        tallest = max(BLOCK_PARAMS.values())
        for gid, h in heights.items():
            assert h == pytest.approx(plots.TARGETNET_TALLEST * BLOCK_PARAMS[gid.split(":")[1]] / tallest), \
                f"{gid}: box height proportional to the block's parameters"
        assert f"{sum(BLOCK_PARAMS[b] for b in BLOCKS[:last + 1]):,} parameters" in side
        assert "proportional to parameters" in ax.get_xlabel()
    else:
        assert len(set(heights.values())) == 1 and "not to scale" in ax.get_xlabel()
    plt.close(fig)


def test_targetnet_drawing_refuses_a_record_or_counts_that_do_not_fit():
    with pytest.raises(ValueError, match="disagree"):
        plots.targetnet_drawing(_record(MIXED, _branches(EQ9)))
    with pytest.raises(ValueError, match="exceed"):
        plots.targetnet_drawing(_record(EQ9, _branches(EQ9), targetnet=700_000), block_params=BLOCK_PARAMS)
    with pytest.raises(ValueError, match="every block"):
        plots.targetnet_drawing(_record(EQ9), block_params={"b1_1": 10})


def test_filter_weights_of_several_figures_share_one_colour_scale_and_bar():
    early, late = 1 + 0.05 * np.sin(np.arange(64)).reshape(1, 64).repeat(2, 0), np.array([[0.3] * 64, [1.9] * 64])
    limits = plots.filter_weight_limits(early, late)
    assert limits[0] <= late.min() and limits[1] >= late.max() and np.mean(limits) == pytest.approx(1.0)
    names = ["teacher 1", "teacher 2"]
    figs = [plots.filter_weights(w, names, "Filters $f_n^k$", limits=limits) for w in (early, late)]
    clims = [fig.axes[0].collections[0].get_clim() for fig in figs]
    assert clims[0] == pytest.approx(limits) and clims[1] == pytest.approx(limits), \
        "one colour means one weight in both figures"
    assert all(len(fig.axes) == 2 for fig in figs), "one heatmap and one colour bar per figure"
    alone = plots.filter_weights(early, names, "Filters $f_n^k$")
    low, high = alone.axes[0].collections[0].get_clim()
    assert low <= early.min() and high >= early.max()
    with pytest.raises(ValueError, match="outside"):
        plots.filter_weights(late, names, "Filters $f_n^k$", limits=plots.filter_weight_limits(early))
    for fig in figs + [alone]:
        plt.close(fig)


def test_block_losses_axis_starts_at_zero_or_says_that_it_does_not():
    losses = {b: [0.64 + 0.001 * i] for i, b in enumerate(BLOCKS)}          # a spread of 0.007 nats
    fig = plots.block_losses(losses)
    assert fig.axes[0].get_ylim()[0] == 0
    plt.close(fig)
    fig = plots.block_losses(losses, from_zero=False)
    low, high = fig.axes[0].get_ylim()
    assert low > 0 and "does not start at 0" in fig.axes[0].get_ylabel()
    assert f"{low:.3f} to {high:.3f}" in fig.axes[0].get_ylabel(), "the zoomed range is stated"
    plt.close(fig)


def test_loss_heatmap_colours_from_zero_over_at_least_the_stated_span():
    loss = {t: {b: 0.1 + 0.0005 * j for j, b in enumerate(BLOCKS)} for t in TASKS}    # excess up to 0.0035 nats
    fig = plots.loss_heatmap(loss, {t: "b1_1" for t in TASKS})
    low, high = fig.axes[0].collections[0].get_clim()
    assert low == 0 and high == pytest.approx(plots.LOSS_COLOUR_SPAN), "thousandths of a nat stay dark"
    assert "at least 0.02" in fig.axes[1].get_ylabel()
    plt.close(fig)


@pytest.mark.parametrize("bases", [(50.0, 71.0), (90.0, 90.5), (99.0, 99.5), (3.0, 4.0)])
def test_fig3_axis_holds_the_curves_and_teacher_lines_and_is_tall_enough(bases):
    data = {"related": _fig3_data(*bases)["related"], "unrelated": _fig3_data(40.0, 45.0)["related"]}
    fig = plots.fig3(data, BLOCKS)
    heights = []
    for ax, pair in zip(fig.axes, data):
        low, high = ax.get_ylim()
        heights.append(high - low)
        assert 0 <= low and high <= 100
        assert high - low >= plots.FIG3_MIN_SPAN, "a 1-point difference must not fill the axis"
        for d in data[pair]["tasks"].values():
            assert low <= d["teacher_ap"] <= high, "the teacher's line is on the axis"
            assert all(low <= v <= high for v in d["ap_by_block"].values()), "the whole curve is on the axis"
        assert low == 0 or "not 0" in ax.get_ylabel(), "an axis that does not start at 0 says so"
    assert heights[0] == pytest.approx(heights[1]), "one AP scale in every panel"
    plt.close(fig)


def test_filter_weights_name_the_teachers_horizontally_and_label_the_colour_bar_briefly():
    fig = plots.filter_weights(np.ones((3, 64)), ["teacher 1", "teacher 2", "teacher 3"], "Filters $f_n^k$")
    heat, bar = fig.axes
    assert [t.get_text() for t in heat.get_yticklabels()] == ["teacher 1", "teacher 2", "teacher 3"]
    assert all(t.get_rotation() == 0 for t in heat.get_yticklabels()), "vertical names run into each other"
    assert bar.get_ylabel() == "$w$"
    plt.close(fig)
