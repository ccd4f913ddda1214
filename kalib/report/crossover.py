"""The crossover study's numbers as a reader sees them (:mod:`kalib.runs.crossover` runs it; docs/design.md §9):
paired differences between arms with t-based intervals adjusted by Holm's method and one word each, the
decision table, the verdict of every cell written from them, the figure and the markdown tables.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

import matplotlib.pyplot as plt
from matplotlib.ticker import NullFormatter
from scipy import stats

ARM_LABELS = {"teachers": "the teachers", "merge": "merge (training-free)",
              "amalgamation-b4": "amalgamation, every label at b4",
              "amalgamation": "amalgamation (tolerance rule)", "amalgamation-eq9": "amalgamation (Eq. 9)",
              "kd": "KD, b4's MACs", "kd-tol": "KD, the tolerance net's MACs", "kd-eq9": "KD, Eq. 9's MACs",
              "kd-2x": "KD, 2x b4's MACs", "amalgamation-b4-2x": "amalgamation b4, fine-tuned to 2x MACs",
              "kd@amalgamation": "KD at its MACs", "kd@amalgamation-eq9": "KD at its MACs"}
ARM_STYLES = {"teachers": ("#000000", "*"), "merge": ("#8c564b", "D"), "amalgamation-b4": ("#d62728", "o"),
              "amalgamation": ("#ff7f0e", "s"), "amalgamation-eq9": ("#ff9896", "P"), "kd": ("#1f77b4", "^"),
              "kd-tol": ("#aec7e8", "<"), "kd-eq9": ("#9edae5", ">"), "kd-2x": ("#17becf", "v"),
              "amalgamation-b4-2x": ("#9467bd", "h")}
# The pairs the verdict reads (docs/design.md §9), a − b; "kd@X": KD at X's training MACs (kd-tol or kd-eq9 where
# that arm ran, else kd, whose budget is then within the tolerance).
COMPARISONS = (("amalgamation-b4", "kd"), ("amalgamation-b4-2x", "kd-2x"), ("amalgamation", "kd@amalgamation"),
               ("amalgamation-eq9", "kd@amalgamation-eq9"), ("kd", "merge"), ("amalgamation-eq9", "teachers"),
               ("kd", "teachers"))
OWN_BUDGET = {"kd@amalgamation": "kd-tol", "kd@amalgamation-eq9": "kd-eq9"}
CRITERIA = {"accuracy": "accuracy is all that matters", "size": "the network must be the KD student's size",
            "no-training": "there is no training budget"}
WORDS = ("ahead", "behind", "equivalent", "inconclusive")     # what :func:`word` says of a pair, in this order
SIZE_SLACK = 1.1            # "the KD student's size": parameters and inference MACs at most 1.1x KD's


def score(run: dict) -> float | None:
    """A run's test mAP in the pairs: a run that diverged at its chosen setting counts against its arm with the
    test mAP of the network it started that training from."""
    return run["test_map"] if run["test_map"] is not None else run.get("start_test_map")


def interval(diffs: Sequence[float], level: float = 0.05) -> tuple[float, list[float]]:
    """Mean of paired differences and its t-based two-sided interval at ``level`` (0.05: 95 %)."""
    mean = statistics.fmean(diffs)
    if len(diffs) < 2:
        return mean, [math.nan, math.nan]
    half = stats.t.ppf(1 - level / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return mean, [mean - half, mean + half]


def p_value(diffs: Sequence[float]) -> float:
    """Two-sided p-value of the paired t-test of mean 0 (1 for fewer than two seeds; 0 or 1 where the seeds
    agree exactly)."""
    if len(diffs) < 2:
        return 1.0
    sd = statistics.stdev(diffs)
    if sd == 0:
        return 0.0 if statistics.fmean(diffs) != 0 else 1.0
    t = statistics.fmean(diffs) / (sd / math.sqrt(len(diffs)))
    return float(2 * stats.t.sf(abs(t), len(diffs) - 1))


def word(ci: Sequence[float], margin: float) -> str:
    """*ahead* / *behind* (the interval excludes 0), *equivalent* (inside ± margin), *inconclusive*."""
    low, high = ci
    if math.isnan(low):
        return "inconclusive"
    if low > 0:
        return "ahead"
    if high < 0:
        return "behind"
    return "equivalent" if -margin <= low and high <= margin else "inconclusive"


def holm(entries: list[dict], alpha: float, margin: float) -> list[dict]:
    """Holm's step-down adjustment over one family: the pair of rank i among m (by p-value) gets its interval at
    level α / (m − i + 1), and every pair after the first that Holm keeps gets that pair's level; each entry
    gains ``p``, ``adjusted_level``, ``adjusted_ci95`` and ``word``."""
    order = sorted(range(len(entries)), key=lambda i: entries[i]["p"])
    m, kept = len(entries), None
    for rank_i, i in enumerate(order, start=1):
        level = alpha / (m - rank_i + 1)
        if kept is None and entries[i]["p"] > level:
            kept = rank_i
        level = alpha / (m - min(rank_i, kept or rank_i) + 1)
        _, ci = interval(entries[i]["diffs"], level)
        entries[i].update({"adjusted_level": level, "adjusted_ci95": [round(v, 3) for v in ci],
                           "word": word(ci, margin)})
    return entries


def _by_arm(runs: Sequence[dict]) -> dict[tuple, dict]:
    return {(r["arm"], r["pool"], r["seed"]): r for r in runs}


def _resolve(arm: str, by: dict, pool: int, seed: int) -> dict | None:
    """The run of ``arm`` (``kd@X``: KD at X's MACs, its own-budget arm where that ran, else ``kd``)."""
    if arm in OWN_BUDGET:
        return by.get((OWN_BUDGET[arm], pool, seed)) or by.get(("kd", pool, seed))
    return by.get((arm, pool, seed))


def pair(runs: Sequence[dict], a: str, b: str, pool: int, kind: str = "verdict") -> dict | None:
    """Per-seed test-mAP differences a − b at ``pool`` (seeds where both ran), their mean, unadjusted 95 %
    interval and p-value; the arms each side used (``kd@X`` resolves per seed) and the seeds that failed."""
    by = _by_arm(runs)
    seeds = sorted({r["seed"] for r in runs if r["pool"] == pool})
    sides = [(s, _resolve(a, by, pool, s), _resolve(b, by, pool, s)) for s in seeds]
    sides = [(s, x, y) for s, x, y in sides if x and y and score(x) is not None and score(y) is not None]
    if not sides:
        return None
    diffs = [round(score(x) - score(y), 3) for _, x, y in sides]
    mean, ci = interval(diffs)
    return {"pool": pool, "a": a, "b": b, "kind": kind, "seeds": [s for s, _, _ in sides], "diffs": diffs,
            "b_arms": sorted({y["arm"] for _, _, y in sides}), "mean": round(mean, 3),
            "ci95": [round(v, 3) for v in ci], "p": p_value(diffs),
            "failed": [s for s, x, y in sides if x["test_map"] is None or y["test_map"] is None]}


def means(runs: Sequence[dict], pool: int) -> dict[str, dict]:
    """Per arm at ``pool``: mean test mAP (failures counted by :func:`score`), parameters, inference MACs,
    training MACs."""
    out = {}
    for arm in dict.fromkeys(r["arm"] for r in runs if r["pool"] == pool):
        at = [r for r in runs if r["arm"] == arm and r["pool"] == pool and score(r) is not None]
        if at:
            out[arm] = {"test_map": round(statistics.fmean(score(r) for r in at), 3),
                        **{k: round(statistics.fmean(r[k] for r in at)) for k in ("params", "inference_macs",
                                                                                  "train_macs")}}
    return out


def candidates(table: dict[str, dict], criterion: str) -> list[str]:
    """The arms a decision question allows, best first by mean test mAP."""
    if criterion == "size":
        kd = table.get("kd")
        arms = [a for a, v in table.items() if kd and v["params"] <= SIZE_SLACK * kd["params"]
                and v["inference_macs"] <= SIZE_SLACK * kd["inference_macs"]]
    elif criterion == "no-training":
        arms = [a for a in ("teachers", "merge") if a in table]
    else:
        arms = list(table)
    return sorted(arms, key=lambda a: -table[a]["test_map"])


def analyse(runs: Sequence[dict], cells: Sequence[dict], margin: float, alpha: float) -> dict:
    """``paired`` (the verdict's pairs and, per decision question, best − runner-up, with Holm-adjusted
    intervals and words per family: teachers × task set), ``decision`` (per cell, pool and question the best
    arm with its numbers and word, among the arms run at every seed of the cell: ``kd-tol`` and ``kd-eq9`` run
    only at the seeds where their budget differs from ``kd``'s), ``failures`` and ``verdict`` (per cell,
    :func:`cell_verdict`)."""
    paired, decision, verdict = [], [], {}
    for cell in cells:
        name = f"{cell['teachers']}/{cell['task_set']}"
        mine = [r for r in runs if r["teachers"] == cell["teachers"] and r["task_set"] == cell["task_set"]]
        family, rows = [], []
        for pool in cell["pools"]:
            family += [e for a, b in COMPARISONS if (e := pair(mine, a, b, pool)) is not None]
            table = {arm: v for arm, v in means(mine, pool).items()      # only arms run at every seed
                     if {r['seed'] for r in mine if r['arm'] == arm and r['pool'] == pool} >= set(cell['seeds'])}
            for criterion in CRITERIA:
                order = candidates(table, criterion)
                if not order:
                    continue
                row = {"teachers": cell["teachers"], "task_set": cell["task_set"], "pool": pool,
                       "criterion": criterion, "choice": order[0], **table[order[0]],
                       "runner_up": order[1] if len(order) > 1 else None}
                if len(order) > 1 and (e := pair(mine, order[0], order[1], pool, f"decision:{criterion}")):
                    family.append(e)
                rows.append(row)
        holm(family, alpha, margin)
        for e in family:
            e.update({"teachers": cell["teachers"], "task_set": cell["task_set"], "family_size": len(family)})
        for row in rows:
            e = next((e for e in family if e["kind"] == f"decision:{row['criterion']}" and e["pool"] == row["pool"]), None)
            row["word"] = e["word"] if e else None
        failed = failures(mine)
        verdict[name] = cell_verdict(family, failed, cell, margin)
        paired += family
        decision += rows
    return {"paired": paired, "decision": decision, "failures": failures(runs), "verdict": verdict}


def failures(runs: Sequence[dict]) -> list[dict]:
    """The runs at a chosen setting whose loss diverged."""
    return [{k: r[k] for k in ("teachers", "task_set", "arm", "pool", "seed", "setting") if k in r}
            for r in runs if r["test_map"] is None]


def _pools(pools: Sequence[int]) -> str:
    pools = [f"{p:,}" for p in sorted(pools)]
    return pools[0] if len(pools) == 1 else ", ".join(pools[:-1]) + f" and {pools[-1]}"


def _gap(e: dict) -> str:
    low, high = e["adjusted_ci95"]
    return f"{e['mean']:+.1f} mAP [{low:+.1f}, {high:+.1f}] at {e['pool']:,}"


def pair_sentence(entries: Sequence[dict]) -> str:
    """One pair of arms over the pools, grouped by word: "ahead at 250 and 500 (largest +3.1 mAP [+2.0, +4.2]
    at 250); inconclusive at 1,000 and 4,000"."""
    parts = []
    for w in WORDS:
        at = [e for e in entries if e["word"] == w]
        if at:
            top = max(at, key=lambda e: abs(e["mean"]))
            parts.append(f"{w} at {_pools([e['pool'] for e in at])} ({'largest ' if len(at) > 1 else ''}{_gap(top)})")
    return "; ".join(parts)


def cell_verdict(family: Sequence[dict], failed: Sequence[dict], cell: dict, margin: float) -> str:
    """The verdict of one cell, written from its pairs: how many pairs the intervals are adjusted for, then each
    pair the verdict reads, by pool, in words; and the runs that failed."""
    if not family:
        return "no paired runs"
    seeds = max(len(e["seeds"]) for e in family)
    head = (f"Test mAP over {seeds} paired seeds, 95 % intervals Holm-adjusted for the {len(family)} pairs of "
            f"{cell['teachers']} on {len(cell['labels'])} labels ({cell['task_set']}); equivalent means inside "
            f"±{margin:g} mAP.")
    sentences = [head]
    for a, b in COMPARISONS:
        entries = [e for e in family if e["a"] == a and e["b"] == b and e["kind"] == "verdict"]
        if entries:
            budget = ""
            if b in OWN_BUDGET:
                budgets = sorted({arm for e in entries for arm in e["b_arms"]})
                budget = f" (budget: {', '.join(budgets)})"
            sentences.append(f"{ARM_LABELS[a][0].upper()}{ARM_LABELS[a][1:]} against {ARM_LABELS[b]}{budget}: "
                             f"{pair_sentence(entries)}.")
    if failed:
        each = "; ".join(f"{ARM_LABELS[f['arm']]} at {f['pool']:,}, seed {f['seed']}" for f in failed)
        sentences.append(f"Diverged at the chosen setting, counted with the mAP of its start: {each}.")
    return " ".join(sentences)


def _places(entries: Sequence[dict]) -> str:
    """"pair-1/all N = 500, 1,000; pair-2/all N = 250": the cells and pools of ``entries``."""
    cells: dict[str, list[int]] = {}
    for e in entries:
        cells.setdefault(f"{e['teachers']}/{e['task_set']}", []).append(e["pool"])
    return "; ".join(f"{cell} N = {', '.join(f'{n:,}' for n in sorted(pools))}" for cell, pools in cells.items())


def _words(entries: Sequence[dict]) -> str:
    """A pair's words over every cell and pool, grouped: "ahead nowhere; behind in 3 of 10 (pair-1/all N = 500,
    1,000; pair-2/all N = 250); inconclusive in 7 (…)"."""
    groups = [(w, at) for w in WORDS if (at := [e for e in entries if e["word"] == w])]
    parts = [] if groups and groups[0][0] == "ahead" else ["ahead nowhere"]
    for i, (w, at) in enumerate(groups):
        parts.append(f"{w} in {len(at)}{f' of {len(entries)}' if i == 0 else ''} ({_places(at)})")
    return "; ".join(parts)


def _ratios(summary: dict, entries: Sequence[dict], against: str, key: str) -> str:
    """"1.9–2.0×": the range over ``entries`` (pairs a − b) of arm a's mean ``key`` over that of ``against``, in
    the entry's cell and pool."""
    values = []
    for e in entries:
        runs = [r for r in summary["runs"] if (r["teachers"], r["task_set"]) == (e["teachers"], e["task_set"])]
        table = means(runs, e["pool"])
        values.append(table[e["a"]][key] / table[against][key])
    low, high = min(values), max(values)
    return f"{low:.1f}×" if f"{low:.1f}" == f"{high:.1f}" else f"{low:.1f}–{high:.1f}×"


def answer(summary: dict) -> list[str]:
    """The study's answer in a few sentences, each written from the words of its pairs over every cell and pool
    (the verdict's Holm-adjusted words) and from the arms' mean sizes: the block-wise start against KD at the same
    network, images and training MACs and at twice them; the larger branch-out nets against KD at their own MACs;
    the Eq. 9 net and KD against the teachers; KD against the merge; then what follows."""
    pairs = {(a, b): [e for e in summary["paired"] if e["kind"] == "verdict" and (e["a"], e["b"]) == (a, b)]
             for a, b in COMPARISONS}
    same, twice, tolerance, eq9_kd, merge, eq9, kd = (pairs[c] for c in COMPARISONS)
    lines = []
    if same:
        lines.append(f"**The same network, images and training MACs** (`amalgamation-b4` − `kd`): {_words(same)}.")
    if twice:
        lines.append(f"**Twice the training MACs** (`amalgamation-b4-2x` − `kd-2x`): {_words(twice)}.")
    if tolerance and eq9_kd:
        text = ("**Larger networks from the same blocks**, each against KD at its own training MACs: the tolerance "
                f"rule's (`amalgamation` − KD) {_words(tolerance)}; Eq. 9's (`amalgamation-eq9` − KD) "
                f"{_words(eq9_kd)}.")
        if ahead := [e for e in tolerance + eq9_kd if e["word"] == "ahead"]:
            text += (f" Where they are ahead they have {_ratios(summary, ahead, 'kd', 'params')} the KD student's "
                     f"parameters and {_ratios(summary, ahead, 'kd', 'inference_macs')} its inference MACs per image.")
        lines.append(text)
    size = eq9 and (f"{_ratios(summary, eq9, 'teachers', 'params')} the teachers' parameters and "
                    f"{_ratios(summary, eq9, 'teachers', 'inference_macs')} their inference MACs")
    if eq9 and kd:
        lines.append(f"**Against the teachers as they are** (no training): the Eq. 9 net (`amalgamation-eq9` − "
                     f"`teachers`), with {size}, {_words(eq9)}. KD at the student's size (`kd` − `teachers`): "
                     f"{_words(kd)}.")
    if merge:
        low, high = min(e["mean"] for e in merge), max(e["mean"] for e in merge)
        lines.append(f"**The training-free merge**, of the student's size (`kd` − `merge`): {_words(merge)}; KD's "
                     f"lead is {low:+.1f} to {high:+.1f} mAP.")
    if same and twice and not any(e["word"] == "ahead" for e in same + twice):
        still = ("So, once the network, the images and the training compute are equal, block-wise amalgamation wins "
                 "nowhere in this study.")
        if eq9 and kd and not any(e["word"] == "behind" for e in eq9):
            behind = [e for e in kd if e["word"] == "behind"]
            still += (f" What it still gives is a network that is behind the teachers nowhere, from N = "
                      f"{min(e['pool'] for e in eq9):,} on, where KD at the student's size is behind them in "
                      f"{len(behind)} of {len(kd)}; but that network is the Eq. 9 TargetNet, with {size}, and against "
                      "keeping the teachers, which needs no training, it is ahead in "
                      f"{sum(e['word'] == 'ahead' for e in eq9)} of {len(eq9)}.")
        lines.append(still)
    return lines


FAR_BELOW = 10.0        # mAP under the median of its arm, pool and cell: many times the seed-to-seed spread


def _setting(setting: dict, sep: str = " ") -> str:
    """"lr 0.05" (floats shortest, as ``:g``), fields joined by ``sep``."""
    return sep.join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in setting.items())


