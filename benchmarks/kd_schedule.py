"""Tune the KD baseline's learning rate on the validation split, as carefully as the student's settings were
(docs/levers.md): the quick preset's teachers, the student's start, the cost-matched epochs of
``kalib.method.baselines.kd_epochs``, one KD run per learning rate, side by side on the CPU cores.

    python benchmarks/kd_schedule.py --teachers runs/quick/table1/teachers --out runs/levers/kd --lrs 0.05,0.1,0.2

Finished runs are re-used. Prints validation (and test) mAP per learning rate and writes ``OUT/kd_schedule.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from kalib.data import load_benchmark
from kalib.runs.baselines import kd_run
from kalib.runs.parallel import run_parallel
from kalib.runs.presets import get_preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--teachers", required=True, help="directory with the preset's generic stage and teachers")
    parser.add_argument("--out", required=True)
    parser.add_argument("--lrs", default="0.05,0.1,0.2")
    args = parser.parse_args()
    preset = get_preset(args.preset)
    bench = load_benchmark(preset.data)
    lrs = [float(v) for v in args.lrs.split(",")]
    jobs = [lambda lr=lr: kd_run(dataclasses.replace(preset, kd=dataclasses.replace(preset.baselines.kd, lr=lr)), bench,
                                 Path(args.teachers), Path(args.out) / f"lr{lr:g}", preset.seed, log=print)
            for lr in lrs]
    records = run_parallel(jobs)
    table = {f"{lr:g}": {"val_mAP": r["val_ap"]["mAP"], "test_mAP": r["test_ap"]["mAP"], "epochs": r["schedule"]["epochs"],
                         "seconds": r["seconds"]} for lr, r in zip(lrs, records)}
    for lr, row in table.items():
        print(f"KD lr {lr}: val {row['val_mAP']:.1f} mAP, test {row['test_mAP']:.1f} ({row['epochs']} epochs, "
              f"{row['seconds']:.0f} s)")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "kd_schedule.json").write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
