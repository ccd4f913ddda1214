"""Command line: ``python -m kalib <command>`` (also installed as ``kalib``).

Commands: ``pretrain`` (generic stage + teachers, Eq. 2), ``amalgamate`` (Eq. 4-10, Alg. 1; of a preset's
teachers, or with ``--teacher`` of torchvision models a user trained, :mod:`kalib.runs.own`), ``evaluate``
(per-label AP and mAP of a teacher or TargetNet checkpoint), ``predict`` (probabilities per label of image
files), ``reproduce`` (the notebooks, in order).
They share option names: ``--preset``, ``--out``, ``--data-root``, ``--device``, ``--seed``,
``--restart``, ``--precision`` (the commands that train), ``--tasks`` (where it means something) and
``--set FIELD=VALUE`` (preset overrides).

Training resumes: a rerun of the same command continues after the last finished epoch / block; a run
directory of other settings is refused with a message offering ``--restart``. Expected problems
(missing data, unknown task, bad or foreign checkpoint, bad option, NaN loss, a full disk, a directory
that cannot be written, a run directory in use by another process) raise a :class:`~kalib.errors.KalibError`
(or, for a full disk or a missing permission, an ``OSError`` that :func:`kalib.files.storage_error` names)
and end with a one-line message and exit code 2. Anything else (a ``ValueError`` from inside torch or numpy,
say) is a bug: one "internal error ... please report it" line and exit code 1. ``--debug`` shows the full
traceback instead. Ctrl-C ends with exit code 130.

Under torchrun (``torchrun --nproc_per_node=N -m kalib pretrain|amalgamate …``, :mod:`kalib.distributed`) the
training commands run data-parallel: the first line says how many processes and which backend, only rank 0
prints, and an error line names the rank it happened on.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
import time
from pathlib import Path

from .errors import CheckpointError, CommandError, ConfigError, KalibError, UnknownTaskError
from .files import storage_error
from .method.student import INITS
from .runs.config import override
from .runs.data import load_data
from .runs.presets import PRESETS, TEACHER_SETS, get_preset

# ------------------------------------------------------------------------------------------- helpers

def _overrides(args) -> list[str]:
    """The ``--set`` overrides, and ``--precision`` as ``precision=...`` after them (it wins)."""
    precision = getattr(args, "precision", None)
    return [*(getattr(args, "set", None) or ()), *([f"precision={precision}"] if precision else [])]


def _preset(args):
    """The preset named by ``--preset`` with the ``--set`` overrides and ``--precision`` applied (validated, its
    networks' keyword arguments included)."""
    preset = override(get_preset(args.preset), _overrides(args))
    if preset.nets != get_preset(args.preset).nets:
        try:
            preset.nets.check_buildable()
        except ConfigError as err:
            raise ConfigError(f"--set: {err}") from None
    return preset


def _precision(preset, device) -> str:
    """The training precision a run uses, said at its start: the preset's, resolved for ``device``."""
    from .device import resolve_precision
    resolved = resolve_precision(preset.precision, device)
    return resolved if preset.precision != "auto" else f"{resolved} (auto)"


def _device(args):
    """The device this process trains on (``--device``). Under torchrun the job's process group is started
    first (:mod:`kalib.distributed`: a torchrun environment with a variable missing, or fewer GPUs than
    processes, is refused in one line), the first line says how many processes run with which backend, and
    only rank 0 prints."""
    from . import distributed
    from .device import resolve_device
    world = distributed.from_environment(args.device)
    if world is None:
        return resolve_device(args.device)
    distributed.start(world)
    if world.rank != 0:
        sys.stdout = open(os.devnull, "w")
    print(world.describe(), flush=True)
    return world.device


def _data(preset, args):
    """The preset's data (:func:`kalib.runs.data.load_data`); under torchrun rank 0 renders or decodes it into
    the cache first, and the other processes then read the cache."""
    from . import distributed

    def load():
        return load_data(preset, data_root=args.data_root, allow_download=args.allow_download)

    def render() -> None:
        load()
    if distributed.active():
        distributed.on_writer(render)
    return load()


def _writable(path: Path, option: str = "--out") -> None:
    """Refuse, before any work, a path that cannot be created or written: its nearest existing folder
    must be a directory this process may write into."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise CommandError(f"{option} {path}: {existing} is a file, not a directory; choose another {option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"{option} {path}: cannot write into {existing} (permission denied or read-only); "
                           f"choose an {option} you can write to, or make it writable")


def _out_dir(path: Path) -> Path:
    """``--out`` of a command that writes a directory: not a file, and writable (checked before any work)."""
    if path.exists() and not path.is_dir():
        raise CommandError(f"--out {path} is a file; give a directory (it is created if missing)")
    _writable(path)
    return path


def _describe(bench) -> str:
    return (f"{len(bench.train_images)} train / {len(bench.pool_images)} pool / {len(bench.test_images)} test "
            "images")


def _teacher_sets(text: str) -> list[str]:
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in TEACHER_SETS]
    if bad or not names:
        raise ConfigError(f"unknown teacher set '{','.join(bad) or text}'; valid: {', '.join(TEACHER_SETS)}")
    return names


def _seed(args, preset) -> int:
    return preset.seed if args.seed is None else args.seed


# ------------------------------------------------------------------------------------------ commands

def _pretrain(args) -> None:
    from .runs.teachers import pretrain_set
    preset = _preset(args)
    names = _teacher_sets(args.teacher_sets)
    device = _device(args)
    seed = _seed(args, preset)
    _out_dir(args.out)
    t0 = time.perf_counter()
    bench = _data(preset, args)
    print(f"{preset.name} data {bench.spec.key()}: {_describe(bench)} ({time.perf_counter() - t0:.0f} s); "
          f"training on {device}, precision {_precision(preset, device)}")
    for name in names:
        pretrain_set(preset, bench, name, args.out, seed, device=device, restart=args.restart,
                     allow_download=args.allow_download)
    print(f"teachers in {args.out} ({time.perf_counter() - t0:.0f} s)")
    _say_if_at_chance(preset, bench.test_labels)


OWN_OPTIONS = ("pool", "eval", "eval_labels", "weights", "mean", "std", "image_size")   # of --teacher only
PRESET_OPTIONS = ("teacher_set", "eval_split", "data_root")     # amalgamate options of --teachers DIR only


def _amalgamate(args) -> None:
    from .method.filters import task_plan
    from .runs.amalgamation import run
    from .runs.checkpoints import read_meta
    from .runs.state import check_teachers, teacher_files
    if args.teacher:
        return _amalgamate_own(args)
    if args.teachers is None:
        raise CommandError("no teachers: give --teachers DIR (written by `kalib pretrain`) or --teacher "
                           "ARCH:WEIGHTS:LABELS once per teacher (torchvision models you trained)")
    given = [f"--{o.replace('_', '-')}" for o in OWN_OPTIONS if getattr(args, o) is not None]
    if given:
        raise CommandError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --teacher (your own "
                           "teachers), not with --teachers DIR")
    args.preset = args.preset or "quick"
    args.teacher_set, args.eval_split = args.teacher_set or "2", args.eval_split or "test"
    preset = _preset(args)
    device = _device(args)
    _out_dir(args.out)
    arch, paths, _ = teacher_files(preset, args.teachers, args.teacher_set)
    metas = [read_meta(p) for p in paths]
    check_teachers(paths, metas, arch, None, data_key=preset.data.key(),          # foreign teachers, before any work
                   arch_kwargs=preset.teacher_set(args.teacher_set)[2])
    task_plan(args.tasks, [meta.get("labels", []) for meta in metas])   # fail fast on unknown tasks
    print(f"{preset.name}: training on {device}, precision {_precision(preset, device)}")
    t0 = time.perf_counter()
    bench = _data(preset, args)
    record = run(bench, preset, args.teachers, args.out, teacher_set=args.teacher_set, tasks=args.tasks,
                 init=args.init, branch_at=args.branch_at, seed=args.seed, device=device, restart=args.restart,
                 eval_split=args.eval_split)
    chosen = ", ".join(f"{t}@{b}" for t, b in record["branch_block"].items())
    print(f"branch-out: {chosen}")
    print(f"TargetNet {args.eval_split} mAP {record['target_ap']['mAP']:.2f} "
          f"(teachers {record['teacher_ap']['mAP']:.2f}), "
          f"{record['params']['targetnet']:,} parameters (teachers {record['params']['teachers']:,})")
    print(f"TargetNet and run.json in {args.out} ({time.perf_counter() - t0:.0f} s)")
    _say_if_at_chance(preset, getattr(bench, f"{args.eval_split}_labels")[:, bench.label_indices(record["tasks"])])


def _amalgamate_own(args) -> None:
    """``kalib amalgamate --teacher … --pool DIR``: teachers a user brings (:mod:`kalib.runs.own`)."""
    from .models.torchvision_teachers import IMAGENET_MEAN, IMAGENET_STD
    from .runs.own import amalgamate_teachers, own_schedule
    if args.teachers is not None:
        raise CommandError("--teacher and --teachers exclude each other: --teacher ARCH:WEIGHTS:LABELS names "
                           "torchvision models you trained, --teachers DIR the teachers of `kalib pretrain`")
    if args.preset is not None:
        raise CommandError("--teacher and --preset exclude each other: your own teachers are amalgamated with "
                           "their own schedule (change it with --set, e.g. --set block.epochs=3), not a preset's")
    given = [f"--{o.replace('_', '-')}" for o in PRESET_OPTIONS if getattr(args, o) is not None]
    if given:
        raise CommandError(f"{', '.join(given)} go{'es' if len(given) == 1 else ''} with --teachers DIR (a preset's "
                           "teachers), not with --teacher: your own teachers are evaluated on --eval DIR "
                           "--eval-labels FILE.csv")
    if args.pool is None:
        raise CommandError("--teacher needs --pool DIR, a folder of unlabelled images to amalgamate on")
    schedule = own_schedule(args.set)
    device = _device(args)
    _out_dir(args.out)
    t0 = time.perf_counter()
    record = amalgamate_teachers(args.teacher, args.pool, args.out, tasks=args.tasks,
                                 image_size=args.image_size or 224,
                                 mean=args.mean or IMAGENET_MEAN, std=args.std or IMAGENET_STD,
                                 init=args.init, weights=args.weights, allow_download=args.allow_download,
                                 eval_dir=args.eval, eval_labels=args.eval_labels, branch_at=args.branch_at,
                                 schedule=schedule, seed=args.seed or 0, device=device, restart=args.restart,
                                 precision=getattr(args, "precision", None))
    print(f"branch-out ({record['branch_rule']}): "
          + ", ".join(f"{t}@{b}" for t, b in record["branch_block"].items()))
    params, macs = record["params"], record["macs_per_image"]
    print(f"TargetNet {params['targetnet']:,} parameters and {macs['targetnet'] / 1e6:.1f} M MACs per image "
          f"(teachers {params['teachers']:,} and {macs['teachers'] / 1e6:.1f} M)")
    if "target_ap" in record:
        print(f"TargetNet mAP {record['target_ap']['mAP']:.2f} (teachers {record['teacher_ap']['mAP']:.2f}) on "
              f"{record['evaluated_on']['images']} images of {record['evaluated_on']['folder']}")
    print(f"TargetNet and run.json in {args.out} ({time.perf_counter() - t0:.0f} s)")


def _predict(args) -> None:
    from .device import resolve_device
    from .runs.predict import predict_images
    if args.json and args.threshold is not None:
        raise CommandError("--threshold goes without --json: with --json every label's probability is printed")
    args.threshold = 0.5 if args.threshold is None else args.threshold
    if not 0 <= args.threshold <= 1:
        raise CommandError(f"--threshold {args.threshold}: a probability, between 0 and 1")
    scores = predict_images(args.checkpoint, args.images, device=resolve_device(args.device),
                            log=lambda line: print(f"kalib predict: warning: {line}", file=sys.stderr))
    if args.json:
        print(json.dumps(scores, indent=1))
        return
    for path, probs in scores.items():
        above = sorted(((p, n) for n, p in probs.items() if p >= args.threshold), reverse=True)
        shown = ", ".join(f"{n} {p:.2f}" for p, n in above) or f"(no label at {args.threshold:g} or above)"
        print(f"{path}: {shown}")


def _evaluation_preset(args, meta: dict):
    """The preset whose data the checkpoint is evaluated on: ``--preset`` (with its second benchmark when
    the checkpoint was trained on that), else the preset recorded in the checkpoint or the one whose data
    it was trained on."""
    key = meta.get("data")
    names = [args.preset] if args.preset else [n for n in [meta.get("preset"), *PRESETS] if n]
    for name in names:
        p = override(get_preset(name), args.set)
        for spec in (p.data, getattr(p, "hard_data", None)):
            if key is not None and spec is not None and hasattr(spec, "key") and spec.key() == key:
                return dataclasses.replace(p, data=spec)
    if args.preset or meta.get("preset"):
        return override(get_preset(args.preset or meta["preset"]), args.set)
    raise CommandError(f"{args.checkpoint}: cannot tell which preset's data it belongs to; pass --preset")


def _evaluate(args) -> None:
    from .device import resolve_device
    from .labels import resolve_tasks
    from .metrics import ap_dict
    from .runs.checkpoints import load_model, read_meta
    from .runs.predict import model_labels
    from .train import predict
    if args.out is not None:
        if args.out.is_dir():
            raise CommandError(f"--out {args.out} is a directory; evaluate writes one JSON file: give a file "
                               f"name, for example {args.out / 'ap.json'}")
        _writable(args.out)
    meta = read_meta(args.checkpoint)
    if "own_format" in meta:
        raise CommandError(f"{args.checkpoint} is a TargetNet of your own teachers (kalib amalgamate --teacher), "
                           "not of a preset's data: evaluate it with that amalgamate command and --eval DIR "
                           "--eval-labels FILE.csv added (its finished blocks are re-used), or score images with "
                           "kalib predict")
    preset = _evaluation_preset(args, meta)
    device = resolve_device(args.device)
    if meta.get("kind") == "targetnet":
        from .runs.checkpoints import load_target
        model, meta = load_target(args.checkpoint)
        kind = "TargetNet"
    else:
        model, meta = load_model(args.checkpoint)
        kind = meta.get("role", "model")
    names = model_labels(model, meta, args.checkpoint)
    try:
        cols = resolve_tasks(args.tasks, names) if args.tasks is not None else list(range(len(names)))
    except UnknownTaskError:
        owners = _label_owners(args.checkpoint, args.tasks, names)
        if not owners:
            raise
        raise UnknownTaskError(f"{args.checkpoint} does not predict {', '.join(owners)}; evaluate that "
                               f"checkpoint, or choose from this one's labels: {', '.join(names)}") from None
    chosen = [names[c] for c in cols]
    bench = load_data(preset, data_root=args.data_root, allow_download=args.allow_download)
    missing = [n for n in chosen if n not in bench.label_names]
    if missing:
        raise CheckpointError(f"{args.checkpoint} predicts labels {missing} that preset {preset.name}'s data "
                              "does not have; pass the --preset it was trained with")
    targets = bench.test_labels[:, bench.label_indices(chosen)]
    scores = predict(model, bench.test_images, device=device)[:, cols]
    result = ap_dict(chosen, scores.numpy(), targets.numpy(), metric=args.metric, digits=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"checkpoint": str(args.checkpoint), "kind": kind, "preset": preset.name,
                                        "metric": args.metric, "test_images": len(bench.test_images),
                                        "ap": result}, indent=1))
    if args.json:
        print(json.dumps(result, indent=1))
        return
    what = "11-point VOC2007 AP" if args.metric == "voc07" else "area-under-PR AP (VOC2010+)"
    print(f"{kind} {args.checkpoint} on the test split of {preset.name} ({len(bench.test_images)} images), {what}:")
    print("\n".join(f"{k:>14s}  {v:6.2f}" for k, v in result.items()))
    _say_if_at_chance(preset, targets)


def _say_if_at_chance(preset, labels) -> None:
    """Under printed results of a preset that trains too briefly to learn (``smoke``), say that they are at
    chance level and what random scores give on the same labels."""
    from .report.notebook import at_chance, chance_map, chance_note
    if at_chance(preset.name):
        print(chance_note(preset.name, chance_map(labels)))


def _label_owners(checkpoint: Path, tasks: str, names) -> list[str]:
    """For each label of ``tasks`` that ``checkpoint`` does not predict but a teacher beside it does:
    "'LABEL' (a label of PATH)"."""
    from .runs.checkpoints import read_meta
    wanted = [t.strip() for t in tasks.split(",") if t.strip() and t.strip() not in names]
    owners = []
    for other in sorted(Path(checkpoint).parent.glob("*.json")):
        if other.with_suffix(".pt") == Path(checkpoint).with_suffix(".pt"):
            continue
        try:
            meta = read_meta(other)
        except CheckpointError:
            continue
        owners += [f"'{t}' (a label of {other.with_suffix('.pt')})" for t in wanted
                   if meta.get("role") == "teacher" and t in meta.get("labels", [])]
    return owners


def _reproduce(args) -> None:
    from . import distributed
    from .device import resolve_device
    if any(os.environ.get(v) for v in distributed.TORCHRUN[:3]):
        raise CommandError("reproduce runs the notebooks in one process, not under torchrun; run `pretrain` and "
                           "`amalgamate` under torchrun (README, \"More than one GPU or machine\")")
    preset = _preset(args)                  # fail fast on an unknown preset or a bad --set
    preset.labels.check_pairs()             # the notebooks draw Fig. 3
    device = resolve_device(args.device)
    from .runs import pipeline
    out = _out_dir(args.out if args.out is not None else Path("runs") / args.preset)
    if args.figures is not None:
        if args.figures.exists() and not args.figures.is_dir():
            raise CommandError(f"--figures {args.figures} is a file; give a directory (it is created if missing)")
        _writable(args.figures, "--figures")
    print(f"{preset.name}: training on {device}, precision {_precision(preset, device)}")
    if args.seeds:      # first, so the notebooks find every run of the preset's own seed and show the spread
        from .report.claims import write_seed_files
        from .runs.seeds import run_seeds
        write_seed_files(run_seeds(preset, args.seeds, out, device=str(device)), Path(out) / "figures", preset.name)
    try:
        pipeline.reproduce(preset=args.preset, out_dir=out, seed=args.seed, data_root=args.data_root,
                           device=str(device), restart=args.restart, overrides=_overrides(args), figures=args.figures)
    except pipeline.NotebookError as err:
        raise CommandError(str(err)) from None


def _merge(args) -> None:
    """``kalib merge``: the teachers merged in weight space, no training (kalib.method.merge)."""
    from .runs.merge import merge_own_teachers, merge_preset_teachers
    if args.out.is_dir() or args.out.suffix not in (".pt", ""):
        raise CommandError(f"--out {args.out}: give a checkpoint file name, e.g. merged.pt (its JSON goes beside it)")
    _writable(args.out)
    if bool(args.teacher) == (args.teachers is not None):
        raise CommandError("give either --teachers DIR (written by `kalib pretrain`) or --teacher ARCH:WEIGHTS:LABELS "
                           "once per teacher (torchvision models you trained), not both and not neither")
    if args.teacher:
        if args.pool is None:
            raise CommandError("--teacher needs --pool DIR, a folder of unlabelled images for the BatchNorm statistics")
        for name, value in (("--preset", args.preset), ("--pool-images", args.pool_images),
                            ("--teacher-set", args.teacher_set), ("--data-root", args.data_root)):
            if value is not None:
                raise CommandError(f"{name} goes with --teachers DIR, not with --teacher")
        record = merge_own_teachers(args.teacher, args.pool, args.out, tasks=args.tasks,
                                    image_size=args.image_size or 224, mean=args.mean, std=args.std, start=args.start,
                                    lam=args.lam)
    else:
        for name, value in (("--pool", args.pool), ("--start", args.start), ("--image-size", args.image_size),
                            ("--mean", args.mean), ("--std", args.std)):
            if value is not None:
                raise CommandError(f"{name} goes with --teacher; with --teachers DIR the pool, image size and "
                                   "normalisation are the preset's and the shared start is the directory's generic "
                                   "checkpoint")
        preset = get_preset(args.preset or "quick")
        record = merge_preset_teachers(preset, args.teachers, args.out, teacher_set=args.teacher_set or "2",
                                       tasks=args.tasks,
                                       lam=args.lam, pool_images=args.pool_images, data_root=args.data_root)
    scores = ", ".join(f"{split} mAP {record[f'{split}_map']:.2f}" for split in ("val", "test")
                       if f"{split}_map" in record)
    print(f"merged {len(record['teachers'])} teachers (lambda {record['lam']:g}) for {len(record['labels'])} labels "
          f"into {args.out}{': ' + scores if scores else ''}")


def _study(args) -> None:
    from .runs.crossover import STUDIES, run_study
    args.device = "cpu"              # every arm runs on the CPU; under torchrun: gloo, one writer (rank 0)
    _device(args)
    _out_dir(args.out)
    records = args.records if args.records is not None else args.out / "records"
    _out_dir(records)
    study = STUDIES[args.preset]
    pools = sorted({p for c in study.cells for p in c.pools})
    seeds = sorted({s for c in study.cells for s in c.seeds})
    for name, values, valid in (("--pools", args.pools, pools), ("--seeds", args.seeds, seeds),
                                ("--arms", args.arms, study.arms)):
        unknown = [v for v in values or () if v not in valid]
        if unknown:
            raise CommandError(f"{name} {','.join(map(str, unknown))}: not part of the {args.preset} study; "
                               f"choose from {','.join(map(str, valid))}")
    summary = run_study(study, args.out, records, args.figures, teachers_dir=args.teachers, pools=args.pools,
                        seeds=args.seeds, arms=args.arms)
    if summary is not None:
        print(f"crossover.json, crossover.md and crossover.png in {args.figures or args.out}")


# -------------------------------------------------------------------------------------------- parser

class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2), like every other kalib error."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _path(text: str) -> Path:
    """A path option's value: not empty (an empty path would quietly mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; give a file or folder name (. for the current folder)")
    return Path(text)


def _seed_value(text: str) -> int:
    """``--seed``: a whole number from 0 to :data:`kalib.runs.preset_parts.MAX_SEED`."""
    from .runs.preset_parts import MAX_SEED
    value = _nonneg_int(text)
    if value > MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_SEED}, got {value}")
    return value


