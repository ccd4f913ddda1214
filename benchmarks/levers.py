"""The lever table of docs/levers.md: what keeps the shared trunk deep, measured on the validation split.

Every variant amalgamates the same quick-preset teachers (C = A) with some preset fields changed, and is
evaluated on the labelled validation split (never the test split): the branch-out rows b1..b4 (every task
at the end of stage k, before fine-tuning), Eq. 9's choices, and the seconds of block training. A second
table sweeps the branch-out tolerance (kalib.branch.tolerant_branch_points) over one variant's converged
losses: the AP of a branch at block S is the entangled forward of that block, so the TargetNet before
fine-tuning needs no new training, and its size comes from assembling it.

    python benchmarks/levers.py --teachers runs/quick/table1/teachers --out runs/levers

Finished variants are re-used (kalib.amalgamate.run); the table goes to stdout and --json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np
from kalib.amalgamate import run
from kalib.branch import assemble, count_parameters, tolerant_branch_points
from kalib.config import override
from kalib.experiments import load_blocks, load_variant
from kalib.presets import get_preset

VARIANTS = {   # name -> preset overrides (``--set`` syntax) against the quick preset
    "1-epoch": ["block_epochs=[1,1,1,1,1,1,1,1]"],
    "deep-1-8": ["block_epochs=[1,1,2,2,4,4,8,8]"],
    "deep-2-10": ["block_epochs=[2,2,3,3,6,6,10,10]"],
    "deep-1-8-3500": ["block_epochs=[1,1,2,2,4,4,8,8]", "block_images=3500"],
}
TOLERANCES = (0.0, 0.002, 0.005, 0.01, 0.02, 0.05)


def variant_row(record: dict) -> dict:
    """One row of the lever table from a run record evaluated on the validation split."""
    chosen = record["chosen_block"].values()
    return {"teacher mAP": record["teacher_ap"]["mAP"],
            **{f"{stage}": value for stage, value in record["stage_map"].items()},
            "Eq. 9 blocks": {b: sum(c == b for c in chosen) for b in sorted(set(chosen))},
            "block seconds": record["seconds"]["blocks"]}


def tolerance_sweep(record: dict, student, filters, teachers, plan, tolerances=TOLERANCES) -> list[dict]:
    """For each tolerance: chosen blocks, validation mAP of the TargetNet before fine-tuning (from the
    branch-out curves) and its parameters against the teachers'."""
    names = record["blocks"]
    tasks = record["tasks"]
    losses = np.array([[record["converged_loss"][t][b] for t in tasks] for b in names])
    teachers_params = sum(count_parameters(t) for t in teachers)
    rows = []
    for tol in tolerances:
        points = tolerant_branch_points(losses, tol)
        ap = [record["branch_ap"][t][names[s - 1]] for t, s in zip(tasks, points)]
        params = count_parameters(assemble(student, filters, teachers, plan, points))
        rows.append({"tolerance": tol, "mAP": round(float(np.mean(ap)), 3),
                     "blocks": {b: sum(names[s - 1] == b for s in points) for b in names if b in
                                {names[s - 1] for s in points}},
                     "params": params, "params / teachers": round(params / teachers_params, 3)})
    return rows


def markdown(rows: dict[str, dict], sweep: list[dict], sweep_of: str) -> str:
    stages = [k for k in next(iter(rows.values())) if re.fullmatch(r"b\d+", k)]
    lines = ["| variant | teachers | " + " | ".join(stages) + " | Eq. 9 blocks | block training (s) |",
             "|---|---:|" + "---:|" * len(stages) + "---|---:|"]
    for name, r in rows.items():
        eq9 = ", ".join(f"{b}×{n}" for b, n in r["Eq. 9 blocks"].items())
        lines.append(f"| {name} | {r['teacher mAP']:.1f} | " + " | ".join(f"{r[s]:.1f}" for s in stages)
                     + f" | {eq9} | {r['block seconds']:.0f} |")
    lines += ["", f"Branch-out tolerance over the converged losses of '{sweep_of}' (validation mAP before "
              "fine-tuning, TargetNet parameters):", "",
              "| tolerance (nats) | mAP | blocks chosen | parameters | / teachers |", "|---:|---:|---|---:|---:|"]
    for r in sweep:
        blocks = ", ".join(f"{b}×{n}" for b, n in r["blocks"].items())
        lines.append(f"| {r['tolerance']} | {r['mAP']:.1f} | {blocks} | {r['params']:,} | {r['params / teachers']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teachers", type=Path, default=Path("runs/quick/table1/teachers"))
    parser.add_argument("--out", type=Path, default=Path("runs/levers"))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated names of VARIANTS")
    parser.add_argument("--sweep", default="deep-1-8", help="variant whose losses the tolerance sweep uses")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    base = get_preset("quick")
    bench = load_variant(base, "table1")
    rows, sweep = {}, []
    for name in [v for v in VARIANTS if v in args.variants.split(",")]:
        preset = override(base, VARIANTS[name])
        out = args.out / name
        record = run(bench, preset, args.teachers, out, eval_split="val", log=lambda m: print(m, file=sys.stderr))
        rows[name] = variant_row(record)
        if name == args.sweep:
            student, filters, teachers, plan = load_blocks(preset, args.teachers, out)
            sweep = tolerance_sweep(record, student, filters, teachers, plan)
        print(markdown(rows, sweep, args.sweep), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"variants": rows, "tolerance_sweep": sweep}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
