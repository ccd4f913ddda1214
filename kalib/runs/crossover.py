"""Amalgamate or distil? The crossover study (``kalib study crossover``; docs/design.md §7).

The preset's teachers stay fixed. For every pool size N and seed, the arms train on the same N unlabelled
pool images (a seeded subset of the pool's training part; Eq. 9's held-out slice comes in addition and is
the same for every N) from the same student start, with the same batch order:

* ``amalgamation``: Alg. 1, the preset's branch-out rule and fine-tuning (Table 1's main TargetNet);
* ``amalgamation-eq9``: the same blocks, Eq. 9's argmin and fine-tuning;
* ``kd``: the student's network, its head started from the teachers' own head rows, trained end to end
  against the teachers' soft targets for as many image passes as give it ``amalgamation``'s training MACs
  (:mod:`kalib.runs.budget`); ``kd-2x``: twice those MACs; ``kd-randhead``: ``kd`` with a random head.

Each arm's learning rate (amalgamation: the fine-tuning's) is chosen on the validation split with the first
seed from a grid that is extended (up to ``max_grid`` points) until its best point is inside it; the other
seeds use the choice. Every finished run is a small JSON record (with the commit of the code that made it)
written atomically to the records directory, which is committed to the repository: a killed study, or one
started on another machine from a clone, re-uses every record and ends with the same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..device import resolve_precision
from ..errors import ConfigError, NonFiniteLossError
from ..files import atomic_write, file_sha
from ..method.baselines import kd_student, train_kd_passes
from ..method.blockwise import Amalgamation, amalgamate
from ..method.branch import branch_points, tolerant_branch_points
from ..method.filters import task_plan
from ..method.finetune import finetune
from ..method.pool import block_subset, epochs_per_block, split_pool
from ..method.student import init_student, make_filters
from ..method.targetnet import assemble, count_parameters
from ..metrics import mean_ap
from ..report import crossover as report
from ..train import predict
from . import experiments
from .budget import amalgamation_macs, kd_macs, kd_passes
from .checkpoints import EpochFile
from .config import digest
from .parallel import run_parallel
from .presets import Preset, get_preset
from .state import BlockStore, load_teachers, pool_soft_targets, teacher_files
from .teachers import pretrain_set

ARMS = ("amalgamation", "amalgamation-eq9", "kd", "kd-2x", "kd-randhead")
KD_ARMS = {"kd": (1.0, "teachers"), "kd-2x": (2.0, "teachers"), "kd-randhead": (1.0, "random")}   # (MACs, head)
VERSION = 3            # of the records' keys (3: teachers by their weights); others are made again


@dataclass(frozen=True)
class Study:
    """One crossover study: the preset whose teachers and student settings it uses, the pool sizes, seeds and
    arms, the first learning-rate grid of the fine-tuning (both amalgamation arms) and of KD (every KD arm),
    and how far a grid may grow to bring its best point inside."""
    preset: str
    pools: tuple[int, ...]
    seeds: tuple[int, ...]
    arms: tuple[str, ...] = ARMS
    finetune_lrs: tuple[float, ...] = (0.02, 0.05, 0.1)
    kd_lrs: tuple[float, ...] = (0.1, 0.2, 0.4)
    max_grid: int = 6

    def __post_init__(self):
        unknown = [a for a in self.arms if a not in ARMS]
        problems = [f"unknown arms {unknown}; valid: {', '.join(ARMS)}"] if unknown else []
        if any(n < 1 for n in self.pools) or not self.pools:
            problems.append(f"pool sizes must be >= 1, got {list(self.pools)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            problems.append(f"seeds must be distinct, got {list(self.seeds)}")
        if any(self.arms.count(a) > 1 for a in self.arms) or not self.arms:
            problems.append(f"arms must be distinct, got {list(self.arms)}")
        if "amalgamation" not in self.arms and any(a in KD_ARMS for a in self.arms):
            problems.append("the KD arms need the amalgamation arm (their budget is its training MACs)")
        if problems:
            raise ConfigError(f"invalid crossover study: {'; '.join(problems)}")


# The quick study: 6 pool sizes over 32x (250 to 8,000 canvases), 3 seeds, grids of 3 learning rates grown to
# at most 6. The full pool (15,500, Table 1's) would add about half its compute again (docs/design.md §9).
# kd-randhead would add a fifth arm, so it runs only when asked for (--arms). The smoke study is the tests'.
STUDIES = {
    "quick": Study("quick", pools=(250, 500, 1000, 2000, 4000, 8000), seeds=(0, 1, 2), arms=ARMS[:4]),
    "smoke": Study("smoke", pools=(96, 192), seeds=(0, 1), arms=ARMS[:4], finetune_lrs=(0.02, 0.05),
                   kd_lrs=(0.1, 0.2), max_grid=2),
}


@dataclass
class Context:
    """What every run of a study reads: the preset, its data and frozen teachers (C = A), the teachers'
    logits on the whole pool, the pool's training part and held-out slice, where records and caches go."""
    study: Study
    preset: Preset
    bench: object
    teachers: list
    plan: object
    soft: torch.Tensor
    train_idx: torch.Tensor
    held_idx: torch.Tensor
    teacher_key: list[str]      # the teachers' weights (SHA-256 of each checkpoint): retrained alike, still equal
    records: Path
    cache: Path
    commit: str

    def eval_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        labels = getattr(self.bench, f"{split}_labels")[:, self.bench.label_indices(self.plan.tasks)]
        return getattr(self.bench, f"{split}_images"), labels