def _seed_list(text: str) -> list[int]:
    seeds = [_seed_value(v.strip()) for v in text.split(",") if v.strip()]
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"give two or more different seeds, e.g. 0,1,2 (got '{text}')")
    return seeds


def _common(p: argparse.ArgumentParser, *, out_help: str, out_required: bool = True, training: bool = True,
            tasks: str | None = None, preset_default: str | None = "quick",
            overrides: bool = True) -> argparse.ArgumentParser:
    """The options every command shares (``--preset``, ``--out``, ``--data-root``, ``--device``, ``--debug``),
    with ``--tasks`` where it means something (``tasks``: its help), ``--seed`` and ``--restart`` for the
    commands that train, and ``--set`` and ``--allow-download`` where ``overrides``."""
    p.add_argument("--preset", default=preset_default, choices=sorted(PRESETS),
                   help=f"preset (default {preset_default or 'the one recorded in the checkpoint'})")
    p.add_argument("--out", type=_path, required=out_required, default=None, help=out_help)
    p.add_argument("--data-root", type=_path, default=None,
                   help="dataset folder: the Fashion-MNIST IDX files for the embedded presets (default "
                        "$KALIB_FASHION_MNIST_DIR or /usr/share/datasets/fashion-mnist), the VOC/COCO root "
                        "for the paper presets (default $KALIB_DATA_ROOT)")
    p.add_argument("--device", default=None,
                   help="auto (default: cuda when available, else cpu), cpu, cuda or cuda:N")
    if tasks:
        p.add_argument("--tasks", default=None, help=tasks)
    if training:
        p.add_argument("--seed", type=_seed_value, default=None, help="random seed (default: the preset's)")
        p.add_argument("--restart", action="store_true",
                       help="discard this run's saved partial state (and state of other settings) and "
                            "start over; other runs and finished teachers of these settings are kept")
        p.add_argument("--precision", default=None, choices=["fp32", "bf16", "auto"],
                       help="precision of the training steps (default: the preset's, fp32 for smoke, lesson and "
                            "quick): bf16 autocast, or auto (bf16 on a CPU with native bfloat16 or a GPU); "
                            "evaluation stays fp32")
    if overrides:
        p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                       help="override a preset field, e.g. teacher.epochs=3, block.batch_size=64, "
                            "data.n_pool=4000 (repeatable)")
        p.add_argument("--allow-download", action="store_true",
                       help="let torchvision download missing sources (Fashion-MNIST/MNIST, ImageNet weights)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    return p


def _add_pretrain(sub, common) -> None:
    p = common(sub.add_parser("pretrain", help="train the generic backbone and the teachers (Eq. 2); resumable"),
               out_help="directory for the teacher checkpoints")
    p.add_argument("--teacher-sets", default="2",
                   help="comma-separated: 2 (10/10 split), 3 (7/7/6), dense (DenseNet 10/10); default 2")
    p.set_defaults(func=_pretrain)


def _add_amalgamate(sub, common) -> None:
    p = common(sub.add_parser("amalgamate", help="amalgamate the teachers into a task-customized TargetNet "
                                                 "(Eq. 4-10, Alg. 1); resumable per block"),
               out_help="directory for the TargetNet, run.json and the block states",
               tasks="comma-separated customized task set C (default: all labels of the teachers, C = A)")
    p.set_defaults(preset=None)          # given or not: --teacher refuses it, the preset path defaults to quick
    p.add_argument("--teachers", type=_path, default=None,
                   help="directory written by `kalib pretrain` (excludes --teacher)")
    p.add_argument("--teacher-set", default=None, choices=list(TEACHER_SETS),
                   help="2 (10/10 split), 3 (7/7/6) or dense (DenseNet 10/10); default 2 (with --teachers only)")
    p.add_argument("--init", default=None, choices=[*INITS, "imagenet"],
                   help="student init (default: the preset's student_init): the teachers' shared generic "
                        "backbone, random, teacher 1, or the mean of the teachers' weights (teacher-mean); with "
                        "--teacher: imagenet (the default with --weights), teacher-mean (the default otherwise), "
                        "teacher1 or random")
    p.add_argument("--branch-at", default=None,
                   help="branch every task at this stage (b1..b4) or block instead of Eq. 9's choice")
    p.add_argument("--eval-split", default=None, choices=["test", "val"],
                   help="split for the reported APs: test (default) or val, the split to choose settings on "
                        "(with --teachers only)")
    _add_own_teachers(p)
    p.set_defaults(func=_amalgamate)


def _floats3(text: str) -> tuple[float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"'{text}' is not three comma-separated numbers R,G,B")
    return values


def _positive_int(text: str) -> int:
    value = _nonneg_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _image_size(text: str) -> int:
    """``--image-size``: a whole number of pixels from 1 to :data:`kalib.data.folder.MAX_IMAGE_SIZE`."""
    from .data.folder import MAX_IMAGE_SIZE
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of pixels") from None
    if not 1 <= value <= MAX_IMAGE_SIZE:
        raise argparse.ArgumentTypeError(f"must be between 1 and {MAX_IMAGE_SIZE} px, got {value} (the size the "
                                         "teachers were trained at, e.g. 224)")
    return value


def _add_own_teachers(p) -> None:
    """The options of ``kalib amalgamate --teacher``: torchvision models a user trained (kalib.runs.own)."""
    g = p.add_argument_group(
        "your own teachers", "amalgamate torchvision models you trained on a folder of unlabelled images, with "
        "kalib's default schedule (--set block.epochs=N, finetune.lr=X, ... change it; docs/design.md §8). "
        "--teacher excludes --teachers, --preset, --teacher-set, --eval-split and --data-root")
    g.add_argument("--teacher", action="append", default=[], metavar="ARCH:WEIGHTS:LABELS[:softmax]",
                   help="a teacher, repeated once per teacher: ARCH a torchvision name (resnet18, resnet34, "
                        "resnet50, resnet101, resnet152, densenet121; one for all), WEIGHTS the file of "
                        "torch.save(model.state_dict()) of torchvision.models.ARCH(num_classes=K) (it may hold "
                        "colons), LABELS a text file of its K label names, one a line, in head order (no "
                        "colons); :softmax marks a single-label teacher (default: multi-label, sigmoid)")
    g.add_argument("--pool", type=_path, default=None, metavar="DIR",
                   help="folder of unlabelled images, searched recursively (every file PIL opens; others are "
                        "skipped and named)")
    g.add_argument("--image-size", type=_image_size, default=None, metavar="N",
                   help="side the images are resized to (default 224, at most 4096)")
    g.add_argument("--mean", type=_floats3, default=None, metavar="R,G,B",
                   help="the normalisation the teachers were trained with (default ImageNet's 0.485,0.456,0.406)")
    g.add_argument("--std", type=_floats3, default=None, metavar="R,G,B",
                   help="(default ImageNet's 0.229,0.224,0.225)")
    g.add_argument("--weights", type=_path, default=None, metavar="FILE",
                   help="the ImageNet state dict the teachers were fine-tuned from: the student starts there "
                        "(never downloaded unless --allow-download)")
    g.add_argument("--eval", type=_path, default=None, metavar="DIR",
                   help="a folder of labelled images: report AP per label and mAP of teachers and TargetNet")
    g.add_argument("--eval-labels", type=_path, default=None, metavar="FILE.csv",
                   help="the labels of --eval: header file,<label>,..., one row per image (its path relative "
                        "to DIR, then 0 or 1 per label)")


def _add_predict(sub, common) -> None:
    p = sub.add_parser("predict", help="score image files with a TargetNet or teacher checkpoint: a probability "
                                       "per label, at the checkpoint's own input size and normalisation")
    p.add_argument("checkpoint", type=_path, help="a .pt checkpoint written by kalib (TargetNet or teacher)")
    p.add_argument("images", type=_path, nargs="+", metavar="IMAGE_OR_DIR",
                   help="image files, or folders searched recursively")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object mapping each image path to {label: probability}")
    p.add_argument("--threshold", type=float, default=None,
                   help="without --json: list the labels at this probability or above (default 0.5)")
    p.add_argument("--device", default=None, help="auto (default: cuda when available, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    p.set_defaults(func=_predict)


def _add_evaluate(sub, common) -> None:
    p = common(sub.add_parser("evaluate", help="per-label AP and mAP of a teacher or TargetNet checkpoint "
                                               "on the test split"),
               out_help="also write the APs as JSON to this file", out_required=False, training=False,
               tasks="comma-separated labels of the checkpoint to evaluate (default: all)", preset_default=None)
    p.add_argument("checkpoint", type=_path, help="a .pt checkpoint written by kalib (teacher, generic or TargetNet)")
    p.add_argument("--metric", default="voc07", choices=["voc07", "area"],
                   help="voc07: 11-point interpolated AP (default, Table 1); area: area under the "
                        "interpolated PR curve (VOC2010+)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_evaluate)


def _add_reproduce(sub, common) -> None:
    p = common(sub.add_parser("reproduce", help="run the six lesson notebooks in order (teachers, filters, "
                                                "block training, branch-out, tables, choosing), then their "
                                                "solutions; resumable"),
               out_help="run directory (default runs/PRESET)", out_required=False)
    p.add_argument("--figures", type=_path, default=None,
                   help="also copy the figures, tables, results.json and the lessons and solutions (HTML) into this "
                        "directory (make reproduce: figures)")
    p.add_argument("--seeds", type=_seed_list, default=None, metavar="0,1,2",
                   help="first rerun Table 1's main rows, Target-3 and Fig. 3's pairs with each seed (canvases, "
                        "generic stage, teachers, students, baselines; the label split stays) and write "
                        "seeds.md, seeds.json and claims.md; the preset's own seed is the main run")
    p.set_defaults(func=_reproduce)


def _add_merge(sub, common) -> None:
    p = sub.add_parser("merge", help="merge the teachers in weight space from their shared start, with no training "
                                     "(theta_0 + lambda * sum(theta_n - theta_0), BatchNorm statistics re-estimated "
                                     "on unlabelled images): a student-sized network for evaluate and predict")
    p.add_argument("--out", type=_path, required=True, help="the checkpoint to write (NAME.pt and NAME.json)")
    p.add_argument("--teachers", type=_path, default=None, help="directory written by `kalib pretrain`")
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), help="the preset of --teachers (default quick)")
    p.add_argument("--teacher-set", default=None, choices=list(TEACHER_SETS), help="with --teachers (default 2)")
    p.add_argument("--tasks", default=None, help="comma-separated labels of C (default all the teachers' labels)")
    p.add_argument("--lam", type=float, default=None,
                   help="lambda of task arithmetic (default 1/N, the plain average of the N teachers)")
    p.add_argument("--pool-images", type=_positive_int, default=None,
                   help="with --teachers: the BatchNorm statistics from the first N pool images (default all)")
    p.add_argument("--data-root", type=_path, default=None, help="dataset folder of the preset (as for evaluate)")
    p.add_argument("--start", type=_path, default=None, metavar="FILE",
                   help="with --teacher: the torchvision state dict the teachers were fine-tuned from (theta_0), "
                        "needed unless lambda is 1/N")
    g = p.add_argument_group("your own teachers", "torchvision models you fine-tuned from one shared start "
                             "(--teacher excludes --teachers, --preset, --teacher-set, --data-root and "
                             "--pool-images)")
    g.add_argument("--teacher", action="append", default=[], metavar="ARCH:WEIGHTS:LABELS[:softmax]",
                   help="a teacher, repeated once per teacher, as for `kalib amalgamate --teacher`")
    g.add_argument("--pool", type=_path, default=None, metavar="DIR",
                   help="folder of unlabelled images for the BatchNorm statistics, searched recursively")
    g.add_argument("--image-size", type=_image_size, default=None, metavar="N", help="(default 224, at most 4096)")
    g.add_argument("--mean", type=_floats3, default=None, metavar="R,G,B",
                   help="the teachers' input normalisation (default ImageNet's)")
    g.add_argument("--std", type=_floats3, default=None, metavar="R,G,B", help="(default ImageNet's)")
    p.set_defaults(func=_merge)


def _study_list(kind):
    """A comma-separated list of distinct values for the study's subsets: an empty list or a repeated value is
    refused (an empty ``--pools ,`` would otherwise mean every pool)."""
    def parse(text: str) -> list:
        try:
            values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of {kind.__name__}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"'{text}' names no value; give one or more, e.g. 250,4000")
        if len(set(values)) != len(values):
            raise argparse.ArgumentTypeError(f"'{text}' repeats a value; name each once")
        return values
    return parse