def far_below(summary: dict) -> str:
    """The runs the words cannot show: those whose test mAP is more than ``FAR_BELOW`` under the median of their
    arm at their pool and cell, with a finite loss (a diverged run is named by the verdict); they count in the
    pairs as they are, and they are what widens an interval."""
    groups: dict[tuple, list[dict]] = {}
    for r in summary["runs"]:
        groups.setdefault((r["teachers"], r["task_set"], r["arm"], r["pool"]), []).append(r)
    found = []
    for (teachers, task_set, arm, pool), runs in groups.items():
        median = statistics.median(r["test_map"] for r in runs if r["test_map"] is not None)
        low = [r for r in runs if r["test_map"] is not None and r["test_map"] < median - FAR_BELOW]
        if low:
            found.append(f"`{arm}` in {teachers}/{task_set} at N = {pool:,}: " + ", ".join(
                f"seed {r['seed']} {r['test_map']:.1f} (median {median:.1f}; {_setting(r['setting'], ', ')})"
                for r in low))
    if not found:
        return ""
    return (f"Runs more than {FAR_BELOW:g} mAP below their arm's median at the chosen setting, their loss finite, "
            f"so they count in the pairs as they are and widen their intervals: {'; '.join(found)}.")


def figure(summary: dict, path=None):
    """Per cell (a row): test mAP against pool size per arm (mean over seeds, band = min-max, the teachers'
    line), and test mAP against inference MACs per image (each arm a point per pool)."""
    cells = summary["cells"]
    fig, axes = plt.subplots(len(cells), 2, figsize=(11, 3.6 * len(cells)), squeeze=False,
                             gridspec_kw={"width_ratios": [3, 2]})
    for (ax, ax_macs), cell in zip(axes, cells):
        runs = [r for r in summary["runs"] if r["teachers"] == cell["teachers"] and r["task_set"] == cell["task_set"]]
        for arm in [a for a in summary["arms"] if any(r["arm"] == a for r in runs)]:
            colour, marker = ARM_STYLES[arm]
            pools = sorted({r["pool"] for r in runs if r["arm"] == arm})
            values = [[score(r) for r in runs if r["arm"] == arm and r["pool"] == p and score(r) is not None]
                      for p in pools]
            mean = [statistics.fmean(v) for v in values]
            if arm == "teachers":
                ax.axhline(mean[0], color=colour, ls="--", lw=1, label=ARM_LABELS[arm])
            else:
                ax.plot(pools, mean, marker=marker, color=colour, label=ARM_LABELS[arm], ms=4, lw=1)
                ax.fill_between(pools, [min(v) for v in values], [max(v) for v in values], color=colour, alpha=0.1, lw=0)
            macs = [statistics.fmean(r["inference_macs"] for r in runs if r["arm"] == arm and r["pool"] == p)
                    for p in pools]
            ax_macs.scatter([m / 1e6 for m in macs], mean, marker=marker, color=colour, s=18)
        ax.set_xscale("log")
        ax.set_xticks(cell["pools"], [f"{p:,}" for p in cell["pools"]], fontsize=7)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("unlabelled pool images N (log scale)")
        ax.set_ylabel("test mAP (%)", fontsize=8)
        ax.set_title(f"{cell['teachers']}, {cell['task_set']} ({len(cell['labels'])} labels): test mAP by pool size",
                     fontsize=9)
        ax.legend(fontsize=6, loc="lower right", ncol=2)
        ax_macs.set_xlabel("inference MACs per image (millions)")
        ax_macs.set_title("test mAP against inference cost (a point per arm and pool)", fontsize=9)
        for a in (ax, ax_macs):
            a.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig


