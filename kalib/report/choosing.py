"""What notebook 06 (*choosing*: amalgamate, distil, merge, or keep the teachers) says, written from the numbers
it reads: the committed crossover study (``figures/crossover.json``, written by ``kalib study crossover``) and
this run's own rows (notebook 05's ``results.json`` and records).

The study's file changes shape between versions: version 1 has no ``"version"`` key; version 2 says
``"version": 2`` and adds a protocol, task sets, inference MACs and images seen per run, adjusted intervals and
a word per paired entry, and a decision table. Every function here reads what the file holds and says which
version it is; none assumes a key that version 1 lacks. Like :mod:`kalib.report.lessons`, each function
returns markdown text (or a table) and trains nothing.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from .crossover import ARM_LABELS
from .lessons import REPO, shown_path

CROSSOVER_JSON = REPO / "figures" / "crossover.json"
# the keys notebook 06 reads in every version of the study's summary
CROSSOVER_KEYS = ("pool_sizes", "seeds", "arms", "teachers_test_map", "runs", "paired", "verdict")
# a paired entry's own word (version 2) in the words of this module
WORDS = {"ahead": "ahead", "wins": "ahead", "win": "ahead", "behind": "behind", "loses": "behind",
         "lose": "behind", "level": "level", "ties": "level", "tie": "level"}


def load_crossover(path: str | Path | None = None) -> dict | None:
    """The crossover study's summary (``figures/crossover.json``), or None when it is missing or incomplete."""
    path = Path(path or CROSSOVER_JSON)
    try:
        summary = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return summary if isinstance(summary, dict) and all(k in summary for k in CROSSOVER_KEYS) else None


def version(summary: Mapping) -> int:
    """The study's version: the summary's ``"version"``, 1 where it has none (the first study had no key)."""
    return int(summary.get("version", 1))