def _add_study(sub, common) -> None:
    p = sub.add_parser("study", help="amalgamate, distil, merge or keep the teachers? the crossover study: every arm "
                                     "on the same images, at matched training compute, over pool sizes, task sets, "
                                     "teacher pairs and seeds (hours; resumable from its records)")
    p.add_argument("name", choices=["crossover"], help="the study to run")
    p.add_argument("--preset", default="quick", choices=["quick", "smoke"],
                   help="quick (the committed study) or smoke (minutes, numbers at chance)")
    p.add_argument("--out", type=_path, default=Path("runs/crossover"),
                   help="teachers, cached blocks and epoch states (default runs/crossover)")
    p.add_argument("--records", type=_path, default=None,
                   help="one JSON record per finished run, re-used by a rerun (default OUT/records; the committed "
                        "study's are figures/crossover/records, as make study names them)")
    p.add_argument("--figures", type=_path, default=None,
                   help="where crossover.json, .md and .png go once every run has a record (default --out)")
    p.add_argument("--teachers", type=_path, default=None,
                   help="a directory of the preset's two-teacher set to re-use as pair-1 (default OUT/teachers-pair-1)")
    p.add_argument("--pools", type=_study_list(int), default=None, metavar="250,4000", help="run only these pool sizes")
    p.add_argument("--seeds", type=_study_list(int), default=None, metavar="0,1", help="run only these seeds")
    p.add_argument("--arms", type=_study_list(str), default=None, metavar="merge,kd",
                   help="run only these arms (refused where an arm needs records of one left out)")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks")
    p.set_defaults(func=_study)


