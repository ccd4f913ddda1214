"""Running the crossover study: its jobs in three stages on the CPU cores (each job on one thread, as in a
worker process), one writer per output and records directory, a progress line per finished job with what is
left, and once every run has a record the summary (``crossover.json``, ``.md``, ``.png``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ...distributed import on_writer, writer_context
from ...errors import ConfigError
from ...files import atomic_write
from ...report import crossover as report
from ..locks import run_lock
from ..parallel import run_parallel
from .arms import amalgamation_runs, kd_runs, merge_runs, teachers_runs
from .protocol import AMALGAMATION_ARMS, DEPENDS, KD_ARMS, Cell, Study
from .records import (Context, best, chosen, finished, load_context, rank, record_path, records_of,
                      tuning_context)

SETTING_OF = {"kd-tol": "kd", "kd-eq9": "kd"}      # arms that take another arm's chosen setting
KINDS = {"teachers": ("teachers",), "merge": ("merge",), "amalgamation": (*AMALGAMATION_ARMS, "amalgamation-b4-2x"),
         "kd": tuple(KD_ARMS)}


def load_contexts(study: Study, out_dir: Path, records: Path, pair1_dir: Path | None = None,
                  log: Callable[[str], None] = print) -> dict[str, Context]:
    """Every cell's context (teachers pretrained where missing), by cell name."""
    return {cell.name: load_context(study, cell, out_dir, records, pair1_dir, log) for cell in study.cells}


def jobs(study: Study, arms: Sequence[str], pools=None, seeds=None) -> list[list[tuple]]:
    """The study's jobs (cell, kind, pool, seed, tune) in three stages of independent jobs: A, the teachers and
    the tuning of merge and amalgamation (a tuned cell's first seed); B, KD's tuning, and merge and amalgamation
    at the chosen settings; C, KD at the chosen settings. Within a stage, largest first. ``pools``/``seeds``
    keep a subset (a tuned cell's first seed always tunes)."""
    kinds = [k for k, covered in KINDS.items() if any(a in arms for a in covered)]
    stages: list[list[tuple]] = [[], [], []]
    for cell in study.cells:
        first = cell.seeds[0]
        cell_pools = [p for p in cell.pools if not pools or p in pools]
        later = [s for s in cell.seeds if (s != first or not cell.tuned) and (not seeds or s in seeds)]
        if "teachers" in kinds:
            stages[0].append((cell.name, "teachers", 0, 0, False))
        for p in cell_pools:
            for kind in ("merge", "amalgamation", "kd"):
                if kind not in kinds:
                    continue
                if cell.tuned:
                    stages[1 if kind == "kd" else 0].append((cell.name, kind, p, first, True))
                stages[2 if kind == "kd" else 1] += [(cell.name, kind, p, s, False) for s in later]
    return [sorted(stage, key=lambda j: -job_cost(j)) for stage in stages if stage]


def job_cost(job: tuple) -> float:
    """A rough relative cost of a job (for its start order and the time left): its images times its runs. The
    quick study's records cost, per pool image, about 0.70 CPU-s for amalgamation's tuning job and 0.25 for a
    later seed's, 0.90 for KD's tuning (its start grid too) and 0.045 / 0.008 for the merge's."""
    _, kind, pool, _, tune = job
    runs = {"teachers": (0.1, 0.1), "merge": (1, 0.2), "amalgamation": (16, 5), "kd": (18, 4.5)}[kind]
    return max(pool, 100) * runs[0 if tune else 1]


def run_job(contexts: dict[str, Context], job: tuple, arms: Sequence[str]) -> list[dict]:
    """One job on one thread, as in a worker process (float sums depend on the thread count, so a job that runs
    alone gives the same numbers as in a worker)."""
    cell, kind, pool, seed, tune = job
    ctx = contexts[cell]
    tctx = tuning_context(ctx, contexts)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        if kind == "teachers":
            return teachers_runs(ctx)
        if kind == "merge":
            return merge_runs(ctx, tctx, pool, seed, tune)
        runner = amalgamation_runs if kind == "amalgamation" else kd_runs
        return runner(ctx, tctx, pool, seed, tune, arms)
    finally:
        torch.set_num_threads(threads)


def check_dependencies(study: Study, arms: Sequence[str], pools, seeds,
                       found: Callable[[Cell, str, int, int], bool]) -> None:
    """Refuse, before any work, an ``--arms`` subset whose runs need records of an arm left out that do not
    exist yet (KD's budget is an amalgamation arm's MACs; its starts include the merge): ``found(cell, arm,
    pool, seed)`` says whether they do."""
    for arm in arms:
        for need in DEPENDS.get(arm, ()):
            if need in arms:
                continue
            for cell in study.cells:
                for pool in [p for p in cell.pools if not pools or p in pools]:
                    for seed in [s for s in cell.seeds if not seeds or s in seeds]:
                        if not found(cell, need, pool, seed):
                            raise ConfigError(f"--arms {arm} needs the records of {need} (at N = {pool}, seed "
                                              f"{seed}, {cell.name}), which do not exist yet: add {need} to --arms")


