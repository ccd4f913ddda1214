"""The crossover study's numbers as a reader sees them (:mod:`kalib.runs.crossover` runs it): paired
differences between arms with t-based 95 % intervals, the verdict sentence written from them, the figure
(test mAP against pool size, and training MACs) and a markdown table.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter
from scipy import stats

ARM_LABELS = {"amalgamation": "amalgamation (tolerance rule)", "amalgamation-eq9": "amalgamation (Eq. 9)",
              "kd": "KD, same MACs", "kd-2x": "KD, 2x MACs", "kd-randhead": "KD, same MACs, random head"}
ARM_STYLES = {"amalgamation": ("#d62728", "o"), "amalgamation-eq9": ("#ff9896", "s"), "kd": ("#1f77b4", "^"),
              "kd-2x": ("#17becf", "v"), "kd-randhead": ("#7f7f7f", "x")}
COMPARISONS = (("amalgamation", "kd"), ("amalgamation", "kd-2x"), ("amalgamation", "amalgamation-eq9"),
               ("amalgamation-eq9", "kd"), ("amalgamation-eq9", "kd-2x"), ("kd", "kd-randhead"))


def interval(diffs: Sequence[float]) -> tuple[float, list[float]]:
    """Mean of paired differences and its t-based 95 % interval (Student's t, n - 1 degrees of freedom)."""
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, [math.nan, math.nan]
    half = stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, [mean - half, mean + half]


def paired(runs: Sequence[dict], comparisons=COMPARISONS) -> list[dict]:
    """For every pool and pair of arms (a, b) with runs on the same seeds: per-seed test-mAP differences
    a − b, their mean and 95 % interval. A run whose loss diverged (no test mAP) has no difference: its seed
    is left out of that pool's pairs (:func:`failures` names it)."""
    by = {(r["arm"], r["pool"], r["seed"]): r["test_map"] for r in runs if r["test_map"] is not None}
    out = []
    for pool in sorted({r["pool"] for r in runs}):
        for a, b in comparisons:
            seeds = sorted(s for (arm, p, s) in by if arm == a and p == pool and (b, pool, s) in by)
            if not seeds:
                continue
            diffs = [round(by[a, pool, s] - by[b, pool, s], 3) for s in seeds]
            mean, ci = interval(diffs)
            out.append({"pool": pool, "a": a, "b": b, "seeds": seeds, "diffs": diffs, "mean": round(mean, 3),
                        "ci95": [round(v, 3) for v in ci]})
    return out


def _outcome(entry: dict) -> str:
    low, high = entry["ci95"]
    if low > 0:
        return "wins"
    if high < 0:
        return "loses"
    return "ties"


def _span(pools: list[int], every: list[int]) -> str:
    """``pools`` in words: "a to b images" where they are a run of consecutive pools of ``every`` (all the
    pools compared), else each named."""
    pools, every = sorted(pools), sorted(every)
    if len(pools) == 1:
        return f"{pools[0]:,} images"
    if every[every.index(pools[0]):every.index(pools[-1]) + 1] == pools:
        return f"{pools[0]:,} to {pools[-1]:,} images"
    return ", ".join(f"{p:,}" for p in pools[:-1]) + f" and {pools[-1]:,} images"


def _gap(entry: dict) -> str:
    low, high = entry["ci95"]
    return f"{entry['mean']:+.1f} mAP [{low:+.1f}, {high:+.1f}] at {entry['pool']:,}"


def failures(runs: Sequence[dict]) -> list[dict]:
    """The runs at a chosen setting whose loss diverged: arm, pool, seed and learning rate."""
    return [{"arm": r["arm"], "pool": r["pool"], "seed": r["seed"], "setting": r["setting"]}
            for r in runs if r["test_map"] is None]


def failure_sentence(failed: Sequence[dict]) -> str:
    """One sentence naming every diverged run at a chosen setting, or "" when there is none."""
    if not failed:
        return ""
    each = "; ".join(f"{ARM_LABELS[f['arm']]} at {f['pool']:,} images, seed {f['seed']} (lr {f['setting']['lr']:g})"
                     for f in failed)
    runs = "run" if len(failed) == 1 else "runs"
    return (f"Diverged at the learning rate chosen on the first seed, and left out of the pairs at its pool: "
            f"{len(failed)} {runs}, {each}.")


def study_verdict(pairs: Sequence[dict], failed: Sequence[dict] = ()) -> str:
    """The study's verdict: each amalgamation arm (the tolerance rule, then the paper's Eq. 9) against KD at
    the same training MACs (:func:`verdict`), and the runs that diverged (:func:`failure_sentence`)."""
    text = verdict(pairs)
    if any(e["a"] == "amalgamation-eq9" and e["b"] == "kd" for e in pairs):
        text += " " + verdict(pairs, "amalgamation-eq9", "kd", lead=False)
    return " ".join(t for t in (text, failure_sentence(failed)) if t)


def verdict(pairs: Sequence[dict], a: str = "amalgamation", b: str = "kd", lead: bool = True) -> str:
    """One or two sentences, generated from the paired differences of ``a`` − ``b`` over pool sizes: where
    ``a`` is ahead (95 % interval above 0), behind (below 0) or level (the interval contains 0), by how much
    at the extremes, and where the crossover lies. ``lead``: open with what the numbers are."""
    rows = sorted((e for e in pairs if e["a"] == a and e["b"] == b), key=lambda e: e["pool"])
    if not rows:
        return f"no paired runs of {a} and {b}"
    groups: dict[str, list[dict]] = {"wins": [], "loses": [], "ties": []}
    for e in rows:
        groups[_outcome(e)].append(e)
    name_a, name_b, pools = ARM_LABELS[a], ARM_LABELS[b], [e["pool"] for e in rows]
    seeds = max(len(e["seeds"]) for e in rows)
    parts = []
    for outcome, words in (("wins", "ahead of"), ("loses", "behind"), ("ties", "level with")):
        if groups[outcome]:
            best = max(groups[outcome], key=lambda e: abs(e["mean"]))
            parts.append(f"{words} {name_b} on pools of {_span([e['pool'] for e in groups[outcome]], pools)} "
                         f"(largest gap {_gap(best)})")
    title = name_a[0].upper() + name_a[1:]
    opening = f"Test mAP, mean over {seeds} paired seeds with 95 % intervals: {name_a}" if lead else title
    sentence = f"{opening} is " + "; ".join(parts) + "."
    outcomes = [_outcome(e) for e in rows]
    if "wins" in outcomes and "loses" in outcomes:
        last_win = max(e["pool"] for e in groups["wins"])
        first_loss = min(e["pool"] for e in groups["loses"])
        side = "below" if last_win < first_loss else "above"
        sentence += (f" The crossover lies between {min(last_win, first_loss):,} and {max(last_win, first_loss):,} "
                     f"pool images: {name_a} pays {side} it.")
    elif "wins" not in outcomes:
        sentence += f" {title} beats {name_b} at no pool size tried."
    return sentence


def figure(summary: dict, path=None):
    """Test mAP against pool size (log axis) per arm, mean over seeds with the seeds' range as a band and the
    teachers' line; beside it, each arm's training MACs."""
    fig, (ax, ax_macs) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [3, 2]})
    runs = summary["runs"]
    for arm in summary["arms"]:
        colour, marker = ARM_STYLES[arm]
        pools = sorted({r["pool"] for r in runs if r["arm"] == arm})
        values = [[r["test_map"] for r in runs if r["arm"] == arm and r["pool"] == p and r["test_map"] is not None]
                  for p in pools]
        macs = [statistics.fmean(r["train_macs"] for r in runs if r["arm"] == arm and r["pool"] == p) for p in pools]
        ax.plot(pools, [statistics.fmean(v) for v in values], marker=marker, color=colour, label=ARM_LABELS[arm])
        ax.fill_between(pools, [min(v) for v in values], [max(v) for v in values], color=colour, alpha=0.15, lw=0)
        ax_macs.plot(pools, [m / 1e12 for m in macs], marker=marker, color=colour, label=ARM_LABELS[arm])
    ax.axhline(summary["teachers_test_map"], color="black", ls="--", lw=1, label="teachers")
    for a in (ax, ax_macs):
        a.set_xscale("log")
        a.set_xticks(summary["pool_sizes"], [f"{p:,}" for p in summary["pool_sizes"]], fontsize=7)
        a.xaxis.set_minor_formatter(NullFormatter())
        a.set_xlabel("unlabelled pool images N (log scale)")
        a.grid(alpha=0.3)
    ax.set_ylabel("test mAP (%): mean over seeds, band = min-max", fontsize=8)
    ax_macs.set_ylabel("training MACs (10^12)")
    ax_macs.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Amalgamate or distil? Test mAP by pool size", fontsize=10)
    ax_macs.set_title("Training compute of each arm", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=130)
    return fig