SUBCOMMANDS = (_add_pretrain, _add_amalgamate, _add_merge, _add_evaluate, _add_predict, _add_reproduce,
               _add_study)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="kalib", description="Amalgamating Filtered Knowledge (Ye et al., IJCAI 2019): "
                     "task-customized students from multi-task teachers. `kalib COMMAND --help` lists the "
                     "options of a command.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub, _common)
    return parser


_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|[\x00-\x1f\x7f]")    # ANSI sequences, control characters


def one_line(text: str) -> str:
    """``text`` as one plain line: terminal escape sequences and control characters out, blanks collapsed."""
    return " ".join(_ESCAPES.sub(" ", text).split())


def _quiet_stdout() -> None:
    """After a broken pipe (``kalib predict … | head``): point stdout at /dev/null, so that Python's last flush
    at exit does not fail again; as command-line tools do, the command ends without a message."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):     # stdout is no file (a test's buffer)
        pass


def main(argv=None) -> int:
    from . import distributed
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"kalib {args.command}: interrupted; finished epochs and blocks are saved, rerun the same "
              "command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:         # the reader of stdout went away: nothing left to say to it
        _quiet_stdout()
        return 141                  # 128 + SIGPIPE, what a shell reports for a tool ended by a broken pipe
    except KalibError as err:       # a user's mistake or a missing input: the message says what to do
        if args.debug:
            raise
        if getattr(err, "echoed_from", None) is None:        # under torchrun rank 0 says what all ranks raise
            print(f"kalib {args.command}: error{distributed.where()}: {one_line(str(err))}", file=sys.stderr)
        return 2
    except Exception as err:   # a bug in kalib, or an unexpected failure deep inside a library: still one line
        if args.debug:
            raise
        return _unexpected(args.command, err)
    distributed.stop()
    return 0


def _unexpected(command: str, err: Exception) -> int:
    """The one line and exit code of an exception that is not a :class:`KalibError`: a full disk or a missing
    permission (2), another process of a torchrun job that stopped (1), or a bug in kalib (1)."""
    from . import distributed
    mapped = storage_error(err) if isinstance(err, OSError) else None   # a full disk, no permission
    if mapped is not None:
        print(f"kalib {command}: error{distributed.where()}: {one_line(str(mapped))}", file=sys.stderr)
        return 2
    if distributed.peer_lost(err):
        print(f"kalib {command}: error{distributed.where()}: another process of this torchrun job stopped "
              f"({one_line(str(err))[:200]}); its own error is above, finished epochs and blocks are "
              "kept: rerun the same command to resume", file=sys.stderr)
        return 1
    if getattr(err, "echoed_from", None) is not None:
        return 1
    print(f"kalib {command}: internal error{distributed.where()}: unexpected {type(err).__name__}: "
          f"{one_line(str(err))[:500]}; this is a bug in kalib, please report it; rerun with --debug "
          "for the traceback", file=sys.stderr)
    return 1