def time_left(elapsed: float, trained: float, left: float) -> str:
    """The progress line's estimate: the work ``left`` at the pace of the work ``trained`` in ``elapsed`` seconds
    (both in :func:`job_cost` units)."""
    if left <= 0:
        return "nothing left"
    if trained <= 0:
        return "time left not known yet (every job so far found its records)"
    return f"about {elapsed / trained * left / 60:.0f} min left"


def run_study(study: Study, out_dir: Path, records: Path, figures: Path | None = None, *,
              teachers_dir: Path | None = None, pools=None, seeds=None, arms=None,
              log: Callable[[str], None] = print) -> dict | None:
    """Run (or resume) ``study``: every run whose record is missing, in worker processes on the CPU cores, one
    line per finished job with what is left; then, once every run of the whole study has a record, its summary
    (:func:`summarise`) as ``crossover.json``, ``crossover.md`` and ``crossover.png`` in ``figures`` (default
    ``out_dir``). ``pools``/``seeds``/``arms`` run a subset. One study at a time writes to ``out_dir`` and to
    ``records``. Returns the summary, or None while runs are missing."""
    arms = tuple(arms) if arms else study.arms
    with writer_context(lambda: run_lock(out_dir, "study", what=f"a crossover study in {out_dir}")), \
            writer_context(lambda: run_lock(records, "study", what=f"a crossover study writing {records}")):
        # no record file at all: refused before the teachers are loaded (or pretrained); then by their keys
        check_dependencies(study, arms, pools, seeds, lambda cell, arm, pool, seed: on_writer(lambda: any(
            (Path(records) / cell.teachers / cell.task_set).glob(f"{arm}-N{pool}-s{seed}-*.json"))))
        contexts = load_contexts(study, Path(out_dir), Path(records), teachers_dir, log)
        check_dependencies(study, arms, pools, seeds, lambda cell, arm, pool, seed: bool(
            records_of(contexts[cell.name], arm, pool, seed)))
        stages = jobs(study, arms, pools, seeds)
        total = sum(job_cost(j) for stage in stages for j in stage)
        done, trained, ended, started = 0.0, 0.0, 0, time.perf_counter()
        count = sum(map(len, stages))
        existing = {path.resolve() for path in Path(records).rglob("*.json")}
        log(f"crossover study v2 ({study.preset}): {count} jobs in {len(stages)} stages, code "
            f"{next(iter(contexts.values())).commit}; records in {records}")
        for stage in stages:
            def report_done(i, records_of_job, stage=stage):
                nonlocal done, trained, ended
                cell, kind, pool, seed, _ = stage[i]
                done, ended = done + job_cost(stage[i]), ended + 1
                # the time left is read from the jobs that wrote a record in this process, not from those that
                # found all of theirs written (a resumed study re-reads its finished jobs in a moment)
                if any(record_path(contexts[cell], r["arm"], r["pool"], r["seed"], r["setting"]).resolve()
                       not in existing for r in records_of_job):
                    trained += job_cost(stage[i])
                top = max(records_of_job, key=lambda r: rank(r["val_map"]))
                score = "diverged" if top["val_map"] is None else f"{top['val_map']:.1f}"
                log(f"  {cell} {kind} N={pool} seed {seed}: {len(records_of_job)} runs, best validation mAP {score} "
                    f"({top['arm']}); {100 * done / total:.0f}% of the work done, "
                    f"{time_left(time.perf_counter() - started, trained, total - done if ended < count else 0)}")
            run_parallel([lambda j=j: run_job(contexts, j, arms) for j in stage], on_done=report_done)
        summary = summarise(study, contexts)
    if summary is None:
        log("not every run of the study has a record yet; run the rest to write the summary")
        return None
    write_summary(summary, Path(figures) if figures is not None else Path(out_dir))
    for cell, text in summary["verdict"].items():
        log(f"{cell}: {text}")
    return summary


def chosen_runs(study: Study, ctx: Context, contexts: dict[str, Context]) -> list[dict] | None:
    """The cell's records at its chosen settings (every arm, pool and seed; ``kd-tol``/``kd-eq9`` where their
    budget differs), in the JSON's form; None while one is missing."""
    tctx, runs = tuning_context(ctx, contexts), []
    teachers = finished(ctx, "teachers", 0, 0, {}) if "teachers" in study.arms else None
    if "teachers" in study.arms and teachers is None:
        return None
    for pool in ctx.cell.pools:
        for seed in ctx.cell.seeds:
            if teachers is not None:
                runs.append(run_entry(ctx, {**teachers, "pool": pool, "seed": seed}))
            for arm in [a for a in study.arms if a != "teachers"]:
                try:
                    record = finished(ctx, arm, pool, seed, chosen(tctx, SETTING_OF.get(arm, arm), pool))
                except ConfigError:
                    return None
                if record is None and arm in ("kd-tol", "kd-eq9") and records_of(ctx, "amalgamation-b4", pool, seed):
                    continue                     # its arm's MACs are within the tolerance of b4's: paired with kd
                if record is None:
                    return None
                runs.append(run_entry(ctx, record))
    return runs