def markdown(summary: dict) -> str:
    """The study as tables: test mAP (mean ± std over seeds) per arm and pool, the paired differences, the
    chosen settings, and the verdict."""
    runs, arms, pools = summary["runs"], summary["arms"], summary["pool_sizes"]
    lines = [f"# Crossover study ({summary['preset']} preset, seeds {', '.join(map(str, summary['seeds']))})", "",
             summary["verdict"], "", f"Teachers: {summary['teachers_test_map']:.1f} test mAP.", "",
             "| arm | " + " | ".join(f"N = {p:,}" for p in pools) + " |", "|---|" + "---:|" * len(pools)]
    for arm in arms:
        cells = []
        for p in pools:
            at = [r["test_map"] for r in runs if r["arm"] == arm and r["pool"] == p]
            v = [m for m in at if m is not None]
            cell = (f"{statistics.fmean(v):.1f} ± {statistics.stdev(v):.1f}" if len(v) > 1 else
                    (f"{v[0]:.1f}" if v else ""))
            cells.append(cell + (f" ({len(at) - len(v)} diverged)" if len(v) < len(at) else ""))
        lines.append(f"| {ARM_LABELS[arm]} | " + " | ".join(cells) + " |")
    lines += ["", "Paired differences of test mAP (a − b), mean and 95 % interval over seeds:", "",
              "| N | a − b | per seed | mean | 95 % interval |", "|---:|---|---|---:|---|"]
    for e in summary["paired"]:
        lines.append(f"| {e['pool']:,} | {e['a']} − {e['b']} | {', '.join(f'{d:+.2f}' for d in e['diffs'])} | "
                     f"{e['mean']:+.2f} | [{e['ci95'][0]:+.2f}, {e['ci95'][1]:+.2f}] |")
    lines += ["", "Settings chosen on the validation split (seed " + str(summary["seeds"][0]) + "):", "",
              "| arm | N | grid (lr: validation mAP) | chosen | at edge |", "|---|---:|---|---|---|"]
    for t in summary["tuning"]:
        grid = ", ".join(f"{g['setting']['lr']:g}: " + (f"{g['val_map']:.1f}" if g["val_map"] is not None else "diverged")
                         for g in t["grid"])
        lines.append(f"| {t['arm']} | {t['pool']:,} | {grid} | {t['chosen']['lr']:g} | {'yes' if t['at_edge'] else ''} |")
    return "\n".join(lines) + "\n"
