"""The whole amalgamation run behind ``python -m kalib amalgamate``: Alg. 1 from the
teacher checkpoints to the fine-tuned TargetNet and its evaluation, with the teachers' soft targets
cached once per teacher set, block-wise training resumable per block and per epoch, fine-tuning
resumable per epoch, and the run record ``run.json`` (Fig. 3 curves, Table 1 APs, seconds)."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..augment import BatchAugment
from ..device import as_device, resolve_precision
from ..distributed import on_writer, writer_context
from ..errors import ConfigError, MissingFileError
from ..files import atomic_write, file_sha
from ..memory import PeakMemory
from ..method.blockwise import Amalgamation, amalgamate, branch_logits
from ..method.branch import branch_points, forced_branch_points, tolerant_branch_points
from ..method.filters import TaskPlan, select_tasks, task_plan
from ..method.finetune import finetune, heldout_loss
from ..method.pool import block_subset, epochs_per_block, split_pool
from ..method.student import init_student, make_filters
from ..method.targetnet import assemble, count_parameters
from ..metrics import ap_dict, ap_voc07, mean_of
from ..train import predict
from .checkpoints import EpochFile, load_model, load_target, read_meta, save_target
from .config import digest, file_digest, weights_key
from .locks import run_lock
from .parallel import run_parallel
from .records import DAMAGED, read_record, verify
from .state import BlockStore, check_teachers, load_teachers, pool_soft_targets, teacher_files


def _ap_dict(names, scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """The record's APs: :func:`kalib.metrics.ap_dict` (VOC2007 11-point), three decimals."""
    return ap_dict(names, scores.numpy(), targets.numpy(), digits=3)


@dataclass(frozen=True)
class _Job:
    """What one run is asked to do (``run``'s arguments, defaults resolved)."""
    bench: object
    preset: object
    teachers_dir: Path
    out_dir: Path
    teacher_set: str
    init: str
    branch_at: str | None
    evaluate: bool
    branch_curves: bool
    seed: int
    log: Callable[[str], None]
    device: torch.device
    eval_split: str
    precision: str          # of the training steps, resolved: fp32 or bf16


