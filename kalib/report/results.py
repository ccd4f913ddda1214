"""Tables 1–3 and the numbers behind Fig. 3, built from finished runs (``run.json`` records), and
``results.json``, the file every committed figure and table is drawn from.

Row names follow the paper (Tab. 1): ``Teacher``, ``Target b1`` … ``Target b4`` (every task branches
out at the end of stage k, AP measured during block-wise training, i.e. before fine-tuning, as in the
paper), ``Target`` (Eq. 9 branch-out, fine-tuned), ``Target (tolerance t)`` (kalib's deeper branch-out
where the preset names one, fine-tuned), ``Target-3`` (three teachers), ``TargetDenseNet``.
``Teacher-3`` and ``TeacherDenseNet`` give the teachers those two rows learned from. Beyond the paper,
the baselines ``Ensemble``, ``KD`` and ``Supervised`` (:mod:`kalib.method.baselines`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..metrics import mean_of, topk_metrics

TABLE3_KEYS = {"CP": "C-P", "CR": "C-R", "CF1": "C-F1", "OP": "O-P", "OR": "O-R", "OF1": "O-F1"}

# Paper, Tab. 1 (VOC 2007, ResNet-50 / DenseNet) and Tab. 2 (VOC 2012): mAP of the rows we reproduce;
# Tab. 3 (MS-COCO, top-3). Copied from the paper's tables for side-by-side trends. The paper's TargetNets
# branch out by Eq. 9, so its "Target" row is kalib's "Target (Eq. 9)"; its Target-3 and TargetDenseNet are
# compared with kalib's rows of the same name, whatever branch-out rule kalib's side runs use (said in the
# row's name).
PAPER_MAP = {
    "table1": {"Teacher": 92.5, "Target b1": 93.0, "Target b2": 92.8, "Target b3": 92.1, "Target b4": 93.4,
               "Target (Eq. 9)": 93.5, "Target-3": 93.8, "TargetDenseNet": 93.6},
    "table2": {"Target (Eq. 9)": 92.5, "Target-3": 93.2, "TargetDenseNet": 93.3},
}
PAPER_TABLE3 = {
    "Target (Eq. 9)": {"C-P": 79.8, "C-R": 63.5, "C-F1": 69.4, "O-P": 83.9, "O-R": 65.7, "O-F1": 75.0},
    "TargetDenseNet": {"C-P": 80.5, "C-R": 64.0, "C-F1": 69.3, "O-P": 85.4, "O-R": 66.9, "O-F1": 75.2},
}
EQ9_ROW = "Target (Eq. 9)"          # the paper's "Target": two teachers, Eq. 9's branch-out, fine-tuned


def rule(record: dict) -> str:
    """The branch-out rule of a run's TargetNet as a row name gives it: ``Eq. 9``, ``tolerance 0.02`` (beyond the
    paper: the deepest block within that many nats of the minimum) or ``at b2_1`` (every task at one block)."""
    if record.get("branch_at"):
        return f"at {record['branch_at']}"
    tolerance = record.get("branch_tolerance", 0.0)
    return "Eq. 9" if not tolerance else f"tolerance {tolerance:g}"


def target_row(base: str, record: dict) -> str:
    """A TargetNet's row name with its rule: ``Target (Eq. 9)``, ``Target-3 (tolerance 0.02)``, ..."""
    return f"{base} ({rule(record)})"


def paper_value(paper: dict, row: str) -> float:
    """The paper's number for a row: its own name, or for a side run (``Target-3 (...)``, ``TargetDenseNet
    (...)``) the paper's row of that name; NaN where the paper has none (kalib's tolerance rows, baselines)."""
    base = row.split(" (")[0]
    return paper.get(row, paper.get(base, np.nan) if base in ("Target-3", "TargetDenseNet") else np.nan)


def stage_end_blocks(block_names) -> dict[str, str]:
    """``{"b1": "b1_2", "b2": "b2_2", ...}``: the last block of every stage (names ``b<stage>_<i>``)."""
    ends: dict[str, str] = {}
    for name in block_names:
        match = re.fullmatch(r"(b\d+)_\d+", name)
        if match is None:
            raise ValueError(f"block name '{name}' is not of the form b<stage>_<index>")
        ends[match.group(1)] = name
    return ends


def table_map(values: dict) -> float:
    """The mAP of a record's per-label APs (``{label: AP, ..., "mAP": ...}``) as the tables show it: recomputed
    from the labels' APs by kalib's one rule (:func:`kalib.metrics.mean_of`), not the record's own ``mAP``, which
    may differ in the last digit (it was taken before the labels' APs were rounded)."""
    return mean_of([v for k, v in values.items() if k != "mAP"])


def _ap_row(values: dict, labels) -> dict:
    """The APs of ``labels`` (those the record has) and their mAP, recomputed by kalib's one rule
    (:func:`kalib.metrics.mean_of`: a label without positives, NaN, is left out of the mean)."""
    row = {label: float(values[label]) for label in labels if label in values}
    row["mAP"] = mean_of([row[label] for label in labels if label in row])
    return row


