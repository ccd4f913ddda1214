"""What notebook 06 (*choosing*: amalgamate, distil, merge, or keep the teachers) says, written from the numbers
it reads: version 2 of the committed crossover study (``figures/crossover.json``, written by ``kalib study
crossover``: :func:`kalib.runs.crossover.study.summarise` with :func:`kalib.report.crossover.analyse`;
docs/design.md §9) and this run's own rows (notebook 05's ``results.json``).

Version 1 of the study (no ``"version"`` key; commit e71a9c8 and before) was withdrawn: its advice did not follow
from its runs. This module reads version 2 only, and where the file holds anything else it says so and reads
nothing from it. Like :mod:`kalib.report.lessons`, each function returns markdown text (or a table or figure)
and trains nothing.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from .crossover import ARM_LABELS, CRITERIA, score
from .lessons import REPO, shown_path

CROSSOVER_JSON = REPO / "figures" / "crossover.json"
CROSSOVER_RECORDS = REPO / "figures" / "crossover" / "records"
# the keys of version 2's summary that notebook 06 and its exercises read (all written by the study)
CROSSOVER_KEYS = ("version", "preset", "protocol", "cells", "arms", "runs", "paired", "decision", "verdict",
                  "commits", "cost")
# the pairs that say whether the block-wise start pays against KD: at the same training MACs (the primary pair:
# the same network, images and compute) and at twice them
PRIMARY = ("amalgamation-b4", "kd")
TWICE = ("amalgamation-b4-2x", "kd-2x")
# what each of the study's words says about the block-wise start in a pair a − b whose b is KD at a's compute
MEANING = {"ahead": "pays", "behind": "costs", "equivalent": "makes no difference", "inconclusive": "is undecided"}
NOTES = {"behind": ": KD spends the same compute better", "equivalent": ": within the margin"}


def _read(path: Path) -> tuple[dict | None, str]:
    """The summary at ``path`` if it is version 2's and complete, else None, and why not in words."""
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        return None, "missing"
    except (OSError, ValueError) as err:
        return None, f"not readable JSON ({err})"
    if not isinstance(summary, dict):
        return None, "not a study's summary (not a JSON object)"
    if summary.get("version", 1) == 1:
        found = "no \"version\" key" if "version" not in summary else "\"version\": 1"
        return None, (f"version 1 of the study ({found}), which was withdrawn: its advice did not follow from its "
                      "runs (docs/design.md §9); this chapter reads version 2 only")
    if summary["version"] != 2:
        return None, f"of a version of the study this chapter does not know (\"version\": {summary['version']!r})"
    missing = [k for k in CROSSOVER_KEYS if k not in summary]
    if missing:
        return None, f"an incomplete summary of version 2 (no {', '.join(missing)})"
    return summary, ""


def load_crossover(path: str | Path | None = None) -> dict | None:
    """Version 2 of the crossover study's summary (``figures/crossover.json``), or None when the file is missing,
    unreadable, incomplete or of version 1, which was withdrawn (:func:`crossover_missing` says which)."""
    return _read(Path(path or CROSSOVER_JSON))[0]


def crossover_missing(path: str | Path | None = None, records: str | Path | None = None) -> str:
    """What to say where :func:`load_crossover` gives None: what the file is (missing, version 1, incomplete),
    how many of version 2's records there are and how to write the summary from them."""
    path, records = Path(path or CROSSOVER_JSON), Path(records or CROSSOVER_RECORDS)
    _, why = _read(path)
    count = sum(1 for _ in records.rglob("*.json")) if records.is_dir() else 0
    found = ("there are no records of version 2 of the crossover study" if count == 0 else
             f"version 2 of the crossover study has {count:,} record{'s' if count > 1 else ''} in "
             f"`{shown_path(records)}`")
    return (f"`{shown_path(path)}` is {why}, so this section has no study to read. Here {found}, one per finished "
            "run; `make study` re-uses them, trains the runs that have none (hours on two CPU cores for the whole "
            "study; README) and writes the summary once every run has a record.")


