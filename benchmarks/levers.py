"""The lever table of docs/levers.md: what keeps the shared trunk deep, measured on the validation split.

Every lever amalgamates the same quick-preset teachers (C = A) with some preset fields changed, and is
evaluated on the labelled validation split, never the test split: the branch-out rows b1..b4 (every task
at the end of stage k, before fine-tuning), Eq. 9's choices, the fine-tuned TargetNet of the lever's
branch-out and its size. Levers that differ only after block training re-use the blocks of the lever
named in ``blocks_from``. A second table sweeps the branch-out tolerance
(kalib.method.branch.tolerant_branch_points) over one lever's converged losses: the AP of a branch at block S is
the entangled forward of that block, so the TargetNet before fine-tuning needs no new training, and its
size comes from assembling it.

    python benchmarks/levers.py --teachers runs/quick/table1/teachers --out runs/levers --json docs/levers.json

Finished levers are re-used (kalib.runs.amalgamation.run); the tables go to stdout as markdown. Seconds are not
reported: the levers ran under different loads (several at once, one thread each); docs/performance.md
measures speed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kalib.method.branch import tolerant_branch_points
from kalib.method.targetnet import assemble, count_parameters
from kalib.method.teachers import evaluate, train_teacher
from kalib.runs.amalgamation import run
from kalib.runs.checkpoints import load_model
from kalib.runs.config import override
from kalib.runs.experiments import load_blocks, load_variant
from kalib.runs.parallel import run_parallel
from kalib.runs.presets import get_preset

PAPER_FINETUNE = ("finetune.epochs=1", "finetune.lr=0.01", "finetune_images=4000")   # the preset before
GENERIC = ("student_init=generic", "branch_tolerance=0.0")
DEEP_1_8 = ("block_epochs=[1,1,2,2,4,4,8,8]", *GENERIC)
DEEP_2_10 = ("block_epochs=[2,2,3,3,6,6,10,10]", *GENERIC)


def finetuning(epochs: int, lr: float) -> tuple[str, ...]:
    """Overrides for fine-tuning ``epochs`` at ``lr`` over 7k pool images."""
    return (f"finetune.epochs={epochs}", f"finetune.lr={lr}", "finetune_images=7000")


@dataclass(frozen=True)
class Lever:
    what: str                               # the lever, in words
    sets: tuple[str, ...] = ()              # quick-preset overrides (``--set`` syntax)
    branch_at: str | None = None            # every task at this block instead of the preset's branch-out
    blocks_from: str | None = None          # re-use the trained blocks of this lever (same block settings)


LEVERS = {
    "one-epoch": Lever("paper: generic start, 1 epoch per block, Eq. 9, fine-tuning 1 epoch at lr 0.01 (the "
                       "preset before)", ("block_epochs=[1,1,1,1,1,1,1,1]", *GENERIC, *PAPER_FINETUNE)),
    "deep-1-8": Lever("generic start, epochs 1,1,2,2,4,4,8,8", (*DEEP_1_8, *PAPER_FINETUNE)),
    "deep-2-10": Lever("generic start, epochs 2,2,3,3,6,6,10,10", (*DEEP_2_10, *PAPER_FINETUNE)),
    "deep-1-8-b4-ft3": Lever("deep-1-8 at b4_2, fine-tuning 3 epochs at lr 0.01 over 7k",
                             (*DEEP_1_8, *finetuning(3, 0.01)), "b4_2", "deep-1-8"),
    "deep-1-8-b4-ft-lr05": Lever("deep-1-8 at b4_2, fine-tuning 3 epochs at lr 0.05 over 7k",
                                 (*DEEP_1_8, *finetuning(3, 0.05)), "b4_2", "deep-1-8"),
    "deep-2-10-b4-ft6": Lever("deep-2-10 at b4_2, fine-tuning 6 epochs at lr 0.05 over 7k",
                              (*DEEP_2_10, *finetuning(6, 0.05)), "b4_2", "deep-2-10"),
    "deep-2-10-b41-ft6": Lever("deep-2-10 at b4_1 (each teacher keeps its own b4_2), fine-tuning as above",
                               (*DEEP_2_10, *finetuning(6, 0.05)), "b4_1", "deep-2-10"),
    "tmean-one-epoch": Lever("start from the mean of the teachers' weights, 1 epoch per block, at b4_2, "
                             "fine-tuning 3 epochs at lr 0.05 over 7k",
                             ("block_epochs=[1,1,1,1,1,1,1,1]", "branch_tolerance=0.0"), "b4_2"),
    "deep-1-8-tmean": Lever("start from the mean of the teachers' weights, epochs 1,1,2,2,4,4,8,8, at b4_2, "
                            "fine-tuning 3 epochs at lr 0.05 over 7k", ("branch_tolerance=0.0",), "b4_2"),
    "preset": Lever("the quick preset: as deep-1-8-tmean, branch tolerance 0.02 (and its Eq. 9 TargetNet)",
                    (), None, "deep-1-8-tmean"),
}
TOLERANCES = (0.0, 0.002, 0.005, 0.01, 0.015, 0.02, 0.05)


def lever_row(record: dict) -> dict:
    """One row of the lever table from a run record evaluated on the validation split."""
    chosen = record["chosen_block"].values()
    row = {"teachers": record["teacher_ap"]["mAP"], **record["stage_map"],
           "Eq. 9 blocks": {b: sum(c == b for c in chosen) for b in sorted(set(chosen))},
           "TargetNet": record["target_ap"]["mAP"],
           "params / teachers": round(record["params"]["targetnet"] / record["params"]["teachers"], 3),
           "branch": sorted(set(record["branch_block"].values()))}
    if "eq9" in record:
        row["Eq. 9 TargetNet"] = record["eq9"]["target_ap"]["mAP"]
    return row


def tolerance_sweep(record: dict, student, filters, teachers, plan, tolerances=TOLERANCES) -> list[dict]:
    """For each tolerance: chosen blocks, validation mAP of the TargetNet before fine-tuning (from the
    branch-out curves) and its parameters against the teachers'."""
    names, tasks = record["blocks"], record["tasks"]
    losses = np.array([[record["converged_loss"][t][b] for t in tasks] for b in names])
    teachers_params = sum(count_parameters(t) for t in teachers)
    rows = []
    for tol in tolerances:
        points = tolerant_branch_points(losses, tol)
        ap = [record["branch_ap"][t][names[s - 1]] for t, s in zip(tasks, points)]
        params = count_parameters(assemble(student, filters, teachers, plan, points))
        chosen = [names[s - 1] for s in points]
        rows.append({"tolerance": tol, "mAP": round(float(np.mean(ap)), 3),
                     "blocks": {b: chosen.count(b) for b in names if b in chosen},
                     "params": params, "params / teachers": round(params / teachers_params, 3)})
    return rows