def table_rows(run2: dict, run3: dict | None = None, run_dense: dict | None = None,
               baselines: dict | None = None) -> dict[str, dict]:
    """Rows of Table 1 (or 2): row name -> {label: AP (%), ..., "mAP": mean}.

    ``run2`` is the two-teacher C = A run (its TargetNet named by its rule, and ``Target (Eq. 9)`` too where
    that rule is not Eq. 9); ``run3`` and ``run_dense`` (optional) add Target-3 and TargetDenseNet (named by
    their rule) with the teachers they learned from; ``baselines`` (optional, row -> record with
    ``test_ap``) adds the rows ``Ensemble``, ``KD`` and ``Supervised`` (:mod:`kalib.method.baselines`)."""
    labels = run2["tasks"]
    rows = {"Teacher": _ap_row(run2["teacher_ap"], labels)}
    for name in ("Ensemble", "Merge", "KD", "Supervised"):
        if name in (baselines or {}):
            rows[name] = _ap_row(baselines[name]["test_ap"], labels)
    for stage, block in stage_end_blocks(run2["blocks"]).items():
        rows[f"Target {stage}"] = _ap_row({t: run2["branch_ap"][t][block] for t in labels}, labels)
    if "eq9" in run2:     # the preset branches out by a loss tolerance: the paper's Eq. 9 TargetNet first
        rows[EQ9_ROW] = _ap_row(run2["eq9"]["target_ap"], labels)
    rows[target_row("Target", run2)] = _ap_row(run2["target_ap"], labels)
    for base, teachers, record in (("Target-3", "Teacher-3", run3), ("TargetDenseNet", "TeacherDenseNet", run_dense)):
        if record is not None:
            rows[target_row(base, record)] = _ap_row(record["target_ap"], labels)
            rows[teachers] = _ap_row(record["teacher_ap"], labels)
    return rows


def table3_row(scores, targets, k: int = 3) -> dict[str, float]:
    """Tab. 3 columns (top-k C-P, C-R, C-F1, O-P, O-R, O-F1 in %) of one network's scores."""
    metrics = topk_metrics(np.asarray(scores), np.asarray(targets), k=k)
    return {TABLE3_KEYS[key]: float(metrics[key]) for key in TABLE3_KEYS}


def fig3_data(pair_runs: dict[str, dict], tasks: dict[str, list[str]] | None = None) -> dict[str, dict]:
    """pair name -> {"C": the tasks the student was trained for, "tasks": task -> {teacher, teacher_ap,
    ap_by_block, loss_by_block, chosen_block, best_ap_block}}.

    ``pair_runs``: pair name -> the record of the run that drew it: the pair's own two-task run (Fig. 3 as
    the paper runs it), or the one C = A run for every pair, with ``tasks`` naming each pair's tasks."""
    out = {}
    for pair, record in pair_runs.items():
        names = record["tasks"] if tasks is None else tasks[pair]
        out[pair] = {"C": list(record["tasks"]),
                     "tasks": {t: {"teacher": record["task_teacher"][record["tasks"].index(t)],
                                   "teacher_ap": record["teacher_ap"][t],
                                   "ap_by_block": record["branch_ap"][t],
                                   "loss_by_block": record["converged_loss"][t],
                                   "chosen_block": record["chosen_block"][t],
                                   "branch_block": record["branch_block"][t],
                                   "best_ap_block": record["ap_best_block"][t]} for t in names}}
    return out


def table_frame(rows: dict[str, dict], labels=None, paper: dict | None = None) -> pd.DataFrame:
    """Rows as a DataFrame (labels in ``labels`` order, then mAP; one decimal), with the paper's mAP
    of the same row in a last column ``paper mAP`` when ``paper`` is given."""
    frame = pd.DataFrame.from_dict(rows, orient="index")
    cols = [c for c in (labels or frame.columns) if c in frame.columns and c != "mAP"] + ["mAP"]
    frame = frame[cols].round(1)
    if paper is not None:
        frame["paper mAP"] = [paper_value(paper, r) for r in frame.index]
    return frame


def efficiency_frame(efficiency: dict[str, dict], rows: dict[str, dict] | None = None) -> pd.DataFrame:
    """The efficiency table: per network its mAP (from ``rows`` where the row has one), parameters and MACs
    (also relative to the Ensemble, the teachers the TargetNet replaces), CPU latency of one image and time
    per image in a batch."""
    base = efficiency.get("Ensemble")
    frame = pd.DataFrame({
        name: {"mAP": (rows or {}).get(name, {}).get("mAP", np.nan), "parameters": e["params"],
               "x Ensemble params": e["params"] / base["params"] if base else np.nan,
               "MMACs / image": e["macs"] / 1e6, "x Ensemble MACs": e["macs"] / base["macs"] if base else np.nan,
               "latency ms (batch 1)": e["latency_ms"], "ms / image (batch 64)": e["ms_per_image"]}
        for name, e in efficiency.items()}).T
    frame["parameters"] = frame["parameters"].astype(int)
    return frame.round({"mAP": 1, "x Ensemble params": 2, "MMACs / image": 1, "x Ensemble MACs": 2,
                        "latency ms (batch 1)": 2, "ms / image (batch 64)": 3})


def write_table(frame: pd.DataFrame, path_stem: str | Path, title: str = "",
                decimals: bool = True) -> tuple[Path, Path]:
    """``<stem>.csv`` and ``<stem>.md`` (a pipe table; missing values as blanks): numbers with one decimal,
    or as they are (``decimals=False``, for a frame already rounded column by column)."""
    stem = Path(path_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = stem.with_suffix(".csv"), stem.with_suffix(".md")
    frame.to_csv(csv_path, float_format="%.1f" if decimals else None)
    header = f"{title}\n\n" if title else ""
    cells = frame.astype(object).where(frame.notna(), None)
    md_path.write_text(header + cells.to_markdown(floatfmt=".1f" if decimals else "g", missingval="") + "\n")
    return csv_path, md_path


def write_results(path: str | Path, **sections) -> Path:
    """Merge ``sections`` (table1, table2, table3, fig3, params, timings_s, ...) into ``results.json``."""
    path = Path(path)
    data = json.loads(path.read_text()) if path.is_file() else {}
    data.update(sections)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    tmp.replace(path)
    return path
