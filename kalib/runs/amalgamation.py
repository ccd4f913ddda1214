"""The whole amalgamation run behind ``python -m kalib amalgamate``: Alg. 1 from the
teacher checkpoints to the fine-tuned TargetNet and its evaluation, with the teachers' soft targets
cached once per teacher set, block-wise training resumable per block and per epoch, fine-tuning
resumable per epoch, and the run record ``run.json`` (Fig. 3 curves, Table 1 APs, seconds)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..augment import BatchAugment
from ..device import as_device
from ..errors import ConfigError, MissingFileError
from ..files import atomic_write, file_sha
from ..memory import PeakMemory
from ..method.blockwise import Amalgamation, amalgamate, branch_logits
from ..method.branch import branch_points, forced_branch_points, tolerant_branch_points
from ..method.filters import TaskPlan, select_tasks, task_plan
from ..method.finetune import finetune, heldout_loss
from ..method.pool import block_subset, split_pool
from ..method.student import init_student, make_filters
from ..method.targetnet import assemble, count_parameters
from ..metrics import ap_dict, ap_voc07, mean_of
from ..train import predict
from .checkpoints import EpochFile, load_model, load_target, read_meta, save_target
from .config import digest, file_digest
from .locks import run_lock
from .parallel import run_parallel
from .records import DAMAGED, read_record, verify
from .state import BlockStore, check_teachers, load_teachers, pool_soft_targets, teacher_files


def _ap_dict(names, scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """The record's APs: :func:`kalib.metrics.ap_dict` (VOC2007 11-point), three decimals."""
    return ap_dict(names, scores.numpy(), targets.numpy(), digits=3)