def _describe(value) -> str:
    """A protocol or a task set in words: a string as it is, a mapping as "key: value; …", a list joined."""
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_describe(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(_describe(v) for v in value)
    return str(value)


def crossover_source(summary: Mapping, preset: str, path: str | Path | None = None) -> str:
    """Which study the chapter reads: the committed one (its version, preset, seeds and pools), not a run of
    this notebook."""
    v = version(summary)
    text = (f"From `{Path(path or CROSSOVER_JSON).name}` (`figures/` at the repository root): version {v} of the "
            f"committed crossover study" + (" (the file has no \"version\" key)" if "version" not in summary else "") +
            f", preset {summary.get('preset', 'quick')}, seeds {', '.join(map(str, summary['seeds']))}, pools of "
            f"{', '.join(f'{p:,}' for p in summary['pool_sizes'])} images, arms "
            f"{', '.join(ARM_LABELS.get(a, a) for a in summary['arms'])}; not a run of this notebook (preset {preset}).")
    if "protocol" in summary:
        text += f" Its protocol: {_describe(summary['protocol'])}."
    if "task_sets" in summary:
        text += f" Its task sets: {_describe(summary['task_sets'])}."
    if v == 1:
        text += (" Version 1 measures one task set (C = A, every label of the teachers) and records per run its "
                 "test mAP, parameters and training MACs; it has no inference MACs and no decision table.")
    return text


def crossover_missing(path: str | Path | None = None) -> str:
    """What to say where the study's summary is missing, and how to make it."""
    return (f"`{shown_path(Path(path or CROSSOVER_JSON))}` is missing, so this section has no numbers to read. It is "
            "written by the crossover study: `make study` (that is `python -m kalib study crossover --preset quick "
            "...`; hours on two CPU cores, resumable, see README); its runs are committed in "
            "`figures/crossover/records`.")


def outcome(entry: Mapping) -> str:
    """"ahead", "behind" or "level" for a paired entry a − b: its own word where the study gives one
    (version 2), else from its interval (``adjusted_ci95`` where present, else ``ci95``): above 0, below 0,
    or containing 0."""
    word = WORDS.get(str(entry.get("word", "")).lower())
    if word:
        return word
    low, high = entry.get("adjusted_ci95") or entry["ci95"]
    return "ahead" if low > 0 else ("behind" if high < 0 else "level")


def _basis(entries: Sequence[Mapping]) -> str:
    """What :func:`outcome` read for these entries, in words."""
    if all(WORDS.get(str(e.get("word", "")).lower()) for e in entries):
        return "as the study words each pool"
    if all(e.get("adjusted_ci95") for e in entries):
        return "by the adjusted 95 % interval"
    return "by the 95 % interval of the paired differences"


def _pool_list(pools: Sequence[int]) -> str:
    pools = [f"{p:,}" for p in pools]
    return pools[0] if len(pools) == 1 else ", ".join(pools[:-1]) + f" and {pools[-1]}"


def _by_task_set(items: Sequence[Mapping]) -> dict:
    """Items grouped by their ``task_set`` (version 2), or all under None (version 1)."""
    groups: dict = {}
    for item in items:
        groups.setdefault(item.get("task_set"), []).append(item)
    return groups


def arm_against(entries: Sequence[Mapping], a: str, b: str) -> str:
    """One sentence for arm ``a`` against arm ``b`` over the pools (``entries``: the paired entries of a − b):
    where it is ahead, behind and level, and whether every pool where it is ahead is smaller than every pool
    where it is behind. Names both arms, and so the budget of the KD arm."""
    entries = sorted(entries, key=lambda e: e["pool"])
    pools = {w: [e["pool"] for e in entries if outcome(e) == w] for w in ("ahead", "behind", "level")}
    name_a, name_b = ARM_LABELS.get(a, a), ARM_LABELS.get(b, b)
    said = [f"{w} on {_pool_list(pools[w])}" for w in ("ahead", "behind", "level") if pools[w]]
    text = f"Against {name_b}, {name_a} is " + "; ".join(said).replace(" on ", " on pools of ", 1) + \
        f" images ({_basis(entries)})"
    if pools["ahead"] and pools["behind"]:
        ordered = max(pools["ahead"]) < min(pools["behind"])
        text += (": every pool where it is ahead is smaller than every pool where it is behind" if ordered else
                 ": the pools where it is ahead are not all smaller than those where it is behind")
    return text + "."


def crossover_explanation(summary: Mapping, budgets: Sequence[str] = ("kd",)) -> str:
    """Where the block-wise start pays, from the study's own numbers: each amalgamation arm against the KD arms
    ``budgets`` (default: KD at the same training MACs), per task set where the study has several; each
    amalgamation arm's training MACs at the smallest and largest pool; the arms' mean test mAP against the
    teachers at the largest pool (runs that diverged left out)."""
    text = []
    amalgamation = [a for a in summary["arms"] if a.startswith("amalgamation")]
    for task_set, pairs in _by_task_set(summary["paired"]).items():
        lead = f"Task set {task_set}: " if task_set is not None else ""
        for a in amalgamation:
            for b in budgets:
                entries = [e for e in pairs if e["a"] == a and e["b"] == b]
                if entries:
                    text.append(lead + arm_against(entries, a, b))
    runs = summary["runs"]
    for a in amalgamation:
        macs = {p: statistics.fmean(r["train_macs"] for r in runs if r["arm"] == a and r["pool"] == p)
                for p in summary["pool_sizes"] if any(r["arm"] == a and r["pool"] == p for r in runs)}
        if macs:
            first, last = min(macs), max(macs)
            text.append(f"Training {ARM_LABELS.get(a, a)} costs {macs[first] / 1e12:.2f} TMAC at {first:,} pool images "
                        f"and {macs[last] / 1e12:.2f} TMAC at {last:,}.")
    largest = max(summary["pool_sizes"])
    finished = [r for r in runs if r["pool"] == largest and r["test_map"] is not None]      # not a diverged run
    means = {arm: statistics.fmean(r["test_map"] for r in finished if r["arm"] == arm)
             for arm in summary["arms"] if any(r["arm"] == arm for r in finished)}
    if means:
        text.append(f"At {largest:,} images the teachers score {summary['teachers_test_map']:.1f} test mAP; " +
                    ", ".join(f"{ARM_LABELS.get(a, a)} {v:.1f}" for a, v in means.items()) + " (means over seeds).")
    return " ".join(text)


def _mean(values: Sequence[float | None]) -> float:
    finished = [v for v in values if v is not None]
    return statistics.fmean(finished) if finished else math.nan


def arm_table(summary: Mapping) -> pd.DataFrame:
    """Per task set (version 2), pool and arm: mean test mAP over the seeds that finished, how many did, and
    the mean parameters, training MACs (10^12) and, where the study records them, inference MACs (10^6 per
    image) and images seen."""
    rows = []
    for (task_set, pool, arm), runs in _groups(summary["runs"]).items():
        row = {"task set": task_set, "pool": pool, "arm": ARM_LABELS.get(arm, arm),
               "test mAP": _mean([r["test_map"] for r in runs]),
               "seeds": f"{sum(r['test_map'] is not None for r in runs)} of {len(runs)}",
               "parameters": _mean([r.get("params") for r in runs]),
               "training TMAC": _mean([r.get("train_macs") for r in runs]) / 1e12}
        if any("inference_macs" in r for r in runs):
            row["inference MMAC / image"] = _mean([r.get("inference_macs") for r in runs]) / 1e6
        if any("images_seen" in r for r in runs):
            row["images seen"] = _mean([r.get("images_seen") for r in runs])
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty or frame["task set"].isna().all():
        frame = frame.drop(columns=["task set"], errors="ignore")
    return frame


def _groups(runs: Sequence[Mapping]) -> dict:
    groups: dict = {}
    for r in sorted(runs, key=lambda r: (str(r.get("task_set")), r["pool"], r["arm"])):
        groups.setdefault((r.get("task_set"), r["pool"], r["arm"]), []).append(r)
    return groups


def options_figure(table: pd.DataFrame, path=None):
    """Test mAP against parameters, training MACs and (where the study records them) inference MACs per image:
    one colour per arm, one point per pool (and task set), the pool written beside it."""
    import matplotlib.pyplot as plt
    columns = [c for c in ("parameters", "training TMAC", "inference MMAC / image") if c in table.columns]
    fig, axes = plt.subplots(1, len(columns), figsize=(4.2 * len(columns), 3.4), sharey=True, squeeze=False)
    for ax, column in zip(axes[0], columns):
        for arm, rows in table.groupby("arm", sort=False):
            ax.plot(rows[column], rows["test mAP"], marker="o", ls="", label=arm)
            for _, row in rows.iterrows():
                ax.annotate(f"{row['pool']:,}", (row[column], row["test mAP"]), fontsize=6, xytext=(2, 2),
                            textcoords="offset points")
        ax.set_xscale("log")
        ax.set_xlabel(column + " (log scale)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test mAP (%), mean over seeds")
    axes[0][0].legend(fontsize=7)
    axes[0][0].set_title("Accuracy against size and compute; the number beside a point is its pool", fontsize=9,
                         loc="left")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=130)
    return fig


