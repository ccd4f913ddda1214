"""Teacher pretraining on disk (:mod:`kalib.method.teachers` is the training itself, Eq. 2).

Resume (:func:`pretrain`): each stage writes its training state after every epoch to
``OUT/partial/NAME.pt`` and a rerun continues from there; a finished ``NAME.pt`` carries the hash of the
configuration that made it (``config_hash`` in ``NAME.json``) and is re-used when the hash matches.
Paper presets write their ImageNet start as the generic checkpoint (:func:`prepare_generic`). Under torchrun
(:mod:`kalib.distributed`) every stage trains data-parallel, one after the other; rank 0 alone holds the lock,
decides what is finished and writes, and the other processes wait for it and read what it wrote.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from ..augment import BatchAugment
from ..data import Benchmark
from ..device import as_device, resolve_precision
from ..distributed import on_writer, writer_context
from ..errors import ConfigError, ConfigMismatchError, ExistingFileError
from ..labels import resolve_tasks
from ..memory import PeakMemory
from ..method.teachers import evaluate, train_generic, train_teacher
from ..models import BlockNet, build_backbone
from ..models.pretrained import INITS, imagenet_backbone
from ..train import Schedule
from .checkpoints import EpochFile, load_model, read_meta, save_model
from .config import digest, file_digest, weights_key
from .locks import run_lock
from .parallel import run_parallel
from .records import DAMAGED, verify


def teacher_paths(out_dir: str | Path, arch: str, count: int) -> list[Path]:
    """``OUT/set{count}-teacher{n}-{arch}.pt``: teacher n of the set of ``count`` teachers of ``arch``.
    Where only a checkpoint of the name kalib used before (``teacher{count}-{arch}-{n}.pt``) exists, that
    one is returned: old teacher directories are loaded and re-used as they are."""
    out_dir = Path(out_dir)
    paths = []
    for n in range(1, count + 1):
        path, old = out_dir / f"set{count}-teacher{n}-{arch}.pt", out_dir / f"teacher{count}-{arch}-{n}.pt"
        paths.append(old if not path.with_suffix(".json").is_file() and old.with_suffix(".json").is_file() else path)
    return paths


def _finished(path: Path, config_hash: str, restart: bool, log, legacy_hash: str | None = None) -> bool:
    """Whether the finished checkpoint ``path`` can be re-used (:func:`kalib.runs.records.verify`): made
    with ``config_hash`` (or before kalib stored hashes) and its weights still match the digest in its JSON
    (or, saved without one, still load); a damaged file is trained again. One from another configuration is
    refused, or removed with ``restart``. Weights without their JSON (a kill between the two writes) count
    as unfinished. ``legacy_hash``: the configuration hash as kalib computed it before it keyed the generic
    start by its weights (:func:`kalib.runs.config.file_digest`); a checkpoint made with it is re-used too.
    Under torchrun rank 0 decides (and removes) and tells the others."""
    return on_writer(lambda: _reusable(path, config_hash, restart, log, legacy_hash))


def _reusable(path: Path, config_hash: str, restart: bool, log, legacy_hash: str | None = None) -> bool:
    if not (path.is_file() and path.with_suffix(".json").is_file()):
        return False
    meta = read_meta(path)
    sha = meta.get("weights_sha256")
    if legacy_hash is not None and meta.get("config_hash") == legacy_hash:     # keyed as before weights_key
        config_hash = legacy_hash
    verdict = verify(meta.get("config_hash"), config_hash, {path: sha}, load=load_model, keyless_is_old=True)
    if verdict.valid:
        return True
    if verdict.status == DAMAGED:
        log(f"{path} is corrupt or truncated (" + ("its bytes do not match the digest in its JSON" if sha else
                                                   "it does not load") + "); training it again")
        return False
    if not restart:
        raise ConfigMismatchError(f"{path} was trained with another configuration (preset, schedule, seed, "
                                  "data or labels changed); rerun with --restart to retrain it, or choose "
                                  "another --out directory")
    for p in (path, path.with_suffix(".json")):
        p.unlink(missing_ok=True)
    log(f"--restart: removed {path} (another configuration)")
    return False


def _partial(out_dir: Path, path: Path, restart: bool) -> Path:
    """The per-epoch checkpoint of the unit that writes ``path``; removed first with ``restart``."""
    partial = out_dir / "partial" / path.name
    if restart:
        _remove(partial)
    return partial


def _remove(path: Path) -> None:
    """Delete ``path`` if it is there (rank 0 alone under torchrun)."""
    on_writer(lambda: path.unlink(missing_ok=True))


def pretrain(bench: Benchmark, groups: Sequence[Sequence[str]], arch: str, arch_kwargs: dict,
             generic_schedule: Schedule, teacher_schedule: Schedule, out_dir: str | Path,
             seed: int = 0, log=print, *, device=None, restart: bool = False,
             augment: bool = False, generic_bench: Benchmark | None = None,
             warm_start: Sequence[Path] | None = None, precision: str | None = None) -> list[Path]:
    """Train the generic backbone (once per architecture) and one teacher per label group into
    ``out_dir``; finished checkpoints found there are re-used, not retrained.

    Resumable: every epoch of every stage is saved to ``out_dir/partial/`` and a rerun continues from the
    last finished epoch (with the same final weights). A finished checkpoint or epoch state of another
    configuration raises :class:`~kalib.errors.ConfigMismatchError`; ``restart`` removes those and
    the epoch states of this call's stages (finished checkpoints of this configuration are still
    re-used). ``device``: where training runs (default CPU). ``augment``: teachers train on random resized
    crops and flips (:class:`kalib.augment.BatchAugment`; the paper presets). ``generic_bench``: the
    benchmark whose generic canvases train the generic stage (default ``bench``). ``warm_start``: one
    teacher checkpoint per group, for the same labels, that teacher n starts from instead of the generic
    backbone (Table 2's teachers start from Table 1's, ``kalib.runs.experiments``). One process at a time
    pretrains teachers of one architecture in ``out_dir``; a second waits for it (:func:`kalib.runs.locks.run_lock`)
    and then re-uses what it finished: the side runs of one reproduce share their teachers' directories.
    ``precision``: of the training steps (:func:`kalib.device.resolve_precision`; default: bf16 on CUDA, fp32
    elsewhere); a precision other than fp32 is part of every configuration hash and in the checkpoints' JSON."""
    out_dir = Path(out_dir)
    precision = resolve_precision(precision, as_device(device))
    by_precision = {"precision": precision} if precision != "fp32" else {}      # fp32 hashes as before precisions
    with writer_context(lambda: run_lock(out_dir, f"pretrain-{arch}", what=f"pretraining the {arch} teachers in "
                                         f"{out_dir}", wait=True)):
        generic_bench = bench if generic_bench is None else generic_bench
        generic_path = out_dir / f"generic-{arch}.pt"
        generic_hash = digest({"role": "generic", "data": generic_bench.spec.key(), "labels": list(bench.label_names),
                               "arch": arch, "arch_kwargs": dict(arch_kwargs),
                               "schedule": dataclasses.asdict(generic_schedule), "seed": seed, **by_precision})
        partial = _partial(out_dir, generic_path, restart)
        if _finished(generic_path, generic_hash, restart, log):
            generic, _ = load_model(generic_path)
            _remove(partial)                      # left behind by a kill between saving and cleaning up
        else:
            t0, peak = time.perf_counter(), PeakMemory()
            if partial.is_file():
                log(f"generic {arch}: resuming from {partial}")
            generic = train_generic(generic_bench.generic_images, generic_bench.generic_labels,
                                    len(generic_bench.label_names), arch, arch_kwargs, generic_schedule, seed,
                                    store=EpochFile(partial, generic_hash), device=device, precision=precision)
            save_model(generic_path, generic, role="generic", labels=list(bench.label_names),
                       data=generic_bench.spec.key(), config_hash=generic_hash, precision=precision,
                       seconds=round(time.perf_counter() - t0, 1), peak_rss_mb=peak.mib())
            _remove(partial)
            log(f"generic {arch}: {time.perf_counter() - t0:.0f} s")
        paths, jobs = [], []
        for (n, labels), path in zip(enumerate(groups, start=1), teacher_paths(out_dir, arch, len(groups))):
            on_writer(lambda: _other_labels(path, labels, restart, log))
            start = None if warm_start is None else warm_start[n - 1]
            if start is not None:
                start_labels = read_meta(start).get("labels")
                if start_labels != list(labels):
                    raise ConfigError(f"{start} is a teacher for {start_labels}, not for "
                                     f"{list(labels)}; warm_start needs one teacher per group, in order")
            config_hash, legacy = (_teacher_hash(key, generic_path, bench, labels, teacher_schedule, seed + n,
                                                 augment, by_precision, start) for key in (weights_key, file_digest))
            partial = _partial(out_dir, path, restart)
            if _finished(path, config_hash, restart, log, legacy):
                _remove(partial)
            else:
                if partial.is_file():
                    log(f"teacher {n}/{len(groups)}: resuming from {partial}")
                jobs.append(lambda n=n, labels=labels, path=path, partial=partial, config_hash=config_hash, start=start,
                            legacy=legacy: _train_and_save(generic, bench, labels, teacher_schedule, seed + n, path,
                                                           partial, config_hash, device, augment, start, precision,
                                                           legacy))
            paths.append(path)
        run_parallel(jobs, device=device, on_done=lambda i, line: log(line))
        on_writer(lambda: _remove_empty(out_dir / "partial"))
        return paths