def teacher_lr_sweep(bench, teachers_dir: Path, lrs) -> list[dict]:
    """Both teachers of the quick preset trained from the generic checkpoint at each learning rate (the
    preset's epochs, batch and seeds), scored on the validation split; run side by side in worker processes.
    The preset's teacher learning rate is the one with the best mean validation mAP of the two."""
    base = get_preset("quick")
    generic = load_model(Path(teachers_dir) / f"generic-{base.nets.arch}.pt")[0]

    def job(lr, n):
        labels = base.labels.groups[n - 1]
        idx = bench.label_indices(labels)
        schedule = dataclasses.replace(base.pretraining.teacher, lr=lr)
        teacher = train_teacher(generic, bench.train_images, bench.train_labels[:, idx], schedule, base.seed + n)
        return evaluate(teacher, bench.val_images, bench.val_labels[:, idx], labels)["mAP"]
    jobs = [(lr, n) for lr in lrs for n in (1, 2)]
    maps = run_parallel([lambda lr=lr, n=n: job(lr, n) for lr, n in jobs])
    return [{"lr": lr, "epochs": base.pretraining.teacher.epochs,
             **{f"teacher {n} val mAP": round(m, 2) for (l2, n), m in zip(jobs, maps) if l2 == lr},
             "val mAP": round(sum(m for (l2, _), m in zip(jobs, maps) if l2 == lr) / 2, 2)} for lr in lrs]