@dataclass(frozen=True)
class _Inputs:
    """What a run reads and checks before any work: the teachers (and their files), the task plan of C, the
    evaluation split, the student's start, the forced branch blocks and the amalgamation pool."""
    arch: str
    paths: list
    generic_path: Path
    teachers: list
    labels: list
    plan: TaskPlan
    eval_images: torch.Tensor | None
    eval_y: torch.Tensor | None
    student: object
    forced: list | None
    pool: torch.Tensor
    train_idx: np.ndarray
    held_idx: np.ndarray


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
    and foreign teachers are refused before any work; one process (or one torchrun job, whose rank 0 alone
    writes: :mod:`kalib.distributed`) at a time works in ``out_dir`` (:func:`kalib.runs.locks.run_lock`).
    ``device``: where the networks run (default CPU). The training steps (blocks, fine-tuning) run in
    ``preset.precision`` resolved for the device (:func:`kalib.device.resolve_precision`), recorded as
    ``precision``; evaluation stays float32 on the CPU.

    The steps: :func:`_check_inputs` (before any work), :func:`_settings` and :func:`_run_key` (what the
    saved state and the finished record belong to), :func:`_soft_targets`, :func:`_train_blocks` (Alg. 1
    lines 2–11 through :meth:`BlockStore.hooks`), :func:`_branch_out` (Eq. 9 and the record),
    :func:`_finetune_variants` (Eq. 10 and Alg. 1 line 14 for each TargetNet), :func:`_evaluate_run` and
    :func:`_save_record`.
    """
    job = _Job(bench, preset, Path(teachers_dir), Path(out_dir), teacher_set,
               preset.student.student_init if init is None else init, branch_at, evaluate, branch_curves,
               preset.seed if seed is None else seed, log, as_device(device), eval_split,
               resolve_precision(preset.precision, as_device(device)))
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    peak = PeakMemory()
    inputs = _check_inputs(job, tasks)
    settings = _settings(job, inputs)
    augment = BatchAugment(job.seed) if preset.augment else None
    with writer_context(lambda: run_lock(job.out_dir, what=f"amalgamation into {job.out_dir}")):
        if restart:
            on_writer(lambda: _remove_finished(job.out_dir, log))
        store = BlockStore(job.out_dir, digest(settings), legacy=digest(_settings(job, inputs, file_digest)))
        store.prepare(settings, restart, log)
        run_key = _run_key(job, store)
        record = on_writer(lambda: finished_record(job.out_dir, run_key, log))
        if record is not None:
            log(f"re-using the finished run in {job.out_dir}")
            return record
        times["load"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        soft = _soft_targets(job, inputs)
        times["teacher_targets"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        result = _train_blocks(job, inputs, store, soft, augment)
        times["blocks"] = time.perf_counter() - t0

        record, variants = _branch_out(job, inputs, result, run_key)
        partials = _finetune_variants(job, inputs, store, result, soft, augment, variants, record, times)
        if job.evaluate:
            _evaluate_run(job, inputs, result, record, times)
        return _save_record(job, record, times, peak, result, variants, partials)


def _check_inputs(job: _Job, tasks) -> _Inputs:
    """Everything a run reads and checks before any work: the teachers (foreign ones refused), the task set C
    (unknown tasks refused), the evaluation split, the generic start (when the student starts from it), the
    student (Alg. 1 line 1), ``--branch-at`` and the pool with its held-out slice (too small: refused)."""
    preset = job.preset
    arch, paths, generic_path = teacher_files(preset, job.teachers_dir, job.teacher_set)
    metas = [read_meta(p) for p in paths]
    generic_meta = read_meta(generic_path) if job.init == "generic" and generic_path.is_file() else None
    check_teachers(paths, metas, arch, job.bench.label_names, generic_path, generic_meta,
                   data_key=job.bench.spec.key(), arch_kwargs=preset.teacher_set(job.teacher_set)[2])
    teachers, labels = load_teachers(paths, job.device)
    plan = task_plan(tasks, labels)
    eval_images, eval_y = _eval_split(job.bench, job.eval_split, plan) if job.evaluate else (None, None)
    generic = None
    if job.init == "generic":
        if not generic_path.is_file():
            raise MissingFileError(f"{generic_path} (the generic backbone the teachers started from) is "
                                   "missing; use --init random or teacher1, or rerun pretrain")
        generic = load_model(generic_path)[0]
    student = init_student(job.init, teachers, generic, job.seed)
    # an unknown --branch-at is refused here, before any work
    forced = (forced_branch_points(student, job.branch_at, len(plan.tasks)) if job.branch_at is not None
              else None)
    pool = job.bench.pool_images[:preset.student.pool_images or None]
    train_idx, held_idx = split_pool(len(pool), preset.student.loss_slice)     # a pool too small is refused here
    return _Inputs(arch, paths, generic_path, teachers, labels, plan, eval_images, eval_y, student, forced, pool,
                   train_idx, held_idx)


def _settings(job: _Job, inputs: _Inputs, key=weights_key) -> dict:
    """The settings block-wise training depends on; their digest is the fingerprint of ``OUT/blocks``. Teachers
    and the generic start count by their weights (``key``; :func:`kalib.runs.config.file_digest` gives the
    settings of a directory of an older kalib, whose blocks are re-used)."""
    student = job.preset.student
    return {"data": job.bench.spec.key(), "pool": len(inputs.pool), "teachers": [key(p) for p in inputs.paths],
            "generic": key(inputs.generic_path) if job.init == "generic" else None, "init": job.init,
            "tasks": list(inputs.plan.tasks), "block": dataclasses.asdict(student.block),
            "block_images": student.block_images, "loss_slice": student.loss_slice, "seed": job.seed,
            **({"block_epochs": list(student.block_epochs)} if student.block_epochs else {}),
            "reduction": student.filter_reduction, **({"augment": True} if job.preset.augment else {}),
            **({"precision": job.precision} if job.precision != "fp32" else {})}   # fp32: the fingerprint of before


def _run_key(job: _Job, store: BlockStore) -> str:
    """The key of the finished record: the blocks' fingerprint and everything after block-wise training."""
    student = job.preset.student
    return digest([store.fingerprint, job.branch_at, dataclasses.asdict(student.finetune), student.finetune_images,
                   student.finetune_freeze_bn, job.evaluate, job.branch_curves, student.branch_tolerance,
                   job.eval_split, *([student.eq9_finetune_lr] if student.eq9_finetune_lr else [])])