def _other_labels(path: Path, labels, restart: bool, log) -> None:
    """Refuse a teacher checkpoint at ``path`` for other labels than ``labels``, or remove it with ``restart``."""
    if path.with_suffix(".json").is_file() and read_meta(path).get("labels") != list(labels):
        if not restart:
            raise ExistingFileError(f"{path} is a teacher for other labels ({read_meta(path).get('labels')}); "
                                    "choose another --out directory, or rerun with --restart to retrain it")
        for p in (path, path.with_suffix(".json")):
            p.unlink(missing_ok=True)
        log(f"--restart: removed {path} (a teacher for other labels)")


def _remove_empty(directory: Path) -> None:
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()


def _teacher_hash(key, generic_path: Path, bench: Benchmark, labels, schedule: Schedule, seed: int, augment: bool,
                  by_precision: dict, start: Path | None) -> str:
    """The configuration hash of a teacher, the generic start (and the warm start) counted by ``key``: their
    weights (:func:`kalib.runs.config.weights_key`), or, as kalib did before, their JSON (``file_digest``)."""
    return digest({"role": "teacher", "generic": key(generic_path), "data": bench.spec.key(), "labels": list(labels),
                   "schedule": dataclasses.asdict(schedule), "seed": seed, **({"augment": True} if augment else {}),
                   **by_precision, **({"warm_start": key(start)} if start is not None else {})})