def _series(values: Sequence) -> str:
    values = [f"{v:,}" if isinstance(v, int) else str(v) for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + f" and {values[-1]}"


def _cell_name(cell: Mapping) -> str:
    return f"{cell['teachers']}/{cell['task_set']}"


def _cell_words(cell: Mapping) -> str:
    labels = cell["labels"]
    shown = f"{len(labels)} labels" + (f": {', '.join(labels)}" if len(labels) <= 6 else "")
    tuned = "" if cell.get("tuned", True) else ", settings chosen on a tuned cell of its task set"
    return (f"{_cell_name(cell)} ({shown}) at N = {_series(cell['pools'])}, seeds {_series(cell['seeds'])}"
            f"{tuned}")


def crossover_source(summary: Mapping, preset: str, path: str | Path | None = None) -> str:
    """Which study the chapter reads: the committed version 2 (its preset, the commit that fixed its protocol, its
    records and the commits that made them, whether the protocol changed after a test number was seen, its
    cells and arms), not a run of this notebook."""
    p, cost = summary["protocol"], summary["cost"]
    commits = summary["commits"]
    changes = p.get("changes") or []
    changed = ("no change after a test number was seen" if not changes else
               f"changed after a test number was seen: {'; '.join(changes)}")
    arms = ", ".join(f"`{a}`" for a in summary["arms"])
    own = [a for a in ("kd-tol", "kd-eq9") if a in summary["arms"]]
    if own:
        arms += (f" ({', '.join(f'`{a}`' for a in own)}: KD at the tolerance net's or the Eq. 9 net's training MACs, "
                 f"run only where those differ from `amalgamation-b4`'s by more than {100 * p['budget_tolerance']:g} %; "
                 "elsewhere that net is paired with `kd`)")
    return (f"From `{shown_path(Path(path or CROSSOVER_JSON))}`: version {summary['version']} of the committed "
            f"crossover study, preset {summary['preset']}, its protocol fixed at commit {p['commit']} before its "
            f"first run (code path {p['code_path']}), {changed}. It reads {len(summary['runs']):,} runs at their "
            f"chosen settings, out of {cost['records']:,} records with the tuning grids, made by "
            f"commit{'s' if len(commits) > 1 else ''} {_series(commits)}. Cells: "
            f"{'; '.join(_cell_words(c) for c in summary['cells'])}. Arms: {arms}. Every arm but the teachers sees exactly "
            f"the N pool images of its seed; the amalgamation arms' blocks train on the first "
            f"{100 * (1 - p['heldout_share']):g} % and hold the last {100 * p['heldout_share']:g} % out for the "
            f"branch-out rules' losses, and fine-tuning uses all N. Not a run of this notebook (preset {preset}).")


def cell_pairs(summary: Mapping, cell: str, a: str, b: str) -> list[dict]:
    """The verdict's entries of the pair a − b in ``cell`` ("pair-1/all"), by pool."""
    return sorted((e for e in summary["paired"] if f"{e['teachers']}/{e['task_set']}" == cell and e["a"] == a
                   and e["b"] == b and e["kind"] == "verdict"), key=lambda e: e["pool"])


def words_by_pool(entries: Sequence[Mapping]) -> dict[str, list[int]]:
    """The pools of a pair's entries under each of the study's words (ahead, behind, equivalent, inconclusive)."""
    return {w: [e["pool"] for e in entries if e["word"] == w] for w in MEANING}


def start_pays(entries: Sequence[Mapping], a: str, b: str, budget: str) -> str:
    """One sentence: where, by the study's words for the pair a − b, the block-wise start pays, costs, makes no
    difference or is undecided, and the seeds that diverged (counted with their start's mAP, as the study
    counts them)."""
    if not entries:
        return f"{budget}, the study has no pair `{a}` − `{b}` in this cell."
    pools = words_by_pool(entries)
    said = [f"{MEANING[w]} at N = {_series(pools[w])} ({w}{NOTES.get(w, '')})" for w in MEANING if pools[w]]
    failed = [f"N = {e['pool']:,}, seed{'s' if len(e['failed']) > 1 else ''} {_series(e['failed'])}"
              for e in entries if e.get("failed")]
    diverged = f"; a run diverged at {'; '.join(failed)}, and counts with the mAP of its start" if failed else ""
    return f"{budget} (`{a}` − `{b}`), the block-wise start {', '.join(said)}{diverged}."


def crossover_explanation(summary: Mapping) -> str:
    """Where, by the study's own words, the block-wise start pays against KD: per cell, the primary pair
    (``amalgamation-b4`` − ``kd``: the same network, images and training MACs) and the pair at twice them
    (``amalgamation-b4-2x`` − ``kd-2x``), each pool read with the word the study gives it (Holm-adjusted
    intervals, the equivalence margin of its protocol)."""
    margin = summary["protocol"]["margin"]
    text = []
    for cell in summary["cells"]:
        name = _cell_name(cell)
        head = f"**{name}** ({len(cell['labels'])} labels):"
        family = next((e["family_size"] for e in summary["paired"] if f"{e['teachers']}/{e['task_set']}" == name), 0)
        if not family:
            text.append(f"{head} the study has no paired runs in this cell.")
            continue
        same = start_pays(cell_pairs(summary, name, *PRIMARY), *PRIMARY, "At the same network size, images and "
                          "training MACs")
        twice = start_pays(cell_pairs(summary, name, *TWICE), *TWICE, "At twice the training MACs")
        text.append(f"{head} {same} {twice} Words as the study gives them: 95 % intervals Holm-adjusted for the "
                    f"cell's {family} pairs, equivalent within ±{margin:g} mAP.")
    return " ".join(text)


def decision_frame(summary: Mapping) -> pd.DataFrame:
    """The study's decision table: per cell, pool and question, the best arm by mean test mAP with its numbers, the
    runner-up and the word of their pair."""
    return pd.DataFrame([{"cell": f"{d['teachers']}/{d['task_set']}", "N": d["pool"],
                          "question": CRITERIA[d["criterion"]], "best choice": ARM_LABELS.get(d["choice"], d["choice"]),
                          "test mAP": d["test_map"], "parameters": d["params"],
                          "inference MMAC / image": d["inference_macs"] / 1e6, "training TMAC": d["train_macs"] / 1e12,
                          "runner-up": ARM_LABELS.get(d["runner_up"], d["runner_up"]) if d["runner_up"] else None,
                          "word against it": d["word"]} for d in summary["decision"]])


def arm_table(summary: Mapping) -> pd.DataFrame:
    """Per cell, pool and arm: mean test mAP over the seeds (a run that diverged counts with its start's mAP, as
    in the study's pairs), how many finished, and the mean parameters, inference MACs (10^6 per image), training
    MACs (10^12) and images seen."""
    groups: dict = {}
    for r in summary["runs"]:
        groups.setdefault((f"{r['teachers']}/{r['task_set']}", r["pool"], r["arm"]), []).append(r)
    order = {a: i for i, a in enumerate(summary["arms"])}
    rows = []
    for (cell, pool, arm), runs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 99))):
        scored = [score(r) for r in runs if score(r) is not None]
        rows.append({"cell": cell, "N": pool, "arm": ARM_LABELS.get(arm, arm),
                     "test mAP": statistics.fmean(scored) if scored else float("nan"),
                     "finished": f"{sum(r['test_map'] is not None for r in runs)} of {len(runs)}",
                     **{k: statistics.fmean(r[key] for r in runs) / scale for k, key, scale in (
                         ("parameters", "params", 1), ("inference MMAC / image", "inference_macs", 1e6),
                         ("training TMAC", "train_macs", 1e12), ("images seen", "images_seen", 1))}})
    return pd.DataFrame(rows)


