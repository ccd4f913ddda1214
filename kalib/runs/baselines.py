"""The baseline runs of Tables 1 and 2 (:mod:`kalib.method.baselines`) on disk: trained once, checkpointed per
epoch, re-used while their settings and inputs are unchanged. Each writes ``DIR/<row>.pt`` (+ JSON with its
settings key, schedule, training precision, seconds and APs on the validation and test splits). They train in
the preset's ``precision`` (:func:`kalib.device.resolve_precision`); a precision other than fp32 is part of
their settings key.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..device import as_device, resolve_precision
from ..errors import CheckpointError
from ..memory import PeakMemory
from ..method.baselines import TeacherEnsemble, kd_student, train_kd_passes, train_supervised
from ..macs import SAMPLE, forward_macs_per_image
from ..method.filters import task_plan
from ..method.merge import merged_student
from ..method.pool import split_pool
from ..method.student import init_student
from ..method.teachers import evaluate
from ..train import to_input
from .budget import kd_costs, kd_macs, kd_passes, run_macs
from .checkpoints import EpochFile, load_model, read_meta, save_model
from .config import digest, file_digest, weights_key
from .records import verify
from .state import load_teachers, pool_soft_targets, teacher_files


def _teachers(preset, teachers_dir: Path):
    """The frozen teachers of the two-teacher set, the plan of C = A, their paths and the generic start's."""
    _, paths, generic_path = teacher_files(preset, teachers_dir, "2")
    teachers, labels = load_teachers(paths)
    plan = task_plan(None, labels)
    return teachers, plan, paths, generic_path


def _finished(path: Path, key: str, legacy: str | None = None) -> dict | None:
    """The record of a finished baseline at ``path`` with settings ``key`` (or ``legacy``, the key of the same
    settings before teachers were keyed by their weights) whose weights are still what was saved
    (:func:`kalib.runs.records.verify`: their digest, or without one, they load); else None (it is trained
    again, whatever the reason)."""
    try:
        meta = read_meta(path)
    except CheckpointError:
        return None
    key = legacy if legacy is not None and meta.get("key") == legacy else key
    verdict = verify(meta.get("key"), key, {path.with_suffix(".pt"): meta.get("weights_sha256")}, load=load_model)
    return meta["record"] if verdict.valid else None


def _evaluated(model, bench, tasks, device) -> dict:
    idx = bench.label_indices(tasks)
    out = {"test_ap": evaluate(model, bench.test_images, bench.test_labels[:, idx], tasks, device)}
    if getattr(bench, "val_images", None) is not None:
        out["val_ap"] = evaluate(model, bench.val_images, bench.val_labels[:, idx], tasks, device)
    return out


def _precision(preset, device) -> dict:
    """The settings entry of the baseline's training precision: none for fp32 (the keys of before)."""
    precision = resolve_precision(preset.precision, as_device(device))
    return {"precision": precision} if precision != "fp32" else {}


def _train_and_save(path: Path, settings: dict, legacy: dict, model, train: Callable[..., list], bench, tasks,
                    device, log) -> dict:
    """The baseline of ``settings`` (``legacy``: the settings' values that were keyed otherwise before, which a
    saved baseline may carry) from ``path`` when it is finished, else trained by ``train`` and saved there."""
    key, old_key = digest(settings), digest({**settings, **legacy})
    done = _finished(path, key, old_key)
    if done is not None:
        log(f"re-using {path}")
        return done
    t0, peak = time.perf_counter(), PeakMemory()
    precision = settings.get("precision", "fp32")
    history = train(store=EpochFile(path.with_suffix(".partial.pt"), key, legacy=old_key), device=device,
                    precision=precision)
    record = {**settings, "precision": precision, "loss": [round(v, 5) for v in history], "seconds": round(time.perf_counter() - t0, 1),
              **_evaluated(model.eval(), bench, tasks, device), "peak_rss_mb": peak.mib()}
    save_model(path, model, role=path.stem.lower(), key=key, record=record)
    path.with_suffix(".partial.pt").unlink(missing_ok=True)
    return record


def kd_run(preset, bench, teachers_dir: Path, out_dir: Path, seed: int, device=None, log=print, *,
           main_record: dict) -> dict:
    """The KD baseline at equal training compute: the student's start with the teachers' own head rows
    (:func:`kalib.method.baselines.kd_student`), trained end to end against the teachers' soft targets on the
    preset's amalgamation pool (its training part; Eq. 9's held-out slice is left out, as for the student)
    for as many image passes as give it the training MACs of the table's main TargetNet (``main_record``:
    that run's record, whose branch blocks decide its fine-tuning's cost; :mod:`kalib.runs.budget`), at the
    learning rate ``preset.baselines.kd.lr`` (chosen on the validation split at that budget)."""
    teachers, plan, paths, generic_path = _teachers(preset, teachers_dir)
    pool = bench.pool_images[:preset.student.pool_images or None]
    train_idx, _ = split_pool(len(pool), preset.student.loss_slice)
    soft = pool_soft_targets(teachers, plan, paths, bench, pool, teachers_dir, device)[train_idx]
    images = pool[train_idx]
    budget = run_macs(preset, teachers, plan, [main_record["branch_block"][t] for t in plan.tasks], images[:SAMPLE],
                      train_images=len(train_idx))["total"]
    generic = load_model(generic_path)[0] if preset.student.student_init == "generic" else None
    torch.manual_seed(seed)                   # as the crossover study's KD arm: the same network from a seed
    student = kd_student(init_student(preset.student.student_init, teachers, generic, seed), teachers, plan)
    kd = preset.baselines.kd
    costs = kd_costs(student, teachers, plan, images[:SAMPLE])
    image_passes = kd_passes(budget, costs, train_images=len(train_idx), batch_size=kd.batch_size)
    macs = kd_macs(costs, train_images=len(train_idx), image_passes=image_passes)
    settings = {"row": "KD", "data": bench.spec.key(), "teachers": [weights_key(p) for p in paths],
                "init": preset.student.student_init, "head": "teachers", "images": len(train_idx),
                "schedule": dataclasses.asdict(kd), "budget_macs": budget, "image_passes": image_passes,
                "train_macs": macs["total"], "seed": seed, "tasks": list(plan.tasks), **_precision(preset, device)}
    return _train_and_save(Path(out_dir) / "KD.pt", settings, {"teachers": [file_digest(p) for p in paths]}, student,
                           lambda **kw: train_kd_passes(student, images, soft, kd, image_passes, seed, **kw),
                           bench, plan.tasks, device, log)