def load_context(study: Study, out_dir: Path, records: Path, teachers_dir: Path | None = None,
                 log: Callable[[str], None] = print) -> Context:
    """The preset's two-teacher set (pretrained into ``teachers_dir``, default ``out_dir/teachers``, where
    missing; finished teachers of the same settings are re-used), their soft targets on the pool (cached
    beside them) and everything else a run needs."""
    preset = get_preset(study.preset)
    bench = experiments.load_variant(preset, "table1")
    tdir = Path(teachers_dir) if teachers_dir is not None else Path(out_dir) / "teachers"
    pretrain_set(preset, bench, "2", tdir, preset.seed, log=log)
    _, paths, _ = teacher_files(preset, tdir, "2")
    teachers, labels = load_teachers(paths)
    plan = task_plan(None, labels)
    pool = bench.pool_images
    soft = pool_soft_targets(teachers, plan, paths, bench, pool, tdir)
    train_idx, held_idx = split_pool(len(pool), preset.student.loss_slice)
    if max(study.pools) > len(train_idx):
        raise ConfigError(f"pool size {max(study.pools)} is larger than the pool's training part ({len(train_idx)})")
    return Context(study, preset, bench, teachers, plan, soft, train_idx, held_idx,
                   [file_sha(p) for p in paths], Path(records), Path(out_dir), code_version())


def code_version() -> str:
    """The commit of the code that runs (``+changes`` when kalib's files differ from it), or ``unknown``."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "kalib"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


# ------------------------------------------------------------------------------------------------ records

def record_path(ctx: Context, arm: str, pool: int, seed: int, lr: float) -> Path:
    return ctx.records / f"{arm}-N{pool}-s{seed}-lr{lr:g}.json"


def train_precision(ctx: Context) -> str:
    """The training precision of every arm: the preset's, resolved for the CPU (fp32 or bf16)."""
    return resolve_precision(ctx.preset.precision, torch.device("cpu"))


def record_key(ctx: Context, arm: str, pool: int, seed: int, lr: float) -> str:
    """What a record's numbers depend on: data, teachers, the arm's settings (not the preset's own learning
    rates of fine-tuning and KD, which a run replaces by its ``lr``), pool, seed, learning rate, and a
    training precision other than fp32."""
    student = dataclasses.asdict(ctx.preset.student)      # less the learning rates a run sets itself
    student.pop("eq9_finetune_lr")
    student["finetune"].pop("lr")
    kd = {k: v for k, v in dataclasses.asdict(ctx.preset.baselines.kd).items() if k != "lr"}
    settings = student if arm in ("amalgamation", "amalgamation-eq9") else {"kd": kd, "arm": KD_ARMS[arm],
                                                                            "budget_of": student}
    return digest({"version": VERSION, "data": ctx.bench.spec.key(), "teachers": ctx.teacher_key, "arm": arm,
                   "pool": pool, "seed": seed, "lr": lr, "settings": settings,
                   **({"precision": train_precision(ctx)} if train_precision(ctx) != "fp32" else {})})