def options_figure(table: pd.DataFrame, path=None):
    """Per cell (a row of panels): test mAP against parameters, inference MACs per image and training MACs, one
    colour per arm and one point per pool (the pool written beside it); the teachers, which train nothing, are
    a dashed line at their test mAP."""
    import matplotlib.pyplot as plt
    columns = ("parameters", "inference MMAC / image", "training TMAC")
    cells = list(dict.fromkeys(table["cell"]))
    fig, axes = plt.subplots(len(cells), len(columns), figsize=(4.2 * len(columns), 3.3 * len(cells)),
                             sharey="row", squeeze=False)
    teachers = ARM_LABELS["teachers"]
    for row, cell in zip(axes, cells):
        at = table[table["cell"] == cell]
        for ax, column in zip(row, columns):
            for arm, rows in at.groupby("arm", sort=False):
                if arm == teachers:
                    ax.axhline(rows["test mAP"].mean(), color="k", ls="--", lw=1, label=arm)
                    continue
                ax.plot(rows[column], rows["test mAP"], marker="o", ls="", label=arm)
                for _, r in rows.iterrows():
                    ax.annotate(f"{r['N']:,}", (r[column], r["test mAP"]), fontsize=6, xytext=(2, 2),
                                textcoords="offset points")
            ax.set_xscale("log")
            ax.set_xlabel(column + " (log scale)")
            ax.grid(alpha=0.3)
        row[0].set_ylabel(f"{cell}: test mAP (%)", fontsize=8)
        row[0].legend(fontsize=6)
    axes[0][0].set_title("Accuracy against size and compute; beside a point, its pool N", fontsize=9, loc="left")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=130)
    return fig


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