def _train_and_save(generic: BlockNet, bench: Benchmark, labels, schedule: Schedule, seed: int, path: Path,
                    partial: Path, config_hash: str, device, augment: bool, start: Path | None,
                    precision: str = "fp32", legacy_hash: str | None = None) -> str:
    """Train one teacher (resumable through ``partial``, also where an older kalib tagged it ``legacy_hash``),
    evaluate it on the test split (and on the validation split where the data has one), save it to ``path``;
    returns the line to log."""
    t0, peak = time.perf_counter(), PeakMemory()
    idx = resolve_tasks(labels, bench.label_names)
    teacher = train_teacher(generic, bench.train_images, bench.train_labels[:, idx], schedule, seed,
                            desc=f"teacher[{labels[0]}…]", store=EpochFile(partial, config_hash, legacy_hash),
                            device=device, augment=BatchAugment(seed) if augment else None,
                            warm_start=None if start is None else load_model(start)[0], precision=precision)
    seconds = time.perf_counter() - t0
    ap = evaluate(teacher, bench.test_images, bench.test_labels[:, idx], labels, device=device)
    val = getattr(bench, "val_images", None)
    val_ap = (evaluate(teacher, val, bench.val_labels[:, idx], labels, device=device) if val is not None else None)
    save_model(path, teacher, role="teacher", labels=list(labels), data=bench.spec.key(), config_hash=config_hash,
               precision=precision, test_ap=ap, seconds=round(seconds, 1), peak_rss_mb=peak.mib(), **({"val_ap": val_ap} if val_ap is not None else {}))
    _remove(partial)
    return (f"teacher {path.stem} ({', '.join(labels)}): test mAP {ap['mAP']:.1f}"
            + (f", validation mAP {val_ap['mAP']:.1f}" if val_ap is not None else "") + f" in {seconds:.0f} s")