def read_record(ctx: Context, arm: str, pool: int, seed: int, lr: float) -> dict | None:
    """The finished record of this run, or None (none yet, unreadable, or made with other settings)."""
    try:
        record = json.loads(record_path(ctx, arm, pool, seed, lr).read_text())
    except (OSError, ValueError):
        return None
    return record if record.get("key") == record_key(ctx, arm, pool, seed, lr) else None


def records_of(ctx: Context, arm: str = "*", pool: int | str = "*", seed: int | str = "*") -> list[dict]:
    """The finished records of ``arm`` at ``pool`` and ``seed`` (``*``: any), every learning rate, in file
    order: each file read once, kept where its key is that of the run it describes (:func:`read_record`)."""
    found = []
    for path in sorted(ctx.records.glob(f"{arm}-N{pool}-s{seed}-lr*.json")):
        try:
            record = json.loads(path.read_text())
            key = record_key(ctx, record["arm"], record["pool"], record["seed"], record["setting"]["lr"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if record.get("key") == key:
            found.append(record)
    return found


def write_record(ctx: Context, record: dict) -> dict:
    record = {**record, "key": record_key(ctx, record["arm"], record["pool"], record["seed"], record["setting"]["lr"]),
              "commit": ctx.commit, "threads": torch.get_num_threads(),
              **({"precision": train_precision(ctx)} if train_precision(ctx) != "fp32" else {})}
    path = record_path(ctx, record["arm"], record["pool"], record["seed"], record["setting"]["lr"])
    atomic_write(path, lambda p: p.write_text(json.dumps(record, indent=1) + "\n"))
    return record


def pool_subset(ctx: Context, pool: int, seed: int) -> torch.Tensor:
    """The ``pool`` training images of a seed (sorted pool indices): the first ``pool`` of a seeded
    permutation of the pool's training part, so a seed's smaller pools are parts of its larger ones."""
    order = torch.randperm(len(ctx.train_idx), generator=torch.Generator().manual_seed(10_007 + seed))
    return ctx.train_idx[order[:pool].sort().values]


def scores(ctx: Context, net: torch.nn.Module) -> dict[str, float]:
    """Validation and test mAP (VOC 2007 11-point AP, mean over labels) of a network with C's outputs."""
    out = {}
    for split in ("val", "test"):
        images, labels = ctx.eval_split(split)
        out[f"{split}_map"] = round(float(mean_ap(predict(net, images).numpy(), labels.numpy())), 3)
    return out


def finished_or_run(ctx: Context, arm: str, pool: int, seed: int, lr: float,
                    train: Callable[[EpochFile, dict], dict]) -> dict:
    """The record of this run: the finished one, or ``train(partial, known)`` timed and written as a record
    (its epochs kept in ``partial`` meanwhile, so a killed run resumes inside its training). ``train`` puts
    what it knows before training (network size, training MACs, branch points) into ``known``: a run whose
    loss diverges keeps it, with ``diverged`` and no mAP, so its MACs still set the KD arms' budget."""
    if (record := read_record(ctx, arm, pool, seed, lr)) is not None:
        return record
    partial = EpochFile(ctx.cache / "partial" / record_path(ctx, arm, pool, seed, lr).with_suffix(".pt").name,
                        record_key(ctx, arm, pool, seed, lr))
    wall, cpu, known = time.perf_counter(), time.process_time(), {}
    try:
        out = train(partial, known)
    except NonFiniteLossError as err:        # this learning rate diverges: a result of the grid, not a failure
        out = {**known, "diverged": str(err), "val_map": None, "test_map": None}
    record = write_record(ctx, {"arm": arm, "pool": pool, "seed": seed, "setting": {"lr": lr}, **out,
                                "wall_s": round(time.perf_counter() - wall, 1),
                                "cpu_s": round(time.process_time() - cpu, 1)})
    partial.remove()
    return record


# --------------------------------------------------------------------------------------- learning rates

def rank(val_map: float | None) -> float:
    """A run's validation mAP for choosing: a run whose loss diverged (None) ranks below every other."""
    return -math.inf if val_map is None else val_map


def grid_step(results: dict[float, float | None], max_grid: int) -> float | None:
    """The next learning rate to try, or None: halve below the lowest or double above the highest while the
    best validation mAP sits at that edge and the grid has fewer than ``max_grid`` points."""
    lrs = sorted(results)
    best = max(lrs, key=lambda lr: (rank(results[lr]), -lr))
    if len(lrs) >= max_grid or lrs[0] < best < lrs[-1] or len(lrs) < 2:
        return None
    return round(best / 2, 6) if best == lrs[0] else round(best * 2, 6)


def tuned(run_one: Callable[[float], dict], grid: Sequence[float], max_grid: int) -> list[dict]:
    """``run_one(lr)`` over ``grid``, extended by :func:`grid_step` until the best is inside (or the grid is
    full); the records in the order run."""
    records = [run_one(lr) for lr in grid]
    while (lr := grid_step({r["setting"]["lr"]: r["val_map"] for r in records}, max_grid)) is not None:
        records.append(run_one(lr))
    return records


def chosen_lr(ctx: Context, arm: str, pool: int) -> float:
    """The learning rate of ``arm`` at ``pool`` chosen on the validation split with the first seed."""
    seed = ctx.study.seeds[0]
    grid = {r["setting"]["lr"]: r["val_map"] for r in records_of(ctx, arm, pool, seed)}
    if not grid:
        raise ConfigError(f"{arm} at N = {pool} has no tuning records for seed {seed} in {ctx.records}; run the "
                          "study with that seed first")
    return max(grid, key=lambda lr: (rank(grid[lr]), -lr))


# ---------------------------------------------------------------------------------------------- the arms

def amalgamation_runs(ctx: Context, pool: int, seed: int, tune: bool) -> list[dict]:
    """Both amalgamation arms at ``pool`` and ``seed``: block-wise training once (its blocks cached and
    resumable in ``cache/blocks``), then for each branch-out rule the TargetNet fine-tuned at every
    learning rate of the grid (``tune``, the first seed) or at the chosen one. Returns the records. The
    blocks are trained (or loaded) only when a run has no record yet."""
    s = ctx.preset.student
    idx = torch.cat([pool_subset(ctx, pool, seed), ctx.held_idx])
    images, soft = ctx.bench.pool_images[idx], ctx.soft[idx]
    train_idx, _ = split_pool(len(images), s.loss_slice)
    ft_idx = block_subset(train_idx, 0, s.finetune_images, seed)

    @functools.cache
    def blocks() -> tuple[Amalgamation, float]:
        student = init_student(s.student_init, ctx.teachers, None, seed)
        torch.manual_seed(seed)                              # the filters' start, as in every run of this seed
        filters = make_filters(student, ctx.teachers, s.filter_reduction)
        store = BlockStore(ctx.cache / "blocks" / f"N{pool}-s{seed}", record_key(ctx, "amalgamation", pool, seed, 0))
        store.prepare({"pool": pool, "seed": seed, "teachers": ctx.teacher_key})
        names = student.block_names
        result = Amalgamation(student, filters, ctx.plan, np.full((len(names), len(ctx.plan.tasks)), np.nan))
        done = store.last_finished(len(names))
        if done:
            store.load(done, result)
        result = amalgamate(student, ctx.teachers, ctx.plan, images, s.block, images_per_block=s.block_images,
                            block_epochs=s.block_epochs, heldout=s.loss_slice, seed=seed, soft=soft, filters=filters,
                            start_block=done + 1, previous=result, cache_dtype=getattr(torch, s.amalgamation_cache),
                            hooks=store.hooks(done, names), precision=train_precision(ctx))
        return result, sum(result.seconds)            # every block's training seconds, resumed ones included

    def run_one(lr: float, arm: str) -> dict:
        def train(partial: EpochFile, known: dict) -> dict:
            result, blocks_s = blocks()
            student, filters, names = result.student, result.filters, result.student.block_names
            points = (tolerant_branch_points(result.losses, s.branch_tolerance) if arm == "amalgamation"
                      else branch_points(result.losses))
            target = assemble(student, filters, ctx.teachers, ctx.plan, points)
            macs = amalgamation_macs(
                student, filters, ctx.teachers, ctx.plan, images[:8], block_images=min(s.block_images or pool, pool),
                block_epochs=(epochs_per_block(s.block_epochs, len(names)) if s.block_epochs
                              else [s.block.epochs] * len(names)),
                block_batch=s.block.batch_size, train_images=pool, heldout=s.loss_slice,
                target=target, finetune_images=len(ft_idx),
                finetune_epochs=s.finetune.epochs, finetune_batch=s.finetune.batch_size)
            known.update({"params": count_parameters(target), "train_macs": macs["total"], "macs": macs,
                          "blocks_wall_s": round(blocks_s, 1),
                          "branch_block": {t: names[k - 1] for t, k in zip(ctx.plan.tasks, points)}})
            finetune(target, images[ft_idx], soft[ft_idx], dataclasses.replace(s.finetune, lr=lr), seed,
                     freeze_bn=s.finetune_freeze_bn, store=partial, precision=train_precision(ctx))
            return {**scores(ctx, target), **known}
        return finished_or_run(ctx, arm, pool, seed, lr, train)

    records = []
    for arm in [a for a in ("amalgamation", "amalgamation-eq9") if a in ctx.study.arms]:
        records += (tuned(lambda lr, arm=arm: run_one(lr, arm), ctx.study.finetune_lrs, ctx.study.max_grid) if tune
                    else [run_one(chosen_lr(ctx, arm, pool), arm)])
    return records


def kd_runs(ctx: Context, arm: str, pool: int, seed: int, tune: bool) -> list[dict]:
    """A KD arm at ``pool`` and ``seed``: the student's start with the teachers' (or a random) head, trained
    on the pool's images for the image passes that match the ``amalgamation`` arm's training MACs at the same
    pool and seed (times the arm's factor), at every learning rate of the grid or at the chosen one."""
    factor, head = KD_ARMS[arm]
    budget = factor * amalgamation_budget(ctx, pool, seed)
    subset = pool_subset(ctx, pool, seed)
    images, soft = ctx.bench.pool_images[subset], ctx.soft[subset]
    kd = ctx.preset.baselines.kd

    def network() -> torch.nn.Module:
        torch.manual_seed(seed)                              # the random head's start
        start = init_student(ctx.preset.student.student_init, ctx.teachers, None, seed)
        return kd_student(start, ctx.teachers, ctx.plan, head)
    image_passes = kd_passes(int(budget), network(), ctx.teachers, ctx.plan, images[:8], train_images=pool,
                             batch_size=kd.batch_size)
    macs = kd_macs(network(), ctx.teachers, ctx.plan, images[:8], train_images=pool, image_passes=image_passes)

    def run_one(lr: float) -> dict:
        def train(partial: EpochFile, known: dict) -> dict:
            net = network()
            known.update({"params": count_parameters(net), "train_macs": macs["total"], "macs": macs,
                          "image_passes": image_passes, "budget_macs": int(budget)})
            train_kd_passes(net, images, soft, dataclasses.replace(kd, lr=lr), image_passes, seed, store=partial,
                            precision=train_precision(ctx))
            return {**scores(ctx, net.eval()), **known}
        return finished_or_run(ctx, arm, pool, seed, lr, train)
    if tune:
        return tuned(run_one, ctx.study.kd_lrs, ctx.study.max_grid)
    return [run_one(chosen_lr(ctx, arm, pool))]


def amalgamation_budget(ctx: Context, pool: int, seed: int) -> int:
    """The training MACs of the ``amalgamation`` arm at ``pool`` and ``seed`` (the same at every fine-tuning
    learning rate): the KD arms' budget."""
    for record in records_of(ctx, "amalgamation", pool, seed):
        if "train_macs" in record:
            return record["train_macs"]
    raise ConfigError(f"no amalgamation record at N = {pool}, seed {seed} in {ctx.records}: the KD arms' budget "
                      "is its training MACs, so it runs first")


# ------------------------------------------------------------------------------------------ the study

def jobs(ctx: Context, pools: Sequence[int], seeds: Sequence[int], arms: Sequence[str]) -> list[list[tuple]]:
    """The study's runs in three stages, each a list of independent jobs (arm, pool, seed, tune): the
    amalgamations that tune on the first seed; the KD arms' tuning and the other seeds' amalgamations (each
    KD budget is its amalgamation's MACs); the other seeds' KD runs. Within a stage, largest first."""
    first, study = ctx.study.seeds[0], ctx.study
    amalgamating = any(a in arms for a in ("amalgamation", "amalgamation-eq9"))
    kd = [a for a in arms if a in KD_ARMS]
    later = [s for s in seeds if s != first]
    stages = [[("amalgamation", p, first, True) for p in pools if amalgamating and first in seeds],
              [(a, p, first, True) for a in kd for p in pools if first in seeds]
              + [("amalgamation", p, s, False) for s in later for p in pools if amalgamating],
              [(a, p, s, False) for a in kd for s in later for p in pools]]
    return [sorted(stage, key=lambda j: -job_cost(ctx, j)) for stage in stages if stage and study]


def job_cost(ctx: Context, job: tuple) -> float:
    """A rough relative cost of a job, for its start order and the time left: its images times its runs."""
    arm, pool, _, tune = job
    images = min(ctx.preset.student.block_images or pool, pool)
    if arm == "amalgamation":
        runs = 2 * len(ctx.study.finetune_lrs) if tune else 2
        return images * (3 + runs)
    return images * KD_ARMS[arm][0] * 4 * (len(ctx.study.kd_lrs) if tune else 1)


def run_job(ctx: Context, job: tuple) -> list[dict]:
    """One job on one thread, as in a worker process: a job that runs alone (the last of a stage, or one left
    after a resume) gives the same numbers as in a worker, since float sums depend on the thread count."""
    arm, pool, seed, tune = job
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return amalgamation_runs(ctx, pool, seed, tune) if arm == "amalgamation" else kd_runs(ctx, arm, pool, seed, tune)
    finally:
        torch.set_num_threads(threads)


def run_study(study: Study, out_dir: Path, records: Path, figures: Path | None = None, *,
              teachers_dir: Path | None = None, pools=None, seeds=None, arms=None,
              log: Callable[[str], None] = print) -> dict | None:
    """Run (or resume) ``study``: every run whose record is missing, in worker processes on the CPU cores,
    printing a line per finished job with what is left; then, once every run of the whole study has a
    record, its summary (:func:`summarise`) as ``crossover.json``, ``crossover.md`` and ``crossover.png`` in
    ``figures`` (default ``out_dir``). ``pools``/``seeds``/``arms`` run a subset (the tuning seed is always
    the study's first). Returns the summary, or None while runs are missing."""
    ctx = load_context(study, Path(out_dir), Path(records), teachers_dir, log)
    pools, seeds, arms = (tuple(v) if v else default for v, default in
                          ((pools, study.pools), (seeds, study.seeds), (arms, study.arms)))
    stages = jobs(ctx, pools, seeds, arms)
    total = sum(job_cost(ctx, j) for stage in stages for j in stage)
    done_cost, started = 0.0, time.perf_counter()
    log(f"crossover study ({study.preset}): {sum(map(len, stages))} jobs in {len(stages)} stages, code {ctx.commit}; "
        f"records in {records}")
    for stage in stages:
        def report_done(i, records_of_job, stage=stage):
            nonlocal done_cost
            done_cost += job_cost(ctx, stage[i])
            elapsed = time.perf_counter() - started
            left = elapsed / done_cost * (total - done_cost) if done_cost else float("nan")
            arm, pool, seed, _ = stage[i]
            best = max(records_of_job, key=lambda r: rank(r["val_map"]))
            score = "diverged" if best["val_map"] is None else f"{best['val_map']:.1f}"
            log(f"  {arm} N={pool} seed {seed}: {len(records_of_job)} runs, best validation mAP {score} "
                f"(lr {best['setting']['lr']:g}); {100 * done_cost / total:.0f}% of the work done, "
                f"about {left / 60:.0f} min left")
        run_parallel([lambda j=j: run_job(ctx, j) for j in stage], on_done=report_done)
    summary = summarise(ctx)
    if summary is None:
        log("not every run of the study has a record yet; run the rest to write the summary")
        return None
    write_summary(summary, Path(figures) if figures is not None else Path(out_dir))
    log(summary["verdict"])
    return summary


def summarise(ctx: Context) -> dict | None:
    """The study's numbers from its records (None while a run of the study has none): the runs at the chosen
    settings, the tuning grids, the paired differences with their intervals and the verdict written from them
    (:mod:`kalib.report.crossover`), the teachers' mAP and the records' commits and seconds. An amalgamation
    run's seconds include its block-wise training (shared by both amalgamation arms, as its MACs are)."""
    study, first = ctx.study, ctx.study.seeds[0]
    tuning, runs, seen = [], [], {}
    for arm in study.arms:
        for pool in study.pools:
            grid = sorted(records_of(ctx, arm, pool, first), key=lambda r: r["setting"]["lr"])
            if not grid:
                return None
            best = max(grid, key=lambda r: (rank(r["val_map"]), -r["setting"]["lr"]))
            tuning.append({"arm": arm, "pool": pool, "chosen": best["setting"], "at_edge": best in (grid[0], grid[-1]),
                           "grid": [{"setting": r["setting"], "val_map": r["val_map"]} for r in grid]})
            for seed in study.seeds:
                record = read_record(ctx, arm, pool, seed, best["setting"]["lr"])
                if record is None:
                    return None
                runs.append({**{k: record[k] for k in ("arm", "pool", "seed", "val_map", "test_map", "train_macs",
                                                       "params", "cpu_s", "setting", "commit")},
                             "wall_s": round(record["wall_s"] + record.get("blocks_wall_s", 0), 1),
                             **({"diverged": record["diverged"]} if "diverged" in record else {})})
            seen.update({(arm, pool, r["seed"], r["setting"]["lr"]): r for r in grid})
    pairs, failed = report.paired(runs), report.failures(runs)
    teachers = scores_of_teachers(ctx)
    return {"preset": study.preset, "pool_sizes": list(study.pools), "seeds": list(study.seeds),
            "arms": list(study.arms), "teachers_test_map": teachers["test_map"],
            "teachers_val_map": teachers["val_map"], "runs": runs, "tuning": tuning, "paired": pairs,
            "failures": failed, "verdict": report.study_verdict(pairs, failed),
            "commits": sorted({r["commit"] for r in runs}),
            "tuning_runs": len(seen), "cost": cost(ctx)}


def cost(ctx: Context) -> dict:
    """What the study's records cost, in seconds of one thread (each job runs on one): every run's own
    seconds (fine-tuning or KD, the tuning grids included) plus the block-wise training of every pool and
    seed once (both amalgamation rules and every learning rate share it)."""
    study = ctx.study
    records = [r for r in records_of(ctx) if r["arm"] in study.arms and r["pool"] in study.pools
               and r["seed"] in study.seeds]
    blocks: dict[tuple[int, int], float] = {}
    for r in records:
        key = (r["pool"], r["seed"])
        blocks[key] = max(blocks.get(key, 0.0), r.get("blocks_wall_s", 0.0))
    runs_s, blocks_s = sum(r["cpu_s"] for r in records), sum(blocks.values())
    return {"records": len(records), "runs_cpu_s": round(runs_s), "blocks_s": round(blocks_s),
            "core_s": round(runs_s + blocks_s), "core_h": round((runs_s + blocks_s) / 3600, 2)}


def scores_of_teachers(ctx: Context) -> dict[str, float]:
    """Validation and test mAP of the teachers, each label scored by its own teacher."""
    from ..method.baselines import TeacherEnsemble
    return scores(ctx, TeacherEnsemble(ctx.teachers, ctx.plan))


def write_summary(summary: dict, figures: Path) -> list[Path]:
    """``crossover.json``, ``crossover.md`` and ``crossover.png`` in ``figures``."""
    figures.mkdir(parents=True, exist_ok=True)
    paths = [figures / "crossover.json", figures / "crossover.md", figures / "crossover.png"]
    atomic_write(paths[0], lambda p: p.write_text(json.dumps(summary, indent=1) + "\n"))
    atomic_write(paths[1], lambda p: p.write_text(report.markdown(summary)))
    report.figure(summary, paths[2])
    return paths