def finetune_schedule(student, variant: str):
    """The fine-tuning schedule of a TargetNet variant: the preset's, at ``eq9_finetune_lr`` for the Eq. 9
    TargetNet where the preset chose one for it (each rule's net gets the learning rate chosen for it on the
    validation split)."""
    if variant == "eq9" and student.eq9_finetune_lr:
        return dataclasses.replace(student.finetune, lr=student.eq9_finetune_lr)
    return student.finetune


def _soft_targets(job: _Job, inputs: _Inputs) -> torch.Tensor:
    """The teachers' logits for the tasks of C on the pool. They are computed for every label, once per
    teacher set and pool, and shared by every run that amalgamates these teachers (C = A, the Fig. 3 pairs);
    C's columns are picked from them."""
    every = task_plan(None, inputs.labels)
    soft = pool_soft_targets(inputs.teachers, every, inputs.paths, job.bench, inputs.pool, job.teachers_dir,
                             job.device)
    return soft[:, [every.tasks.index(t) for t in inputs.plan.tasks]]


def _train_blocks(job: _Job, inputs: _Inputs, store: BlockStore, soft: torch.Tensor, augment) -> Amalgamation:
    """Block-wise training (Alg. 1 lines 2–11, Eq. 6–8), resumed after the last finished block in ``store``,
    whose hooks keep every finished block and the epochs of the block in progress."""
    student, s = inputs.student, job.preset.student
    torch.manual_seed(job.seed)             # the filters' initial weights: the same in every run of this seed
    filters = make_filters(student, inputs.teachers, s.filter_reduction)
    result = Amalgamation(student, filters, inputs.plan, np.full((student.num_blocks, len(inputs.plan.tasks)), np.nan))
    done = store.last_finished(student.num_blocks, job.log)
    if done:
        store.load(done, result)
        job.log(f"resuming after block {student.block_names[done - 1]} ({done}/{student.num_blocks} finished)")
    job.log(block_plan(s, student.block_names, len(inputs.train_idx)))
    return amalgamate(student, inputs.teachers, inputs.plan, inputs.pool, s.block, images_per_block=s.block_images,
                      block_epochs=s.block_epochs, heldout=s.loss_slice, seed=job.seed, soft=soft, filters=filters,
                      start_block=done + 1, previous=result, cache_dtype=getattr(torch, s.amalgamation_cache),
                      augment=augment, device=job.device, hooks=store.hooks(done, student.block_names, job.log),
                      precision=job.precision)


def block_plan(student, names, train_images: int) -> str:
    """One line for the start of a run: the epochs each block gets (``block_epochs`` read as a depth profile
    where its length is not the number of blocks) and the images it trains on."""
    epochs = (epochs_per_block(student.block_epochs, len(names)) if student.block_epochs
              else [student.block.epochs] * len(names))
    images = min(student.block_images or train_images, train_images)
    return (f"block-wise training: {', '.join(f'{n} {e}' for n, e in zip(names, epochs))} epochs, "
            f"{images:,} pool images per block at lr {student.block.lr:g}")


