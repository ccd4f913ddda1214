"""The order in which a table's independent runs start, measured side by side in one run: Table 1's KD,
Supervised, Merge, Target-3 and TargetDenseNet runs (notebook 05's first phase) on two single-thread workers,
once with the baselines started first and once in kalib's order, side amalgamations first
(:func:`kalib.runs.experiments.side_jobs`). Each order starts from a copy of the same finished
generic stage, teachers of set 2 and soft targets, and trains everything else from scratch.

    python benchmarks/side_run_order.py --teachers runs/quick/table1/teachers --work runs/side-order \\
        --main runs/quick/table1/amalgamation-2 --json runs/side_order.json

(``--main``: Table 1's finished main amalgamation of those teachers, whose ``run.json`` sets KD's budget; without
it, it is made again in ``--work`` first.)

Prints each order's wall time, when each job ended, the ratio of the two wall times, and whether both orders
gave the same test mAP (each job seeds itself, so they must).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from kalib.runs import experiments
from kalib.runs.parallel import default_workers, run_parallel
from kalib.runs.presets import get_preset
from kalib.runs.state import teacher_files

ORDERS = {"baselines first": lambda keys: sorted(keys, key=lambda k: k[1] not in ("KD", "Supervised", "Merge")),
          "side amalgamations first (kalib)": list}


def copy_set2(preset, src: Path, out: Path) -> None:
    """A fresh output directory holding only what notebook 05 finds ready: the generic stage, the teachers
    of set 2 and their soft targets."""
    shutil.rmtree(out, ignore_errors=True)
    dst = experiments.teachers_dir(out)
    dst.mkdir(parents=True)
    _, paths, generic = teacher_files(preset, src, "2")
    for path in [*paths, generic]:
        for name in (path.name, path.with_suffix(".json").name):
            shutil.copyfile(src / name, dst / name)
    for path in src.glob("soft-targets*"):
        (shutil.copytree if path.is_dir() else shutil.copyfile)(path, dst / path.name)


def main_record(preset, bench, src: Path, work: Path) -> Path:
    """The run.json of Table 1's main amalgamation (notebook 02's; the KD baseline's budget is its training
    MACs), made once in ``work`` from a copy of the teachers."""
    copy_set2(preset, src, work)
    experiments.ensure_amalgamation(preset, bench, work, log=lambda *a, **k: None)
    return experiments.run_dir(work) / "run.json"


def time_order(preset, bench, src: Path, out: Path, order, main: Path, rows=None) -> dict:
    copy_set2(preset, src, out)
    experiments.run_dir(out).mkdir(parents=True)
    shutil.copyfile(main, experiments.run_dir(out) / "run.json")
    jobs = experiments.side_jobs(preset, bench, out, "table1", log=lambda *a, **k: None, done={("table1", "2")})
    if rows:
        jobs = {k: job for k, job in jobs.items() if experiments.ROW_OF_SET.get(k[1], k[1]) in rows}
    keys = order(list(jobs))
    rows = [experiments.ROW_OF_SET.get(k[1], k[1]) for k in keys]
    ended = {}
    start = time.perf_counter()
    records = run_parallel([jobs[k] for k in keys], on_done=lambda i, r: ended.__setitem__(
        rows[i], round(time.perf_counter() - start, 1)))
    return {"started": rows, "ended_s": ended, "wall_s": round(time.perf_counter() - start, 1),
            "test_mAP": {row: (r.get("target_ap") or r["test_ap"])["mAP"] for row, r in zip(rows, records)}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--teachers", required=True, help="a finished Table 1 teacher directory of the preset")
    parser.add_argument("--work", required=True, help="scratch directory for the two orders' runs (emptied)")
    parser.add_argument("--rows", nargs="+", metavar="ROW",
                        help="only these rows (KD, Supervised, Merge, Target-3, TargetDenseNet); default: all")
    parser.add_argument("--main", help="the finished main amalgamation of these teachers (its run.json sets KD's "
                                       "budget); default: made in --work")
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    preset = get_preset(args.preset)
    bench = experiments.load_variant(preset, "table1")
    result = {"preset": preset.name, "workers": default_workers(), "cpus": os.cpu_count(),
              "load_average_start": os.getloadavg()[0], "orders": {}}
    main = Path(args.main) / "run.json" if args.main else main_record(preset, bench, Path(args.teachers),
                                                                       Path(args.work) / "main")
    if not main.is_file():
        parser.error(f"--main: {main} not found: name a finished amalgamation's directory, or leave --main out")
    for name, order in ORDERS.items():
        result["orders"][name] = timed = time_order(preset, bench, Path(args.teachers), Path(args.work) / name.split()[0],
                                                    order, main, args.rows)
        print(f"{name}: {timed['wall_s']:.0f} s; started {', '.join(timed['started'])}; ended "
              + ", ".join(f"{job} at {s:.0f} s" for job, s in timed["ended_s"].items()), flush=True)
    old, new = (result["orders"][n]["wall_s"] for n in ORDERS)
    result["load_average_end"] = os.getloadavg()[0]
    result["ratio"] = round(old / new, 3)
    maps = [result["orders"][n]["test_mAP"] for n in ORDERS]
    result["same_results"] = maps[0] == maps[1]
    print(f"baselines first / side amalgamations first: {result['ratio']:.2f} ({old - new:+.0f} s); test mAP "
          + ", ".join(f"{row} {v:.2f}" for row, v in maps[1].items())
          + ("; the same in both orders" if result["same_results"] else f"; DIFFERENT in the other order: {maps[0]}"))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