def run(bench, preset, teachers_dir: str | Path, out_dir: str | Path, *, teacher_set: str = "2",
        tasks=None, init: str | None = None, branch_at: str | None = None, evaluate: bool = True,
        branch_curves: bool = True, seed: int | None = None, log: Callable[[str], None] = print,
        device=None, restart: bool = False, eval_split: str = "test") -> dict:
    """The whole of Alg. 1 for the CLI: teachers of ``teacher_set`` from ``teachers_dir`` -> block-wise
    training on ``bench.pool_images`` (Eq. 6–8) -> branch-out (Eq. 9, or every task at ``branch_at``)
    -> TargetNet (Eq. 10) -> fine-tuning. The student starts as ``init`` (:func:`init_student`; default
    ``preset.student.student_init``). Branch-out follows ``preset.student.branch_tolerance``
    (:func:`~kalib.method.branch.tolerant_branch_points`; 0 is Eq. 9); where that rule differs from Eq. 9, the
    record's ``eq9`` entry holds the paper's own TargetNet, fine-tuned the same way. Training reads only
    ``bench.pool_images`` (the first ``preset.student.pool_images`` of them where set); with ``evaluate``
    the ``eval_split`` (``test``, or ``val`` when choosing settings) gives the APs of teachers and TargetNet,
    and with ``branch_curves`` also the Fig. 3 curves (AP at every branch-out block). Writes
    ``out_dir/targetnet.pt`` (+ JSON) and ``out_dir/run.json`` (with the digests of the files it
    describes); returns the run record. A finished run of the same settings is returned as it is, not run
    again, as long as its files still match their digests (:func:`finished_record`).

    Resumable: finished blocks (and the epochs of the block or fine-tuning in progress) in
    ``out_dir/blocks`` are re-used by a rerun with the same settings; other settings raise
    :class:`~kalib.errors.ConfigMismatchError` unless ``restart``, which deletes the finished record,
    the TargetNets and ``out_dir/blocks`` first (the teachers are never touched). Settings that cannot run
    and foreign teachers are refused before any work; one process at a time works in ``out_dir``
    (:func:`kalib.runs.locks.run_lock`). ``device``: where the networks run (default CPU).
    """
    seed = preset.seed if seed is None else seed
    init = preset.student.student_init if init is None else init
    device = as_device(device)
    out_dir = Path(out_dir)
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    peak = PeakMemory()
    arch, paths, generic_path = teacher_files(preset, teachers_dir, teacher_set)
    metas = [read_meta(p) for p in paths]
    generic_meta = read_meta(generic_path) if init == "generic" and generic_path.is_file() else None
    check_teachers(paths, metas, arch, bench.label_names, generic_path, generic_meta, data_key=bench.spec.key(),
                   arch_kwargs=preset.teacher_set(teacher_set)[2])
    teachers, labels = load_teachers(paths, device)
    plan = task_plan(tasks, labels)
    eval_images, eval_y = _eval_split(bench, eval_split, plan) if evaluate else (None, None)   # before any work
    generic = None
    if init == "generic":
        if not generic_path.is_file():
            raise MissingFileError(f"{generic_path} (the generic backbone the teachers started from) is "
                                    "missing; use --init random or teacher1, or rerun pretrain")
        generic = load_model(generic_path)[0]
    student = init_student(init, teachers, generic, seed)
    # an unknown --branch-at is refused here, before any work
    forced = forced_branch_points(student, branch_at, len(plan.tasks)) if branch_at is not None else None
    pool = bench.pool_images[:preset.student.pool_images or None]
    train_idx, held_idx = split_pool(len(pool), preset.student.loss_slice)       # a pool too small is refused here
    cache_dtype = getattr(torch, preset.student.amalgamation_cache)
    settings = {"data": bench.spec.key(), "pool": len(pool), "teachers": [file_digest(p) for p in paths],
                "generic": file_digest(generic_path) if init == "generic" else None, "init": init,
                "tasks": list(plan.tasks), "block": dataclasses.asdict(preset.student.block),
                "block_images": preset.student.block_images, "loss_slice": preset.student.loss_slice, "seed": seed,
                **({"block_epochs": list(preset.student.block_epochs)} if preset.student.block_epochs else {}),
                "reduction": preset.student.filter_reduction, **({"augment": True} if preset.augment else {})}
    augment = BatchAugment(seed) if preset.augment else None
    with run_lock(out_dir, what=f"amalgamation into {out_dir}"):
        if restart:
            _remove_finished(out_dir, log)
        store = BlockStore(out_dir, digest(settings))
        store.prepare(settings, restart, log)
        run_key = digest([store.fingerprint, branch_at, dataclasses.asdict(preset.student.finetune), preset.student.finetune_images,
                          preset.student.finetune_freeze_bn, evaluate, branch_curves, preset.student.branch_tolerance, eval_split])
        record = finished_record(out_dir, run_key, log)
        if record is not None:
            log(f"re-using the finished run in {out_dir}")
            return record
        times["load"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        # the teachers' logits for every label on the pool, computed once per teacher set and pool and shared by
        # every run that amalgamates these teachers (C = A, the Fig. 3 pairs); C's columns are picked from it
        every = task_plan(None, labels)
        soft = pool_soft_targets(teachers, every, paths, bench, pool, teachers_dir, device)
        soft = soft[:, [every.tasks.index(t) for t in plan.tasks]]
        times["teacher_targets"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        torch.manual_seed(seed)             # the filters' initial weights: the same in every run of this seed
        filters = make_filters(student, teachers, preset.student.filter_reduction)
        result = Amalgamation(student, filters, plan, np.full((student.num_blocks, len(plan.tasks)), np.nan))
        done = store.last_finished(student.num_blocks, log)
        if done:
            store.load(done, result)
            log(f"resuming after block {student.block_names[done - 1]} ({done}/{student.num_blocks} finished)")
        result = amalgamate(student, teachers, plan, pool, preset.student.block, images_per_block=preset.student.block_images,
                            block_epochs=preset.student.block_epochs, heldout=preset.student.loss_slice, seed=seed, soft=soft,
                            filters=filters, start_block=done + 1, previous=result, cache_dtype=cache_dtype,
                            augment=augment, device=device, hooks=store.hooks(done, student.block_names, log))
        times["blocks"] = time.perf_counter() - t0
        names = student.block_names

        chosen = branch_points(result.losses)
        points = tolerant_branch_points(result.losses, preset.student.branch_tolerance) if forced is None else forced
        record = {
            "run_key": run_key, "preset": preset.name, "teacher_set": teacher_set, "arch": arch, "init": init,
            "seed": seed,
            "teachers": [str(p) for p in paths], "tasks": list(plan.tasks),
            "task_teacher": [n + 1 for n in plan.teacher], "blocks": names,
            "pool": {"train": len(pool) - preset.student.loss_slice, "heldout": preset.student.loss_slice,
                     "images_per_block": preset.student.block_images, "block_epochs": list(preset.student.block_epochs)},
            "converged_loss": {t: {names[k]: round(float(result.losses[k, i]), 5) for k in range(len(names))}
                               for i, t in enumerate(plan.tasks)},
            "block_train_loss": {names[k]: [round(v, 5) for v in h] for k, h in enumerate(result.train_loss)},
            "chosen_block": {t: names[s - 1] for t, s in zip(plan.tasks, chosen)},
            "branch_block": {t: names[s - 1] for t, s in zip(plan.tasks, points)},
            "branch_at": branch_at, "branch_tolerance": preset.student.branch_tolerance, "evaluated_on": eval_split,
            "pairs": {name: list(pair) for name, pair in preset.labels.pairs.items()
                      if teacher_set != "3" and all(t in plan.tasks for t in pair)},
        }
        # the TargetNet of the preset's rule, and where that is not Eq. 9 the paper's own as a second row
        variants = {"target": points}
        if points != chosen and branch_at is None:
            variants["eq9"] = chosen
        keys = {name: digest([store.fingerprint, pts, dataclasses.asdict(preset.student.finetune), preset.student.finetune_images,
                              preset.student.finetune_freeze_bn]) for name, pts in variants.items()}
        partials = {name: store.dir / f"finetune-{key}.partial.pt" for name, key in keys.items()}
        for stale in store.dir.glob("finetune-*.partial.pt"):   # of other branch points or fine-tuning settings
            if stale not in partials.values():
                stale.unlink(missing_ok=True)
        ft_idx = block_subset(train_idx, 0, preset.student.finetune_images, seed)
        teachers_params = sum(count_parameters(t) for t in teachers)

        def assemble_and_finetune(name: str) -> tuple[dict, float]:
            """One TargetNet: Eq. 10 for the variant's branch blocks, Alg. 1 line 14, evaluation; saved as
            ``targetnet.pt`` (the preset's rule) or ``targetnet-NAME.pt``."""
            t0 = time.perf_counter()
            pts = variants[name]
            target = assemble(student, filters, teachers, plan, pts)
            pre_finetune = predict(target, eval_images, device=device) if evaluate else None
            held_before = heldout_loss(target, pool[held_idx], soft[held_idx], device=device)
            losses = finetune(target, pool[ft_idx], soft[ft_idx], preset.student.finetune, seed,
                              freeze_bn=preset.student.finetune_freeze_bn, device=device,
                              store=EpochFile(partials[name], keys[name]), augment=augment, teachers=teachers, plan=plan)
            held_after = heldout_loss(target, pool[held_idx], soft[held_idx], device=device)
            entry = {"branch_block": {t: names[s - 1] for t, s in zip(plan.tasks, pts)},
                     "params": {"targetnet": count_parameters(target), "teachers": teachers_params,
                                "branches": target.branch_names},
                     "finetune_loss": [round(v, 5) for v in losses],
                     "heldout_loss": {"before_finetune": round(float(held_before.mean()), 5),
                                      "after_finetune": round(float(held_after.mean()), 5)}}
            if evaluate:
                entry["target_ap_before_finetune"] = _ap_dict(plan.tasks, pre_finetune, eval_y)
                entry["target_ap"] = _ap_dict(plan.tasks, predict(target, eval_images, device=device), eval_y)
            save_target(_target_files(out_dir, name)[0], target,
                        role="targetnet", preset=preset.name, init=init, teacher_set=teacher_set,
                        data=bench.spec.key(), **({f"{eval_split}_ap": entry["target_ap"]} if evaluate else {}))
            return entry, time.perf_counter() - t0

        jobs = [lambda n=n: assemble_and_finetune(n) for n in variants]
        for name, (entry, seconds) in zip(variants, run_parallel(jobs, device=device)):
            times["finetune" if name == "target" else f"finetune_{name}"] = seconds
            if name == "target":
                record.update(entry)
            else:
                record[name] = entry

        if evaluate:
            t0 = time.perf_counter()
            if branch_curves:
                curves = branch_logits(student, filters, teachers, plan, eval_images, device=device)
                branch_ap = np.stack([ap_voc07(c.numpy(), eval_y.numpy()) for c in curves])   # (B, |C|)
                record["branch_ap"] = {t: {names[k]: round(float(branch_ap[k, i]), 3) for k in range(len(names))}
                                       for i, t in enumerate(plan.tasks)}
                record["ap_best_block"] = {t: names[int(np.argmax(branch_ap[:, i]))] for i, t in enumerate(plan.tasks)}
                record["stage_map"] = {s: round(mean_of(branch_ap[k - 1]), 3)
                                       for s, k in student.stage_ends.items()}
                times["branch_curves"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            teacher_scores = torch.empty(len(eval_images), len(plan.tasks))
            for n in plan.active_teachers:
                teacher_scores[:, plan.per_teacher[n]] = select_tasks(
                    predict(teachers[n], eval_images, device=device), plan.local_per_teacher[n])
            record["teacher_ap"] = _ap_dict(plan.tasks, teacher_scores, eval_y)
            times["evaluation"] = time.perf_counter() - t0
            if log:
                log(f"teachers mAP {record['teacher_ap']['mAP']:.2f}; TargetNet mAP "
                    f"{record['target_ap_before_finetune']['mAP']:.2f} before / {record['target_ap']['mAP']:.2f} "
                    f"after fine-tuning ({eval_split} split)")
        times["total"] = sum(times.values())
        record["peak_rss_mb"] = peak.mib()
        record["seconds"] = {k: round(v, 1) for k, v in times.items()}
        record["seconds"]["per_block"] = {names[k]: round(s, 1) for k, s in enumerate(result.seconds)}
        record["files"] = {p.name: file_sha(p) for name in variants for p in _target_files(out_dir, name)}
        atomic_write(out_dir / "run.json", lambda p: p.write_text(json.dumps(record, indent=1)))
        for partial in partials.values():
            partial.unlink(missing_ok=True)
        return record


def _target_files(out_dir: Path, name: str) -> tuple[Path, Path]:
    """Weights and JSON of a run's TargetNet: ``targetnet.pt`` (the preset's rule) or ``targetnet-NAME.pt``."""
    path = out_dir / ("targetnet.pt" if name == "target" else f"targetnet-{name}.pt")
    return path, path.with_suffix(".json")


def finished_record(out_dir: Path, run_key: str, log: Callable[[str], None] = print) -> dict | None:
    """The record in ``out_dir/run.json`` when it is valid (:func:`kalib.runs.records.verify`): it belongs to
    ``run_key`` and every file it lists is still there with the digest it had when the run finished (a
    record of a kalib that kept no digests: its TargetNet loads); ``None`` (the run is redone from its
    finished blocks) otherwise."""
    record = read_record(out_dir / "run.json")       # None: none yet, or cut off
    if record is None:
        return None
    files = record.get("files")
    listed = ({out_dir / name: sha for name, sha in files.items()} if files is not None
              else {out_dir / "targetnet.pt": None})
    verdict = verify(record.get("run_key"), run_key, listed, load=load_target)
    if verdict.valid:
        return record
    if verdict.status == DAMAGED:
        log(f"{', '.join(p.name for p in verdict.damaged)} in {out_dir} missing, corrupt or truncated (not what "
            "run.json recorded); redoing the run from its finished blocks")
    return None


def _remove_finished(out_dir: Path, log: Callable[[str], None]) -> None:
    """``--restart``: the finished record first, then the TargetNets it describes."""
    for path in [out_dir / "run.json", *sorted(out_dir.glob("targetnet*.pt")),
                 *sorted(out_dir.glob("targetnet*.json"))]:
        if path.is_file():
            path.unlink()
            log(f"--restart: removed {path}")


def _eval_split(bench, split: str, plan: TaskPlan) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels (tasks of C) of the split a run is evaluated on: ``test`` (reported numbers) or
    ``val`` (choosing settings)."""
    if split not in ("test", "val"):
        raise ConfigError(f"unknown evaluation split '{split}'; valid: test, val")
    images, labels = getattr(bench, f"{split}_images", None), getattr(bench, f"{split}_labels", None)
    if images is None or labels is None:
        raise ConfigError(f"this dataset has no '{split}' split; evaluate on 'test'")
    return images, labels[:, bench.label_indices(plan.tasks)]
