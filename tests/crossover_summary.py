"""A summary of version 2 of the crossover study crafted for the tests of what reads it (notebook 06, its
exercises): runs with the fields :func:`kalib.runs.crossover.study.run_entry` keeps, made up so that each of the
study's words occurs, then paired, Holm-adjusted, worded and tabled by kalib's own
:func:`kalib.report.crossover.analyse` and put together with the keys :func:`kalib.runs.crossover.summarise`
writes. No training: a summary takes milliseconds.

The made-up outcomes (``amalgamation-b4`` − ``kd``, the primary pair; ``amalgamation-b4-2x`` − ``kd-2x``):
pair-1/all at N = 250: ahead, ahead; at N = 4,000: behind, equivalent. pair-1/custom at N = 250: inconclusive,
and inconclusive although the unadjusted 95 % interval lies above 0 (Holm's adjustment widens it).
"""

from __future__ import annotations

import math

from kalib.report import crossover as report
from kalib.runs.crossover.protocol import ARMS, Cell, Study

SEEDS = (0, 1, 2)
STUDY = Study("quick", cells=(Cell("pair-1", "all", (250, 4000), SEEDS), Cell("pair-1", "custom", (250,), SEEDS)))
LABELS = {"all": [f"label-{i}" for i in range(20)], "custom": ["pullover", "shirt", "t-shirt", "two"]}
COMMIT = "0123456789ab"
# per cell and pool: (amalgamation-b4 − kd, amalgamation-b4-2x − kd-2x) per seed
GAPS = {("all", 250): ((3.0, 3.1, 2.9), (2.0, 2.1, 2.05)), ("all", 4000): ((-2.0, -2.1, -1.95), (0.01, -0.01, 0.0)),
        ("custom", 250): ((1.0, -1.5, 0.8), (0.6, 0.9, 1.2))}
# test mAP of every other arm: KD's plus an offset, plus a small per-seed wobble (no two arms alike)
OFFSETS = {"teachers": 5.0, "merge": -5.0, "amalgamation": 1.0, "amalgamation-eq9": 0.5, "kd-eq9": 0.2, "kd-2x": 1.0}
SIZES = {"teachers": (1_400_000, 70e6), "amalgamation": (1_200_000, 60e6), "amalgamation-eq9": (1_900_000, 90e6),
         "amalgamation-b4": (720_000, 36e6), "amalgamation-b4-2x": (720_000, 36e6)}       # else KD's: 700,000, 35e6
TRAIN_PER_IMAGE = {"teachers": 0, "merge": 3.5e7, "amalgamation-b4": 4e9, "amalgamation": 4.2e9, "amalgamation-eq9": 5e9,
                   "kd": 4e9, "kd-eq9": 5e9, "kd-2x": 8e9, "amalgamation-b4-2x": 8e9}


def _test_map(task_set: str, arm: str, pool: int, seed: int) -> float:
    kd = (80.0 if task_set == "custom" else 70.0) + 3 * math.log10(pool / 250) + (0.3, -0.2, 0.1)[seed]
    same, twice = GAPS[task_set, pool]
    kd_2x = kd + OFFSETS["kd-2x"] + (0.05, 0.1, -0.1)[seed]
    if arm == "teachers":
        return 75.0 + 5 * (task_set == "custom")                      # one record, the same on every seed
    return {"kd": kd, "amalgamation-b4": kd + same[seed], "kd-2x": kd_2x, "amalgamation-b4-2x": kd_2x + twice[seed]}.get(
        arm, kd + OFFSETS.get(arm, 0.0) + 0.07 * (seed - 1) * (1 + len(arm) % 3))


def runs(task_set: str, pools: tuple[int, ...]) -> list[dict]:
    """The runs of a pair-1 cell at its chosen settings, as the summary lists them: every arm, pool and seed; KD at
    Eq. 9's budget where its training MACs are more than 10 % from b4's (at 250 only), the tolerance net within."""
    out = []
    for pool in pools:
        for seed in SEEDS:
            for arm in ARMS:
                if arm == "kd-tol" or (arm == "kd-eq9" and pool != 250):
                    continue
                params, macs = SIZES.get(arm, (700_000, 35e6))
                value = round(_test_map(task_set, arm, pool, seed), 3)
                out.append({"teachers": "pair-1", "task_set": task_set, "teachers_id": "pair-1:aaaaaaaaaaaa+bbbbbbbbbbbb",
                            "arm": arm, "pool": pool, "seed": seed, "setting": {} if arm == "teachers" else {"lr": 0.05},
                            "val_map": round(value + 0.5, 3), "test_map": value, "params": params,
                            "inference_macs": int(macs), "train_macs": int(pool * TRAIN_PER_IMAGE[arm]),
                            "images_seen": 0 if arm == "teachers" else pool, "cpu_s": 1.0, "commit": COMMIT,
                            **({"budget_of": "amalgamation-eq9"} if arm == "kd-eq9" else {})})
    return out


def summary(diverged: tuple | None = None) -> dict:
    """The study's summary of the crafted runs; ``diverged`` = (task set, arm, pool, seed): that run's loss
    diverged at its chosen setting (no mAP; its start scored 60.0), as the study records it."""
    every = runs("all", (250, 4000)) + runs("custom", (250,))
    if diverged:
        victim = next(r for r in every if (r["task_set"], r["arm"], r["pool"], r["seed"]) == diverged)
        victim.update(val_map=None, test_map=None, start_test_map=60.0, diverged="loss became nan at epoch 1")
    cells = [{"teachers": c.teachers, "task_set": c.task_set, "labels": LABELS[c.task_set], "pools": list(c.pools),
              "seeds": list(c.seeds), "tuned": c.tuned} for c in STUDY.cells]
    analysis = report.analyse(every, cells, margin=STUDY.margin, alpha=STUDY.alpha)
    tuning = [{"teachers": "pair-1", "task_set": "all", "arm": "kd", "pool": 250, "chosen": {"lr": 0.2}, "at_edge": False,
               "grid": [{"setting": {"lr": lr}, "val_map": v} for lr, v in ((0.1, 70.0), (0.2, 71.0), (0.4, None))]}]
    return {"version": 2, "preset": STUDY.preset, "protocol": STUDY.protocol(), "cells": cells, "arms": list(STUDY.arms),
            "runs": every, "tuning": tuning, **analysis, "commits": [COMMIT],
            "cost": {"records": len(every) + 2, "runs_cpu_s": len(every), "blocks_s": 0, "core_s": len(every),
                     "core_h": 0.01}}
