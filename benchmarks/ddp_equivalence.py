"""One process against N under torchrun (issue 37): the same amalgamation, the numbers side by side.

    python benchmarks/ddp_equivalence.py --preset lesson --teachers runs/lesson/teachers --out runs/ddp-lesson
    python benchmarks/ddp_equivalence.py ... --procs 4 --device cuda        # on a machine with 4 GPUs
    python benchmarks/ddp_equivalence.py --preset smoke ... --set pool_images=256   # --set as for kalib

Runs ``python -m kalib amalgamate --preset P --teachers T`` into ``OUT/one`` (one process) and the same under
``python -m torch.distributed.run --nproc_per_node=N`` into ``OUT/torchrun`` (each skipped when its run.json is
there: kalib re-uses a finished run), then prints per task the branch block of the preset's rule and of Eq. 9
in both, the largest difference of the converged losses L_i^k, the held-out loss after fine-tuning and the
TargetNet's test mAP. Where Eq. 9's block differs, the two blocks' losses in the one-process run say whether
it is a tie within that difference. The teachers are pretrained beforehand (``kalib pretrain``), in one
process, so that both runs amalgamate the same teachers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np


def amalgamate(args, out: Path, procs: int) -> dict:
    """The record of ``kalib amalgamate`` into ``out``, run first (in ``procs`` processes) unless finished."""
    launcher = [sys.executable] + (["-m", "torch.distributed.run", f"--nproc_per_node={procs}"] if procs > 1 else [])
    cmd = [*launcher, "-m", "kalib", "amalgamate", "--preset", args.preset, "--teachers", str(args.teachers), "--out",
           str(out), "--device", args.device, *(f"--set={field}" for field in args.set)]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return json.loads((out / "run.json").read_text())


def losses(record: dict) -> np.ndarray:
    return np.array([list(per_block.values()) for per_block in record["converged_loss"].values()])


def compare(one: dict, many: dict, procs: int) -> str:
    a, b = losses(one), losses(many)
    blocks = one["blocks"]
    lines = [f"| task | rule's block, 1 / {procs} | Eq. 9's block, 1 / {procs} | L_i at Eq. 9's blocks (1 process) |",
             "|---|---|---|---|"]
    for i, task in enumerate(one["tasks"]):
        e1, e2 = one["chosen_block"][task], many["chosen_block"][task]
        tie = "" if e1 == e2 else f"{a[i, blocks.index(e1)]:.5f} / {a[i, blocks.index(e2)]:.5f}"
        lines.append(f"| {task} | {one['branch_block'][task]} / {many['branch_block'][task]} | {e1} / {e2} | {tie} |")
    held = [r["heldout_loss"]["after_finetune"] for r in (one, many)]
    return "\n".join([*lines, "",
                      f"branch blocks of the preset's rule equal: {one['branch_block'] == many['branch_block']}; "
                      f"Eq. 9's: {one['chosen_block'] == many['chosen_block']}",
                      f"largest |L_i^k (1) - L_i^k ({procs})|: {np.abs(a - b).max():.5f} nats "
                      f"(mean {np.abs(a - b).mean():.5f})",
                      f"held-out loss after fine-tuning: {held[0]:.5f} / {held[1]:.5f}",
                      f"TargetNet test mAP: {one['target_ap']['mAP']:.2f} / {many['target_ap']['mAP']:.2f}"
                      + (f"; Eq. 9 TargetNet: {one['eq9']['target_ap']['mAP']:.2f} / {many['eq9']['target_ap']['mAP']:.2f}"
                         if "eq9" in one and "eq9" in many else "")])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="lesson")
    p.add_argument("--teachers", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE", help="as kalib's --set")
    args = p.parse_args()
    one = amalgamate(args, args.out / "one", 1)
    many = amalgamate(args, args.out / "torchrun", args.procs)
    print(compare(one, many, args.procs))


if __name__ == "__main__":
    main()