def pretrain_set(preset, bench: Benchmark, teacher_set: str, out_dir: str | Path, seed: int, log=print, *,
                 device=None, restart: bool = False, allow_download: bool = False,
                 generic_bench: Benchmark | None = None, warm_start: Sequence[Path] | None = None) -> list[Path]:
    """:func:`pretrain` for one of the preset's teacher sets (``Preset.teacher_set``). Presets that start
    from ImageNet weights (``init != "generic"``: the paper presets) first write those as the generic
    checkpoint (:func:`prepare_generic`) instead of training a generic stage."""
    groups, arch, kwargs = preset.teacher_set(teacher_set)
    if preset.nets.init != "generic":
        on_writer(lambda: prepare_generic(out_dir, arch, bench.label_names, init=preset.nets.init, arch_kwargs=kwargs,
                                          weights_path=preset.nets.weights_paths.get(arch),
                                          allow_download=allow_download, seed=seed, log=log))
    return pretrain(bench, groups, arch, kwargs, preset.pretraining.generic, preset.pretraining.teacher, out_dir, seed=seed, log=log,
                    device=device, restart=restart, augment=preset.augment, generic_bench=generic_bench,
                    warm_start=warm_start, precision=preset.precision)


def prepare_generic(out_dir: str | Path, arch: str, label_names: Sequence[str], *, init: str = "imagenet",
                    arch_kwargs: dict | None = None, weights_path: str | Path | None = None,
                    allow_download: bool = False, seed: int = 0, log=print) -> Path:
    """Write ``out_dir/generic-{arch}.pt``, the shared start of every teacher and of the student, for a paper
    preset: ImageNet weights (``init="imagenet"``) or a seeded random init (``init="random"``).

    :func:`kalib.runs.teachers.pretrain` then re-uses it instead of training a generic stage, and
    :func:`kalib.runs.amalgamation.run` starts the student from it (``--init generic``). An existing file made with
    the same ``init`` is kept; one made with another raises ``FileExistsError``."""
    if init not in INITS:
        raise ConfigError(f"unknown init {init!r} for a paper preset; valid: {', '.join(INITS)}")
    path = Path(out_dir) / f"generic-{arch}.pt"
    if path.is_file():
        made = read_meta(path).get("init")
        if made != init:
            raise ExistingFileError(f"{path} was made with init {made!r}, not {init!r}; choose another --out "
                                  "directory or delete it")
        return path
    if init == "imagenet":
        if arch_kwargs:
            raise ConfigError(f"ImageNet weights need the standard {arch}; the preset gives arch_kwargs {arch_kwargs}")
        model, source = imagenet_backbone(arch, len(label_names), weights_path, allow_download, seed)
    else:
        torch.manual_seed(seed)
        model, source = build_backbone(arch, len(label_names), **(arch_kwargs or {})), None
    save_model(path, model, role="generic", labels=list(label_names), init=init, weights=source)
    log(f"generic {arch}: {init} initialisation" + (f" from {source}" if source else "") + f" -> {path}")
    return path