MERGE_LAMBDAS = (0.3, 0.4, 0.5, 0.7, 1.0)      # the crossover study's grid (docs/design.md §9); 0.5 = the mean


def merge_run(preset, bench, teachers_dir: Path, out_dir: Path, device=None, log=print) -> dict:
    """The training-free row: the two teachers merged in weight space from their shared start
    (:func:`kalib.method.merge.merged_student`), BatchNorm statistics re-estimated on the images KD trains on (the
    amalgamation pool's training part), λ chosen on the validation split from :data:`MERGE_LAMBDAS` (on a data set
    without one, the paper's VOC and COCO, λ = 1/n: the plain mean). Its training MACs are those forward passes."""
    teachers, plan, paths, generic_path = _teachers(preset, teachers_dir)
    pool = bench.pool_images[:preset.student.pool_images or None]
    train_idx, _ = split_pool(len(pool), preset.student.loss_slice)
    images = pool[train_idx]
    lambdas = MERGE_LAMBDAS if getattr(bench, "val_images", None) is not None else (1 / len(teachers),)
    settings = {"row": "Merge", "data": bench.spec.key(), "teachers": [weights_key(p) for p in paths],
                "start": weights_key(generic_path), "images": len(train_idx), "lambdas": list(lambdas),
                "tasks": list(plan.tasks)}
    legacy = {"teachers": [file_digest(p) for p in paths], "start": file_digest(generic_path)}
    key, path = digest(settings), Path(out_dir) / "Merge.pt"
    if (done := _finished(path, key, digest({**settings, **legacy}))) is not None:
        log(f"re-using {path}")
        return done
    t0, start = time.perf_counter(), load_model(generic_path)[0]
    nets = {lam: merged_student(start, teachers, plan, lam, images, device=device) for lam in lambdas}
    idx = bench.label_indices(plan.tasks)
    grid = {lam: evaluate(net, bench.val_images, bench.val_labels[:, idx], plan.tasks, device)["mAP"]
            for lam, net in nets.items()} if len(lambdas) > 1 else {}
    lam = max(lambdas, key=lambda v: (grid[v], -v)) if grid else lambdas[0]
    macs = forward_macs_per_image(nets[lam], to_input(images[:SAMPLE])) * len(images)
    record = {**settings, "lam": lam, "val_map_by_lambda": {f"{v:g}": round(m, 3) for v, m in grid.items()},
              "train_macs": int(macs), "seconds": round(time.perf_counter() - t0, 1),
              **_evaluated(nets[lam], bench, plan.tasks, device)}
    save_model(path, nets[lam], role="merge", key=key, record=record)
    log(f"Merge: lambda {lam:g} chosen on validation ({', '.join(f'{v:g}: {m:.1f}' for v, m in grid.items())})" if grid
        else f"Merge: lambda {lam:g}, the mean (no validation split to choose it on)")
    return record


def supervised_run(preset, bench, teachers_dir: Path, out_dir: Path, seed: int, device=None,
                   log=print, warm_start: Path | None = None) -> dict:
    """The supervised baseline (:func:`kalib.method.baselines.train_supervised`) on the train split's labels of every
    task of C, from the generic start (or from ``warm_start``, Table 1's supervised network, for Table 2 as its
    teachers start from Table 1's), for as many epochs as all teachers together."""
    _, plan, paths, generic_path = _teachers(preset, teachers_dir)
    start_path = warm_start or generic_path
    torch.manual_seed(seed)
    start = load_model(start_path)[0]
    net = copy.deepcopy(start) if warm_start is not None else start.with_new_head(len(plan.tasks))
    schedule = dataclasses.replace(preset.pretraining.teacher, epochs=preset.pretraining.teacher.epochs * len(paths))
    settings = {"row": "Supervised", "data": bench.spec.key(), "start": weights_key(start_path),
                "images": len(bench.train_images), "schedule": dataclasses.asdict(schedule), "seed": seed,
                "tasks": list(plan.tasks), **_precision(preset, device)}
    labels = bench.train_labels[:, bench.label_indices(plan.tasks)]
    return _train_and_save(Path(out_dir) / "Supervised.pt", settings, {"start": file_digest(start_path)}, net,
                           lambda **kw: train_supervised(net, bench.train_images, labels, schedule, seed, **kw),
                           bench, plan.tasks, device, log)


def ensemble_run(preset, bench, teachers_dir: Path, device=None) -> dict:
    """The teachers side by side, evaluated as one network (:class:`kalib.method.baselines.TeacherEnsemble`)."""
    teachers, plan, _, _ = _teachers(preset, teachers_dir)
    ensemble = TeacherEnsemble(teachers, plan)
    return {"row": "Ensemble", **_evaluated(ensemble, bench, plan.tasks, device)}

