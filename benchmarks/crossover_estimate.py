"""What version 2 of the crossover study will cost, estimated from version 1's records before it starts
(docs/design.md §9, issue: "estimate it from version 1's records before starting and write the estimate down").

Version 1's records (at commit e71a9c8, read with ``git show``) give CPU seconds of one thread per 10^12
training MACs for three kinds of work: block-wise training (prefix, block steps, held-out losses, soft targets),
fine-tuning, and KD steps. Version 2's plan (pools, seeds, arms, grid sizes) is priced with those rates, each
arm's MACs taken from version 1's records of the same pool:

* ``amalgamation-b4`` and ``kd`` at the tolerance arm's MACs (at N >= 4,000 the tolerance net *is* the b4 net;
  on smaller pools this overestimates b4 a little), ``amalgamation-eq9`` and ``kd-eq9`` at Eq. 9's;
  ``kd-tol`` only where version 1's tolerance net had more than 1.1x b4's parameters (N < 4,000);
* ``kd-2x`` at twice ``kd``; ``amalgamation-b4-2x`` adds one ``kd`` budget of fine-tuning;
* ``merge`` and ``teachers``: forward passes only, a few seconds each (left out).
* tuning on seed 0 of ``pair-1``: each grid at version 1's mean grid length (3.5 points), KD's start grid two
  more runs, ``merge`` free; ``pair-2`` is not tuned.

    python benchmarks/crossover_estimate.py            # prints the table and the total
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess

V1_COMMIT = "e71a9c8"
GRID = 3.5            # version 1's mean tuning-grid length (3 to 5 points)
CELLS = (("pair-1", "all", (250, 500, 1000, 4000), 5, True),
         ("pair-1", "custom", (250, 500, 1000, 4000), 5, True),
         ("pair-2", "all", (250, 4000), 5, False))


def v1_records(commit: str) -> list[dict]:
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{commit}:figures/crossover/records"],
                           capture_output=True, text=True, check=True).stdout.split()
    return [json.loads(subprocess.run(["git", "show", f"{commit}:figures/crossover/records/{n}"],
                                      capture_output=True, text=True, check=True).stdout) for n in names]


def rates(records: list[dict]) -> dict[str, float]:
    """CPU seconds per 10^12 MACs of KD steps, of fine-tuning (records that did not train blocks) and of
    block-wise training (the first record of a pool and seed: its seconds less its fine-tuning's)."""
    kd = [r for r in records if r["arm"].startswith("kd") and r.get("val_map") is not None]
    amal = [r for r in records if r["arm"].startswith("amalgamation") and r.get("val_map") is not None]
    ft_rate = statistics.median(r["cpu_s"] / r["macs"]["finetune"] * 1e12 for r in amal
                                if r["cpu_s"] < 0.5 * r["blocks_wall_s"] or r["blocks_wall_s"] == 0)
    block_rate = statistics.median(
        (r["cpu_s"] - ft_rate * r["macs"]["finetune"] / 1e12) / (r["train_macs"] - r["macs"]["finetune"]) * 1e12
        for r in amal if r["seed"] != 0 and r["arm"] == "amalgamation" and r["cpu_s"] > 0.5 * r["blocks_wall_s"])
    return {"kd": statistics.median(r["cpu_s"] / r["train_macs"] * 1e12 for r in kd), "finetune": ft_rate,
            "blocks": block_rate}


def per_pool(records: list[dict]) -> dict[int, dict[str, float]]:
    """Version 1's mean MACs (10^12) per pool: blocks, each rule's fine-tuning, its parameters."""
    out = {}
    for pool in sorted({r["pool"] for r in records}):
        tol = [r for r in records if r["arm"] == "amalgamation" and r["pool"] == pool and "macs" in r]
        eq9 = [r for r in records if r["arm"] == "amalgamation-eq9" and r["pool"] == pool and "macs" in r]
        if not tol or not eq9:
            continue
        mean = lambda rs, f: statistics.fmean(f(r) for r in rs) / 1e12       # noqa: E731
        out[pool] = {"blocks": mean(tol, lambda r: r["train_macs"] - r["macs"]["finetune"]),
                     "ft_tol": mean(tol, lambda r: r["macs"]["finetune"]),
                     "ft_eq9": mean(eq9, lambda r: r["macs"]["finetune"]),
                     "tol": mean(tol, lambda r: r["train_macs"]), "eq9": mean(eq9, lambda r: r["train_macs"]),
                     "tol_params": statistics.fmean(r["params"] for r in tol)}
    return out


def seed_cost(m: dict[str, float], rate: dict[str, float], tune: bool, small_b4: float) -> float:
    """CPU seconds of one pool and seed: shared blocks, three fine-tunings, the KD arms, the b4-2x extension."""
    g = GRID if tune else 1
    ft = rate["finetune"] * (g * m["ft_tol"] * 2 + g * m["ft_eq9"])         # b4 ~ the tolerance net's fine-tuning
    kd = rate["kd"] * (m["tol"] * (g + (2 if tune else 0))                  # kd: lr grid, then the start grid
                       + (m["tol"] if m["tol_params"] > small_b4 * 1.1 else 0)      # kd-tol
                       + m["eq9"]                                           # kd-eq9
                       + 2 * m["tol"] * g)                                  # kd-2x
    extension = rate["finetune"] * m["tol"] * g                             # amalgamation-b4-2x
    return rate["blocks"] * m["blocks"] + ft + kd + extension


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commit", default=V1_COMMIT, help="the commit whose figures/crossover/records are version 1")
    args = parser.parse_args(argv)
    records = v1_records(args.commit)
    rate, pools = rates(records), per_pool(records)
    small_b4 = min(m["tol_params"] for m in pools.values())
    print(f"version 1: {len(records)} records; CPU s per 10^12 MACs: blocks {rate['blocks']:.1f}, "
          f"fine-tuning {rate['finetune']:.1f}, KD {rate['kd']:.1f}")
    print("| teachers | task set | N | seed 0 (s) | each other seed (s) | seeds | cell total (s) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    total = 0.0
    for teachers, task_set, cell_pools, seeds, tune in CELLS:
        for pool in cell_pools:
            first = seed_cost(pools[pool], rate, tune, small_b4)
            other = seed_cost(pools[pool], rate, False, small_b4)
            cell = first + (seeds - 1) * other
            total += cell
            print(f"| {teachers} | {task_set} | {pool:,} | {first:,.0f} | {other:,.0f} | {seeds} | {cell:,.0f} |")
    print(f"total: {total:,.0f} CPU seconds of one thread = {total / 3600:.1f} core-hours, "
          f"{total / 7200:.1f} h on 2 idle cores (plus pair-2's teachers, about 10 core-minutes)")


if __name__ == "__main__":
    main()
