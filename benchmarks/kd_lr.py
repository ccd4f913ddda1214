"""Choose Table 1's KD learning rate on the validation split: the crossover study's ``kd`` arm at the full
pool (every training canvas, seed 0), which is Table 1's KD (the student's start with the teachers' head rows,
trained at the training MACs of the amalgamation arm, Table 1's tolerance net), over the study's KD grid,
grown until its best point is inside (docs/levers.md).

    python benchmarks/kd_lr.py --out runs/crossover --teachers runs/quick/table1/teachers

Its runs are crossover records (``--records``, default figures/crossover/records), so a rerun re-uses them;
it prints the grid and the chosen learning rate, to be set as the preset's ``baselines.kd.lr``.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from kalib.runs import crossover


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--out", type=Path, default=Path("runs/crossover"))
    parser.add_argument("--records", type=Path, default=Path("figures/crossover/records"))
    parser.add_argument("--teachers", type=Path, default=None)
    args = parser.parse_args()
    study = crossover.STUDIES[args.preset]
    full = dataclasses.replace(study, pools=(1,), seeds=study.seeds[:1], arms=("amalgamation", "kd"))
    ctx = crossover.load_context(full, args.out, args.records, args.teachers)
    pool = len(ctx.train_idx)
    ctx = dataclasses.replace(ctx, study=dataclasses.replace(full, pools=(pool,)))
    for stage in crossover.jobs(ctx, [pool], ctx.study.seeds, ctx.study.arms):   # amalgamation first: KD's budget
        records = [r for job in stage for r in crossover.run_job(ctx, job)]
    grid = {r["setting"]["lr"]: r["val_map"] for r in records}
    print(f"| KD lr (N = {pool}, seed {ctx.study.seeds[0]}) | validation mAP |\n|---|---|")
    for lr, val in sorted(grid.items()):
        print(f"| {lr:g} | {'diverged' if val is None else f'{val:.2f}'} |")
    print(f"chosen: {crossover.chosen_lr(ctx, 'kd', pool):g}")


if __name__ == "__main__":
    main()