def _branch_out(job: _Job, inputs: _Inputs, result: Amalgamation, run_key: str) -> tuple[dict, dict]:
    """Eq. 9's branch blocks, the preset's rule's (or ``--branch-at``'s), and the record of the run so far;
    returns it with the TargetNets to build, name -> branch blocks: ``target`` (the preset's rule) and,
    where that is not Eq. 9, ``eq9`` (the paper's own, as a second row)."""
    preset, plan, names = job.preset, inputs.plan, inputs.student.block_names
    chosen = branch_points(result.losses)
    points = (tolerant_branch_points(result.losses, preset.student.branch_tolerance) if inputs.forced is None
              else inputs.forced)
    record = {
        "run_key": run_key, "preset": preset.name, "teacher_set": job.teacher_set, "arch": inputs.arch,
        "init": job.init, "seed": job.seed, "precision": job.precision,
        "teachers": [str(p) for p in inputs.paths], "tasks": list(plan.tasks),
        "task_teacher": [n + 1 for n in plan.teacher], "blocks": names,
        "pool": {"train": len(inputs.pool) - preset.student.loss_slice, "heldout": preset.student.loss_slice,
                 "images_per_block": preset.student.block_images,
                 "block_epochs": list(preset.student.block_epochs)},
        "converged_loss": {t: {names[k]: round(float(result.losses[k, i]), 5) for k in range(len(names))}
                           for i, t in enumerate(plan.tasks)},
        "block_train_loss": {names[k]: [round(v, 5) for v in h] for k, h in enumerate(result.train_loss)},
        "chosen_block": {t: names[s - 1] for t, s in zip(plan.tasks, chosen)},
        "branch_block": {t: names[s - 1] for t, s in zip(plan.tasks, points)},
        "branch_at": job.branch_at, "branch_tolerance": preset.student.branch_tolerance,
        "evaluated_on": job.eval_split,
        "pairs": {name: list(pair) for name, pair in preset.labels.pairs.items()
                  if job.teacher_set != "3" and all(t in plan.tasks for t in pair)},
    }
    variants = {"target": points}
    if points != chosen and job.branch_at is None:
        variants["eq9"] = chosen
    return record, variants


def _finetune_variants(job: _Job, inputs: _Inputs, store: BlockStore, result: Amalgamation, soft: torch.Tensor,
                       augment, variants: dict, record: dict, times: dict) -> dict[str, Path]:
    """Every TargetNet of ``variants`` assembled and fine-tuned (:func:`_assemble_and_finetune`), side by
    side; the preset's rule's entries go into ``record`` itself, another variant's under its name. Returns
    the epoch files of the fine-tunings (removed once the record is saved); those of other branch blocks or
    fine-tuning settings are removed first."""
    s = job.preset.student
    keys = {name: digest([store.fingerprint, pts, dataclasses.asdict(finetune_schedule(s, name)), s.finetune_images,
                          s.finetune_freeze_bn]) for name, pts in variants.items()}
    partials = {name: store.dir / f"finetune-{key}.partial.pt" for name, key in keys.items()}

    def remove_stale() -> None:
        for stale in store.dir.glob("finetune-*.partial.pt"):
            if stale not in partials.values():
                stale.unlink(missing_ok=True)
    on_writer(remove_stale)
    ft_idx = block_subset(inputs.train_idx, 0, s.finetune_images, job.seed)
    teachers_params = sum(count_parameters(t) for t in inputs.teachers)
    jobs = [lambda n=n: _assemble_and_finetune(job, inputs, result, soft, augment, n, variants[n], ft_idx,
                                               EpochFile(partials[n], keys[n]), teachers_params)
            for n in variants]
    for name, (entry, seconds) in zip(variants, run_parallel(jobs, device=job.device)):
        times["finetune" if name == "target" else f"finetune_{name}"] = seconds
        if name == "target":
            record.update(entry)
        else:
            record[name] = entry
    return partials


