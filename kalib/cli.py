"""Command line: ``python -m kalib <command>`` (also installed as ``kalib``).

Expected problems (missing data, unknown task, bad checkpoint, bad option) end with a one-line
message and exit code 2; ``--debug`` shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .checkpoints import CheckpointError
from .data import MissingSourceError, UnknownTaskError, load_benchmark
from .presets import PRESETS, get_preset
from .train import NonFiniteLossError

EXPECTED_ERRORS = (MissingSourceError, UnknownTaskError, CheckpointError, NonFiniteLossError,
                   FileExistsError, FileNotFoundError, ValueError)


def _pretrain(args) -> None:
    from .teachers import pretrain
    preset = get_preset(args.preset)
    t0 = time.perf_counter()
    bench = load_benchmark(preset.data, allow_download=args.allow_download)
    print(f"embedded benchmark {preset.data.key()}: {len(bench.train_images)} train / "
          f"{len(bench.pool_images)} pool / {len(bench.test_images)} test canvases "
          f"({time.perf_counter() - t0:.0f} s)")
    sets = {"2": (preset.groups, preset.arch, preset.arch_kwargs),
            "3": (preset.groups3, preset.arch, preset.arch_kwargs),
            "dense": (preset.groups, preset.dense_arch, preset.dense_kwargs)}
    for name in args.teacher_sets.split(","):
        if name not in sets:
            raise ValueError(f"unknown teacher set '{name}'; valid: {', '.join(sets)}")
        groups, arch, kwargs = sets[name]
        pretrain(bench, groups, arch, kwargs, preset.generic, preset.teacher, args.out,
                 seed=args.seed if args.seed is not None else preset.seed)
    print(f"teachers in {args.out} ({time.perf_counter() - t0:.0f} s)")


def _evaluate(args) -> None:
    from .checkpoints import load_model
    from .teachers import evaluate
    preset = get_preset(args.preset)
    bench = load_benchmark(preset.data, allow_download=args.allow_download)
    model, meta = load_model(args.checkpoint)
    names = meta.get("labels")
    if not names:
        raise CheckpointError(f"{args.checkpoint} stores no label names")
    idx = bench.label_indices(names)
    ap = evaluate(model, bench.test_images, bench.test_labels[:, idx], names)
    print(json.dumps({k: round(v, 2) for k, v in ap.items()}, indent=1) if args.json
          else "\n".join(f"{k:>10s}  {v:5.1f}" for k, v in ap.items()))


def _amalgamate(args) -> None:
    from .amalgamate import run, teacher_files
    from .checkpoints import read_meta
    from .filters import task_plan
    preset = get_preset(args.preset)
    _, paths, _ = teacher_files(preset, args.teachers, args.teacher_set)
    task_plan(args.tasks, [read_meta(p).get("labels", []) for p in paths])   # fail fast on unknown tasks
    t0 = time.perf_counter()
    bench = load_benchmark(preset.data, allow_download=args.allow_download)
    record = run(bench, preset, args.teachers, args.out, teacher_set=args.teacher_set, tasks=args.tasks,
                 init=args.init, branch_at=args.branch_at, seed=args.seed)
    chosen = ", ".join(f"{t}@{b}" for t, b in record["branch_block"].items())
    print(f"branch-out: {chosen}")
    print(f"TargetNet test mAP {record['target_ap']['mAP']:.2f} (teachers {record['teacher_ap']['mAP']:.2f}), "
          f"{record['params']['targetnet']:,} parameters (teachers {record['params']['teachers']:,})")
    print(f"TargetNet and run.json in {args.out} ({time.perf_counter() - t0:.0f} s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kalib", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="preset (default quick)")
        p.add_argument("--seed", type=int, default=None, help="random seed (default: the preset's)")
        p.add_argument("--allow-download", action="store_true",
                       help="let torchvision download Fashion-MNIST/MNIST if the offline sources are missing")
        return p

    p = common(sub.add_parser("pretrain", help="train the generic backbone and the teachers (Eq. 2)"))
    p.add_argument("--out", type=Path, required=True, help="directory for the teacher checkpoints")
    p.add_argument("--teacher-sets", default="2",
                   help="comma-separated: 2 (10/10 split), 3 (7/7/6), dense (DenseNet 10/10); default 2")
    p.set_defaults(func=_pretrain)

    p = common(sub.add_parser("amalgamate", help="amalgamate the teachers into a task-customized TargetNet "
                                                 "(Eq. 4-10, Alg. 1)"))
    p.add_argument("--teachers", type=Path, required=True, help="directory written by `kalib pretrain`")
    p.add_argument("--out", type=Path, required=True, help="directory for the TargetNet, run.json, block states")
    p.add_argument("--tasks", default=None, help="comma-separated customized task set C (default: all labels "
                                                 "of the teachers, C = A)")
    p.add_argument("--teacher-set", default="2", choices=["2", "3", "dense"],
                   help="2 (10/10 split), 3 (7/7/6) or dense (DenseNet 10/10); default 2")
    p.add_argument("--init", default="generic", choices=["generic", "random", "teacher1"],
                   help="student init: the teachers' shared generic backbone (default), random, teacher 1")
    p.add_argument("--branch-at", default=None,
                   help="branch every task at this stage (b1..b4) or block instead of Eq. 9's choice")
    p.set_defaults(func=_amalgamate)

    p = common(sub.add_parser("evaluate", help="per-label AP and mAP of a checkpoint on the test split"))
    p.add_argument("checkpoint", type=Path, help="a .pt checkpoint written by kalib")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_evaluate)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except EXPECTED_ERRORS as err:
        if args.debug:
            raise
        print(f"kalib {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0