def decision_frame(summary: Mapping) -> pd.DataFrame | None:
    """The study's own decision table (version 2) as a table, or None where the study has none."""
    decision = summary.get("decision")
    if isinstance(decision, list) and decision and all(isinstance(d, Mapping) for d in decision):
        return pd.DataFrame(decision)
    if isinstance(decision, Mapping) and decision:
        return pd.DataFrame.from_dict(decision, orient="index")
    return None


def options_sentence(options: Mapping[str, Mapping[str, float]], teachers: str = "keep the teachers") -> str:
    """This run's options side by side (``options``: name -> {"mAP", "params", "macs", "train_macs"}): each
    against keeping the teachers, in test mAP (as shown, one decimal), parameters and MACs per image, and its
    training MACs (0: it trains nothing; None: not recorded)."""
    if teachers not in options:
        return f"No row '{teachers}' to compare with."
    ref = options[teachers]
    parts = []
    for name, o in options.items():
        if name == teachers:
            continue
        gap = round(round(o["mAP"], 1) - round(ref["mAP"], 1), 1)
        words = "level with them" if gap == 0 else f"{abs(gap):.1f} {'above' if gap > 0 else 'below'} them"
        cost = ("no training" if o.get("train_macs") == 0 else "training MACs not recorded here"
                if o.get("train_macs") is None else f"{o['train_macs'] / 1e12:.2f} TMAC of training")
        parts.append(f"{name}: {o['mAP']:.1f} mAP, {words}, at {o['params'] / ref['params']:.2f}× their parameters "
                     f"and {o['macs'] / ref['macs']:.2f}× their MACs per image ({cost})")
    return (f"Against keeping the teachers ({ref['mAP']:.1f} mAP, {ref['params']:,.0f} parameters): "
            + "; ".join(parts) + ".")