def markdown(rows: dict[str, dict], sweep: list[dict], sweep_of: str) -> str:
    stages = [k for k in next(iter(rows.values())) if re.fullmatch(r"b\d+", k)]
    lines = ["| lever | what | teachers | " + " | ".join(stages) + " | Eq. 9 blocks | branch | TargetNet "
             "(fine-tuned) | params / teachers |",
             "|---|---|---:|" + "---:|" * len(stages) + "---|---|---:|---:|"]
    for name, r in rows.items():
        eq9 = ", ".join(f"{b}×{n}" for b, n in r["Eq. 9 blocks"].items())
        target = f"{r['TargetNet']:.1f}" + (f" (Eq. 9: {r['Eq. 9 TargetNet']:.1f})" if "Eq. 9 TargetNet" in r else "")
        lines.append(f"| {name} | {LEVERS[name].what} | {r['teachers']:.1f} | "
                     + " | ".join(f"{r[s]:.1f}" for s in stages)
                     + f" | {eq9} | {', '.join(r['branch'])} | {target} | {r['params / teachers']:.2f} |")
    if sweep:
        lines += ["", f"Branch-out tolerance over the converged losses of `{sweep_of}` (validation mAP before "
                  "fine-tuning, TargetNet parameters):", "",
                  "| tolerance (nats) | mAP | blocks chosen | parameters | / teachers |", "|---:|---:|---|---:|---:|"]
        for r in sweep:
            blocks = ", ".join(f"{b}×{n}" for b, n in r["blocks"].items())
            lines.append(f"| {r['tolerance']} | {r['mAP']:.1f} | {blocks} | {r['params']:,} | "
                         f"{r['params / teachers']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teachers", type=Path, default=Path("runs/quick/table1/teachers"))
    parser.add_argument("--out", type=Path, default=Path("runs/levers"))
    parser.add_argument("--levers", default=",".join(LEVERS), help="comma-separated names of LEVERS")
    parser.add_argument("--sweep", default="preset", help="lever whose losses the tolerance sweep uses")
    parser.add_argument("--teacher-lrs", default="", help="also sweep the teachers' learning rate, e.g. 0.2,0.3,0.4")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    base = get_preset("quick")
    bench = load_variant(base, "table1")
    rows, sweep = {}, []
    for name in [n for n in LEVERS if n in args.levers.split(",")]:     # --levers "": none
        lever = LEVERS[name]
        preset = override(base, lever.sets)
        out = args.out / name
        source = args.out / (lever.blocks_from or name) / "blocks"
        if lever.blocks_from and not (out / "blocks").is_dir() and source.is_dir():
            shutil.copytree(source, out / "blocks", ignore=shutil.ignore_patterns("finetune-*"))
        record = run(bench, preset, args.teachers, out, branch_at=lever.branch_at, eval_split="val",
                     log=lambda m: print(m, file=sys.stderr))
        rows[name] = lever_row(record)
        if name == args.sweep:
            sweep = tolerance_sweep(record, *load_blocks(preset, args.teachers, out))
        print(markdown(rows, sweep, args.sweep), flush=True)
    teacher_lrs = teacher_lr_sweep(bench, args.teachers, [float(v) for v in args.teacher_lrs.split(",")]) \
        if args.teacher_lrs else []
    if teacher_lrs:
        print("\nThe two teachers by learning rate, validation mAP:\n\n"
              "| lr | epochs | teacher 1 | teacher 2 | mean |\n|---:|---:|---:|---:|---:|\n"
              + "\n".join(f"| {r['lr']} | {r['epochs']} | {r['teacher 1 val mAP']:.1f} | {r['teacher 2 val mAP']:.1f} "
                          f"| {r['val mAP']:.1f} |" for r in teacher_lrs), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"levers": rows, "tolerance_sweep": sweep, "teacher_lr": teacher_lrs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