def run_entry(ctx: Context, record: dict) -> dict:
    keep = ("arm", "pool", "seed", "setting", "val_map", "test_map", "params", "inference_macs", "train_macs",
            "images_seen", "cpu_s", "commit", "budget_of", "diverged", "start_test_map", "blocks_cpu_s", "branch_block")
    return {"teachers": ctx.cell.teachers, "task_set": ctx.cell.task_set,
            "teachers_id": ctx.cell.teachers + ":" + "+".join(k[:12] for k in ctx.teacher_key),
            **{k: record[k] for k in keep if k in record}}


def tuning_grids(ctx: Context) -> list[dict]:
    """Every setting tried on a tuned cell's first seed, per arm and pool, and the one chosen."""
    out = []
    for arm in ctx.study.arms:
        for pool in (ctx.cell.pools if arm not in ("teachers", *SETTING_OF) and ctx.cell.tuned else ()):
            grid = records_of(ctx, arm, pool, ctx.cell.seeds[0])
            if not grid:
                continue
            lr_edges = sorted(r["setting"].get("lr", r["setting"].get("lam")) for r in grid)
            top = best(grid)
            value = top["setting"].get("lr", top["setting"].get("lam"))
            out.append({"teachers": ctx.cell.teachers, "task_set": ctx.cell.task_set, "arm": arm, "pool": pool,
                        "chosen": top["setting"], "at_edge": value in (lr_edges[0], lr_edges[-1]),
                        "grid": [{"setting": r["setting"], "val_map": r["val_map"]} for r in grid]})
    return out


def summarise(study: Study, contexts: dict[str, Context]) -> dict | None:
    """The study's numbers from its records (None while a run of the study has none): the protocol, the runs
    at the chosen settings, the tuning grids, the paired comparisons with Holm-adjusted intervals and words,
    the decision table and the verdict of every cell (:mod:`kalib.report.crossover`), failures, commits and
    cost."""
    runs, tuning = [], []
    for ctx in contexts.values():
        cell_runs = chosen_runs(study, ctx, contexts)
        if cell_runs is None:
            return None
        runs += cell_runs
        tuning += tuning_grids(ctx)
    cells = [{"teachers": c.teachers, "task_set": c.task_set, "labels": list(contexts[c.name].plan.tasks),
              "pools": list(c.pools), "seeds": list(c.seeds), "tuned": c.tuned} for c in study.cells]
    analysis = report.analyse(runs, cells, margin=study.margin, alpha=study.alpha)
    return {"version": 2, "preset": study.preset, "protocol": study.protocol(), "cells": cells,
            "arms": list(study.arms), "runs": runs, "tuning": tuning, **analysis,
            "commits": sorted({r["commit"] for r in runs}), "cost": cost(study, contexts)}


def cost(study: Study, contexts: dict[str, Context]) -> dict:
    """What the study's records cost, in seconds of one thread (each job runs on one): every run's own seconds
    (tuning grids included) plus each cell, pool and seed's block-wise training once."""
    runs_s, blocks = 0.0, {}
    count = 0
    for name, ctx in contexts.items():
        for arm in study.arms:
            for pool in ([0] if arm == "teachers" else ctx.cell.pools):
                for seed in ([0] if arm == "teachers" else ctx.cell.seeds):
                    for r in records_of(ctx, arm, pool, seed):
                        count += 1
                        runs_s += r["cpu_s"]
                        key = (name, pool, seed)
                        blocks[key] = max(blocks.get(key, 0.0), r.get("blocks_cpu_s", 0.0))
    total = runs_s + sum(blocks.values())
    return {"records": count, "runs_cpu_s": round(runs_s), "blocks_s": round(sum(blocks.values())),
            "core_s": round(total), "core_h": round(total / 3600, 2)}


def write_summary(summary: dict, figures: Path) -> list[Path]:
    """``crossover.json``, ``crossover.md`` and ``crossover.png`` in ``figures``."""
    paths = [figures / "crossover.json", figures / "crossover.md", figures / "crossover.png"]

    def write():
        figures.mkdir(parents=True, exist_ok=True)
        atomic_write(paths[0], lambda p: p.write_text(json.dumps(summary, indent=1) + "\n"))
        atomic_write(paths[1], lambda p: p.write_text(report.markdown(summary)))
        report.figure(summary, paths[2])
    on_writer(write)
    return paths