def decision_markdown(summary: dict) -> list[str]:
    """The decision table: per cell and pool, the best arm for each question, with its numbers and the word of its
    pair with the runner-up."""
    lines = ["| teachers | task set | N | question | best choice | test mAP | parameters | inference MMACs | "
             "training 10^12 MACs | against the runner-up |", "|---|---|---:|---|---|---:|---:|---:|---:|---|"]
    for row in summary["decision"]:
        against = f"{row['word']} vs {row['runner_up']}" if row["runner_up"] else "the only candidate"
        lines.append(f"| {row['teachers']} | {row['task_set']} | {row['pool']:,} | {CRITERIA[row['criterion']]} | "
                     f"{row['choice']} | {row['test_map']:.1f} | {row['params']:,} | {row['inference_macs'] / 1e6:.1f} | "
                     f"{row['train_macs'] / 1e12:.2f} | {against} |")
    return lines


def markdown(summary: dict) -> str:
    """The study as tables: the verdict of every cell, the decision table, test mAP (mean ± std over seeds) per arm
    and pool, the paired differences, and the chosen settings."""
    p = summary["protocol"]
    lines = [f"# Crossover study, version 2 ({summary['preset']} preset; protocol at commit {p['commit']})", "",
             "## The answer in brief", "", *brief(summary), "## Verdict per cell", ""]
    for cell, text in summary["verdict"].items():
        lines += [f"**{cell}.** {text}", ""]
    lines += ["## Decision table", "", *decision_markdown(summary), ""]
    for cell in summary["cells"]:
        runs = [r for r in summary["runs"] if r["teachers"] == cell["teachers"] and r["task_set"] == cell["task_set"]]
        lines += [f"## {cell['teachers']}, {cell['task_set']}: {', '.join(cell['labels'])}", "",
                  "| arm | " + " | ".join(f"N = {n:,}" for n in cell["pools"]) + " | parameters (its largest N) |",
                  "|---|" + "---:|" * (len(cell["pools"]) + 1)]
        for arm in [a for a in summary["arms"] if any(r["arm"] == a for r in runs)]:
            cells = []
            for n in cell["pools"]:
                v = [score(r) for r in runs if r["arm"] == arm and r["pool"] == n and score(r) is not None]
                failed = sum(r["test_map"] is None for r in runs if r["arm"] == arm and r["pool"] == n)
                cells.append((f"{statistics.fmean(v):.1f} ± {statistics.stdev(v):.1f}" if len(v) > 1 else
                              (f"{v[0]:.1f}" if v else "")) + (f" ({failed} diverged)" if failed else ""))
            largest = max(r["pool"] for r in runs if r["arm"] == arm)     # kd-tol, kd-eq9: not at every pool
            size = next(r["params"] for r in runs if r["arm"] == arm and r["pool"] == largest)
            lines.append(f"| {ARM_LABELS[arm]} | " + " | ".join(cells) + f" | {size:,} |")
        lines.append("")
    lines += ["## Paired differences (a − b, test mAP)", "",
              "| teachers | task set | N | a − b | per seed | mean | Holm-adjusted interval | word |",
              "|---|---|---:|---|---|---:|---|---|"]
    for e in summary["paired"]:
        b = e["b"] + (f" ({', '.join(e['b_arms'])})" if e["b"] in OWN_BUDGET else "")
        lines.append(f"| {e['teachers']} | {e['task_set']} | {e['pool']:,} | {e['a']} − {b} | "
                     f"{', '.join(f'{d:+.2f}' for d in e['diffs'])} | {e['mean']:+.2f} | "
                     f"[{e['adjusted_ci95'][0]:+.2f}, {e['adjusted_ci95'][1]:+.2f}] | {e['word']} |")
    lines += ["", "## Settings chosen on the validation split (a tuned cell's first seed)", "",
              "| teachers | task set | arm | N | grid (setting: validation mAP) | chosen | at edge |",
              "|---|---|---|---:|---|---|---|"]
    for t in summary["tuning"]:
        grid = ", ".join(_setting(g["setting"])
                         + ": " + (f"{g['val_map']:.1f}" if g["val_map"] is not None else "diverged") for g in t["grid"])
        choice = _setting(t["chosen"])
        lines.append(f"| {t['teachers']} | {t['task_set']} | {t['arm']} | {t['pool']:,} | {grid} | {choice} | "
                     f"{'yes' if t['at_edge'] else ''} |")
    c = summary["cost"]
    lines += ["", f"Cost: {c['core_s']:,} seconds of one thread ({c['core_h']} core-hours) over {c['records']} records."]
    return "\n".join(lines) + "\n"


def brief(summary: dict) -> list[str]:
    """The answer in brief as markdown lines: its sentences as a list, then (each a paragraph where there are any)
    the runs far below their arm's median and the protocol's changes after a test number was seen."""
    lines = [*(f"- {line}" for line in answer(summary)), ""]
    if far := far_below(summary):
        lines += [far, ""]
    if changes := summary["protocol"].get("changes"):
        lines += [f"Changed after test numbers were seen: {'; '.join(changes)}.", ""]
    return lines


def readme_quote(summary: dict) -> str:
    """What the README quotes word for word: the answer in brief, every cell's verdict, then the decision table."""
    lines = brief(summary)
    for cell, text in summary["verdict"].items():
        lines += [f"> **{cell}.** {text}", ">"]
    return "\n".join(lines[:-1] + ["", *decision_markdown(summary)]) + "\n"