def _assemble_and_finetune(job: _Job, inputs: _Inputs, result: Amalgamation, soft: torch.Tensor, augment,
                           name: str, pts, ft_idx, store: EpochFile, teachers_params: int) -> tuple[dict, float]:
    """One TargetNet: Eq. 10 for the variant's branch blocks ``pts``, Alg. 1 line 14, evaluation; saved as
    ``targetnet.pt`` (the preset's rule) or ``targetnet-NAME.pt``. Returns its record entry and seconds."""
    t0 = time.perf_counter()
    s, plan, pool, held, device = job.preset.student, inputs.plan, inputs.pool, inputs.held_idx, job.device
    target = assemble(inputs.student, result.filters, inputs.teachers, plan, pts)
    pre_finetune = predict(target, inputs.eval_images, device=device) if job.evaluate else None
    held_before = heldout_loss(target, pool[held], soft[held], device=device)
    losses = finetune(target, pool[ft_idx], soft[ft_idx], finetune_schedule(s, name), job.seed,
                      freeze_bn=s.finetune_freeze_bn,
                      device=device, store=store, augment=augment, teachers=inputs.teachers, plan=plan,
                      precision=job.precision)
    held_after = heldout_loss(target, pool[held], soft[held], device=device)
    names = inputs.student.block_names
    entry = {"branch_block": {t: names[k - 1] for t, k in zip(plan.tasks, pts)},
             "params": {"targetnet": count_parameters(target), "teachers": teachers_params,
                        "branches": target.branch_names},
             "finetune_loss": [round(v, 5) for v in losses],
             "heldout_loss": {"before_finetune": round(float(held_before.mean()), 5),
                              "after_finetune": round(float(held_after.mean()), 5)}}
    if job.evaluate:
        entry["target_ap_before_finetune"] = _ap_dict(plan.tasks, pre_finetune, inputs.eval_y)
        entry["target_ap"] = _ap_dict(plan.tasks, predict(target, inputs.eval_images, device=device), inputs.eval_y)
    save_target(_target_files(job.out_dir, name)[0], target,
                role="targetnet", preset=job.preset.name, init=job.init, teacher_set=job.teacher_set,
                data=job.bench.spec.key(), **({f"{job.eval_split}_ap": entry["target_ap"]} if job.evaluate else {}))
    return entry, time.perf_counter() - t0


def _evaluate_run(job: _Job, inputs: _Inputs, result: Amalgamation, record: dict, times: dict) -> None:
    """Into ``record``: with ``branch_curves`` the AP of every task at every branch-out block (Fig. 3, the
    Target b1..b4 rows: ``branch_ap``, ``ap_best_block``, ``stage_map``), and the teachers' APs."""
    plan, eval_images, eval_y, names = inputs.plan, inputs.eval_images, inputs.eval_y, inputs.student.block_names
    t0 = time.perf_counter()
    if job.branch_curves:
        curves = branch_logits(inputs.student, result.filters, inputs.teachers, plan, eval_images, device=job.device)
        branch_ap = np.stack([ap_voc07(c.numpy(), eval_y.numpy()) for c in curves])   # (B, |C|)
        record["branch_ap"] = {t: {names[k]: round(float(branch_ap[k, i]), 3) for k in range(len(names))}
                               for i, t in enumerate(plan.tasks)}
        record["ap_best_block"] = {t: names[int(np.argmax(branch_ap[:, i]))] for i, t in enumerate(plan.tasks)}
        record["stage_map"] = {s: round(mean_of(branch_ap[k - 1]), 3) for s, k in inputs.student.stage_ends.items()}
        times["branch_curves"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    teacher_scores = torch.empty(len(eval_images), len(plan.tasks))
    for n in plan.active_teachers:
        teacher_scores[:, plan.per_teacher[n]] = select_tasks(
            predict(inputs.teachers[n], eval_images, device=job.device), plan.local_per_teacher[n])
    record["teacher_ap"] = _ap_dict(plan.tasks, teacher_scores, eval_y)
    times["evaluation"] = time.perf_counter() - t0
    if job.log:
        job.log(f"teachers mAP {record['teacher_ap']['mAP']:.2f}; TargetNet mAP "
                f"{record['target_ap_before_finetune']['mAP']:.2f} before / {record['target_ap']['mAP']:.2f} "
                f"after fine-tuning ({job.eval_split} split)")


def _save_record(job: _Job, record: dict, times: dict, peak: PeakMemory, result: Amalgamation, variants: dict,
                 partials: dict[str, Path]) -> dict:
    """The record's seconds, peak memory and the digests of the TargetNet files it describes, written to
    ``run.json`` (atomically); then the fine-tunings' epoch files are removed. Returns the record."""
    names = result.student.block_names
    times["total"] = sum(times.values())
    record["peak_rss_mb"] = peak.mib()
    record["seconds"] = {k: round(v, 1) for k, v in times.items()}
    record["seconds"]["per_block"] = {names[k]: round(s, 1) for k, s in enumerate(result.seconds)}
    record["files"] = {p.name: file_sha(p) for name in variants for p in _target_files(job.out_dir, name)}

    def write() -> None:
        atomic_write(job.out_dir / "run.json", lambda p: p.write_text(json.dumps(record, indent=1)))
        for partial in partials.values():
            partial.unlink(missing_ok=True)
    on_writer(write)
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
