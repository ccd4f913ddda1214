"""Amalgamating teachers a user brings (``kalib amalgamate --teacher ARCH:WEIGHTS:LABELS … --pool DIR``):
torchvision models fine-tuned on different label sets and a folder of unlabelled images, into one
task-customized TargetNet. The Python path is :func:`load_torchvision_teachers`, :func:`image_pool` and
:func:`amalgamate_teachers`; :func:`kalib.runs.predict.predict_images` scores images with the result.

What a run does, in order (docs/design.md §8):

1. Checks, before any work, and each refused in one line (a :class:`~kalib.errors.KalibError`): the
   teachers (:mod:`kalib.models.torchvision_teachers`: weights of the named architecture, a labels file per
   head, one architecture for all), the image size (the last block's output at least 1x1), the task set C,
   the student's start, the pool and the evaluation folder. A label two teachers share is taken from the first
   that has it; teachers that do not look like fine-tunings of one start (:func:`kalib.report.alignment.block_correlation`
   of their first block below :data:`ALIGNED`) are warned about, since Eq. 4's filters assume it.
2. Alg. 1 with the default branch rule (Eq. 9) on the pool, held out: :attr:`OwnSchedule.heldout_fraction` of
   it (at most :attr:`OwnSchedule.heldout_max` images) for the converged losses; the pool is read batch by
   batch from its memory-mapped array (:class:`kalib.data.folder.ImageRows`) and F^{k-1} is recomputed per
   batch where caching it would take too much memory (:func:`kalib.method.pool.prefix_features`).
3. The TargetNet (Eq. 10), fine-tuned (Alg. 1 line 14), written as ``OUT/targetnet.pt`` with its label
   names, heads, input size and normalisation, and ``OUT/run.json``: converged losses per block, branch
   blocks, parameters and MACs against the teachers, and with ``eval_dir`` the APs of teachers and TargetNet.

Resume, the run lock and atomic writes are those of the preset runs (:class:`~kalib.runs.state.BlockStore`,
:class:`~kalib.runs.checkpoints.EpochFile`, :func:`~kalib.runs.locks.run_lock`, :func:`~kalib.runs.records.verify`),
and so is training under torchrun (:mod:`kalib.distributed`): rank 0 decodes the folders first, holds the lock
and writes; every process trains on its share of each batch.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import distributed
from ..data.folder import FolderImages, check_folder, check_room, load_folder, read_label_csv, read_label_header
from ..device import as_device, resolve_precision
from ..distributed import on_writer, writer_context
from ..errors import CommandError, ConfigError, ImageFolderError
from ..files import atomic_write, file_sha
from ..macs import forward_macs_per_image
from ..memory import PeakMemory
from ..method.blockwise import Amalgamation, amalgamate, soft_targets
from ..method.branch import branch_points, forced_branch_points, tolerant_branch_points
from ..method.filters import TaskPlan, select_tasks, shared_labels, task_plan
from ..method.finetune import finetune, heldout_loss
from ..method.pool import block_subset, split_pool
from ..method.student import INITS, freeze, init_student, make_filters
from ..method.targetnet import assemble, count_parameters
from ..metrics import ap_dict
from ..models import BlockNet, build_backbone
from ..models.pretrained import imagenet_state, load_imagenet
from ..models.torchvision_teachers import (IMAGENET_MEAN, IMAGENET_STD, TEACHER_ARCHS, last_block_size,
                                           load_torchvision_teacher, read_labels)
from ..report.alignment import block_correlation
from ..resources import check_memory
from ..train import Schedule, predict, to_input
from .checkpoints import EpochFile, save_target
from .config import checked, digest, parse_value
from .locks import run_lock
from .predict import probabilities
from .presets import set_path
from .records import read_record, verify
from .state import BlockStore, cached_tensor

OWN_FORMAT = 1              # of targetnet.json and run.json written by this module
OWN_INITS = ("imagenet", "teacher-mean", "teacher1", "random")
ALIGNED = 0.5               # first-block channel correlation of two teachers below which they look unrelated
CACHE_DTYPES = ("float32", "bfloat16", "float16")
# a lower bound of the memory of one training step per image and pixel (fp32 forward and backward): torchvision's
# ResNet-18 took 1,376 bytes, ResNet-50 3,224 and DenseNet-121 3,272 (128 px, batch 8, peak RSS on the CPU)
TRAIN_BYTES_PER_PIXEL = 1000


@dataclass(frozen=True)
class TeacherSpec:
    """One ``--teacher ARCH:WEIGHTS:LABELS[:softmax]``: a torchvision architecture, its state dict, the labels
    file of its head, and whether it is single-label (softmax) rather than multi-label (sigmoid)."""
    arch: str
    weights: Path
    labels: Path
    softmax: bool = False


def parse_teacher(text: str | TeacherSpec) -> TeacherSpec:
    """``ARCH:WEIGHTS:LABELS`` with an optional ``:softmax`` at the end, split at the first and the last
    colon that remain, so WEIGHTS may hold colons (``C:\\models\\a.pt``, ``runs/a:b.pt``) and LABELS may not."""
    if isinstance(text, TeacherSpec):
        return text
    body, softmax = (text[:-len(":softmax")], True) if text.endswith(":softmax") else (text, False)
    arch, sep1, rest = body.partition(":")
    weights, sep2, labels = rest.rpartition(":")
    if not (sep1 and sep2 and arch and weights and labels):
        raise ConfigError(f"--teacher {text!r}: expected ARCH:WEIGHTS:LABELS[:softmax], e.g. "
                          "resnet18:colours.pt:colours.txt (WEIGHTS may hold colons, LABELS may not)")
    if ":" in weights and not Path(labels).exists() and difflib.get_close_matches(labels.lower(), ["softmax"], 1, 0.6):
        raise ConfigError(f"--teacher {text!r}: ':{labels}' is no suffix kalib knows (and no labels file); the only "
                          "suffix is :softmax, for a single-label teacher (without it a teacher is multi-label)")
    return TeacherSpec(arch.strip(), Path(weights), Path(labels), softmax)


def input_norm(mean: Sequence[float], std: Sequence[float]) -> dict:
    """The normalisation ``{"mean", "std"}`` the teachers were trained with, on kalib's 0..1 pixel scale:
    three finite means in 0..1 and three standard deviations in (0, 1]; :class:`~kalib.errors.ConfigError`
    otherwise, naming a 0..255 scale where the numbers look like one."""
    mean, std = [float(m) for m in mean], [float(s) for s in std]
    example = "ImageNet's: --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225"
    for name, values, low in (("--mean", mean, 0.0), ("--std", std, None)):
        shown = f"{name} {','.join(f'{v:g}' for v in values)}"
        if len(values) != 3:
            raise ConfigError(f"{shown}: give three numbers R,G,B ({example})")
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"{shown}: every value must be a finite number ({example})")
        if all(0 < v <= 255 for v in values) and any(v > 1 for v in values):
            raise ConfigError(f"{shown} looks like the 0..255 scale; kalib reads pixels as 0..1: divide by 255 "
                              f"({example})")
        if not all((v >= low) if low is not None else (v > 0) for v in values) or any(v > 1 for v in values):
            raise ConfigError(f"{shown}: on kalib's 0..1 pixel scale means lie in 0..1 and standard deviations "
                              f"in (0, 1] ({example})")
    return {"mean": mean, "std": std}


@dataclass(frozen=True)
class OwnSchedule:
    """The schedules of an amalgamation of one's own teachers (``--set FIELD=VALUE`` changes one, as for the
    presets: ``block.epochs=2``, ``finetune.lr=0.001``, ``heldout_fraction=0.1``). The default is the paper's
    optimiser (SGD, momentum 0.9, poly learning rate 0.01) with a lighter weight decay, 2 epochs per block over
    the whole pool and 2 epochs of fine-tuning: a first choice for fine-tuned ImageNet ResNets, not tuned.
    ``temperature``: of the softmax of single-label teachers; ``amalgamation_cache``: dtype of the cached
    F^{k-1}; ``branch_tolerance`` 0 is Eq. 9; ``alignment_images``: pool images for the alignment check."""
    block: Schedule = Schedule(epochs=2, lr=0.01, batch_size=32, weight_decay=5e-4)
    block_epochs: tuple[int, ...] = ()
    block_images: int = 0
    finetune: Schedule = Schedule(epochs=2, lr=0.01, batch_size=32, weight_decay=5e-4)
    finetune_images: int = 0
    finetune_freeze_bn: bool = True
    heldout_fraction: float = 0.05
    heldout_max: int = 2000
    temperature: float = 1.0
    filter_reduction: int = 4
    branch_tolerance: float = 0.0
    amalgamation_cache: str = "float16"
    alignment_images: int = 64

    def __post_init__(self):
        bad = [f"{n} must be >= 0, got {getattr(self, n)}" for n in ("block_images", "finetune_images")
               if getattr(self, n) < 0]
        bad += [] if 0 < self.heldout_fraction < 1 else [f"heldout_fraction must be in (0, 1), got {self.heldout_fraction}"]
        bad += [] if self.heldout_max >= 1 else [f"heldout_max must be >= 1, got {self.heldout_max}"]
        bad += [] if 0 < self.temperature < math.inf else [f"temperature must be > 0, got {self.temperature}"]
        bad += [] if self.filter_reduction >= 1 else [f"filter_reduction must be >= 1, got {self.filter_reduction}"]
        bad += [] if 0 <= self.branch_tolerance < math.inf else [f"branch_tolerance must be >= 0, got {self.branch_tolerance}"]
        bad += [] if self.amalgamation_cache in CACHE_DTYPES else [f"amalgamation_cache must be one of {CACHE_DTYPES}"]
        bad += [f"block_epochs must be non-negative, got {list(self.block_epochs)}"] if any(e < 0 for e in self.block_epochs) else []
        bad += [] if self.alignment_images >= 2 else [f"alignment_images must be >= 2, got {self.alignment_images}"]
        if bad:
            raise ConfigError(f"invalid schedule: {'; '.join(bad)}")

    def heldout(self, pool: int) -> int:
        """Images of a pool of ``pool`` held out for the converged losses: the fraction, at least 1, at most
        ``heldout_max``."""
        return max(1, min(self.heldout_max, round(self.heldout_fraction * pool)))


def own_schedule(assignments: Sequence[str] | None = None, base: OwnSchedule | None = None) -> OwnSchedule:
    """``base`` (default :class:`OwnSchedule`) with ``FIELD=VALUE`` changes (``block.epochs=3``), every value set
    first and checked once at the end (:func:`kalib.runs.config.checked`), so the order of the changes does not
    matter."""
    schedule = base or OwnSchedule()
    given = []
    for item in assignments or ():
        name, sep, text = item.partition("=")
        path = name.strip().split(".")
        current = schedule
        for head in path:
            if not (dataclasses.is_dataclass(current) and head in {f.name for f in dataclasses.fields(current)}):
                raise ConfigError(f"--set {name.strip()}: unknown field; with --teacher the fields are "
                                  f"{', '.join(f.name for f in dataclasses.fields(OwnSchedule))} (and block.FIELD, "
                                  "finetune.FIELD of a schedule: epochs, lr, batch_size, momentum, weight_decay, power)")
            current = getattr(current, head)
        if not sep:
            raise ConfigError(f"--set expects FIELD=VALUE (for example block.epochs=3), got '{item}'")
        schedule = set_path(schedule, path, parse_value(text.strip(), current, name.strip()), check=False)
        given.append((path, f"{name.strip()}={text.strip()}"))
    return checked(schedule, given)


@dataclass(frozen=True)
class Teachers:
    """Teachers a user brought, loaded: their specs, networks (frozen BlockNets with their own heads) and
    label names, and the input normalisation they were trained with."""
    specs: tuple[TeacherSpec, ...]
    nets: tuple[BlockNet, ...]
    labels: tuple[tuple[str, ...], ...]
    input_norm: dict

    @property
    def arch(self) -> str:
        return self.specs[0].arch


def load_torchvision_teachers(teachers: Sequence[str | TeacherSpec], mean: Sequence[float] = IMAGENET_MEAN,
                              std: Sequence[float] = IMAGENET_STD) -> Teachers:
    """The teachers ``ARCH:WEIGHTS:LABELS[:softmax]`` (strings or :class:`TeacherSpec`), trained on inputs
    normalised with ``mean``/``std`` (torchvision's ImageNet ones by default). Refused in one line: a spec
    that does not parse, fewer than two teachers, teachers of different architectures (:func:`teacher_specs`),
    weights or labels that do not fit (:class:`~kalib.errors.TeacherFileError`)."""
    specs = teacher_specs(teachers)
    norm = input_norm(mean, std)
    loaded = [load_torchvision_teacher(s.arch, s.weights, s.labels, norm) for s in specs]
    nets = freeze([net for net, _ in loaded])
    return Teachers(specs, tuple(nets), tuple(tuple(labels) for _, labels in loaded), norm)


def teacher_specs(teachers: Sequence[str | TeacherSpec]) -> tuple[TeacherSpec, ...]:
    """The parsed teachers, two or more, of one architecture that kalib can split into blocks."""
    specs = tuple(parse_teacher(t) for t in teachers)
    if len(specs) < 2:
        raise ConfigError(f"amalgamation needs two or more teachers, got {len(specs)}; repeat --teacher")
    if len({s.arch for s in specs}) > 1:
        raise ConfigError(f"teachers of different architectures ({', '.join(s.arch for s in specs)}): kalib "
                          "amalgamates teachers of one architecture (heterogeneous teachers are not supported yet)")
    if specs[0].arch not in TEACHER_ARCHS:
        raise ConfigError(f"teacher architecture {specs[0].arch!r} is not one kalib can split into blocks; use one "
                          f"of {', '.join(TEACHER_ARCHS)}")
    return specs


def image_pool(folder: str | Path, image_size: int = 224, *, workers: int | None = None,
               log: Callable[[str], None] = print) -> FolderImages:
    """The readable images of ``folder`` (recursively) at ``image_size`` px, decoded once and memory-mapped
    (:func:`kalib.data.folder.load_folder`); unreadable files are skipped and named in one ``log`` line."""
    images = load_folder(folder, image_size, what="--pool", workers=workers, log=log)
    if images.skipped:
        log(f"warning: {images.skipped_note()}")
    return images


@dataclass(frozen=True)
class _Checked:
    """What a run reads and checks before any work."""
    teachers: Teachers
    plan: TaskPlan
    student: BlockNet
    init: dict
    pool: FolderImages
    rows: object            # the pool's rows in a seeded order (ImageRows)
    heldout: int
    eval_set: tuple | None  # (FolderImages, label names, targets of C's columns, C's columns evaluated)
    alignment: dict


def amalgamate_teachers(teachers, pool, out_dir: str | Path, *, tasks=None, image_size: int = 224,
                        mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                        init: str | None = None, weights: str | Path | None = None, allow_download: bool = False,
                        eval_dir: str | Path | None = None, eval_labels: str | Path | None = None,
                        branch_at: str | None = None, schedule: OwnSchedule | None = None, seed: int = 0,
                        device=None, restart: bool = False, workers: int | None = None, precision: str | None = None,
                        log: Callable[[str], None] = print) -> dict:
    """Alg. 1 on teachers a user brings (module docstring): ``teachers`` (:class:`Teachers`, or specs
    ``ARCH:WEIGHTS:LABELS[:softmax]`` read with ``mean``/``std``), ``pool`` (a :class:`FolderImages`, or a
    folder read at ``image_size`` px), the task set ``tasks`` (default all labels), the student's start ``init``
    (default ``imagenet`` when ``weights``, an ImageNet state dict, is given, else ``teacher-mean``; the
    ImageNet weights are never downloaded unless ``allow_download``), ``eval_dir`` with ``eval_labels``
    (a CSV ``file,<label>,…``) for APs, ``branch_at`` (every task at one block instead of Eq. 9), ``schedule``
    (:class:`OwnSchedule`), ``precision`` of the training steps (:func:`kalib.device.resolve_precision`; default
    bf16 on CUDA, fp32 elsewhere). Writes ``out_dir/targetnet.pt`` and ``out_dir/run.json``; returns the record. A
    rerun resumes after the last finished block; a finished run of the same settings is returned as it is;
    ``restart`` starts over."""
    schedule = schedule or OwnSchedule()
    device = as_device(device)
    precision = resolve_precision(precision, device)
    t0 = time.perf_counter()
    checked = _check(teachers, pool, tasks, image_size, mean, std, init, weights, allow_download, eval_dir,
                     eval_labels, schedule, seed, workers, log, device)
    if branch_at is not None:
        forced_branch_points(checked.student, branch_at, len(checked.plan.tasks))   # an unknown block: refused now
    out = Path(out_dir)
    settings = {**_settings(checked, schedule, seed), **({"precision": precision} if precision != "fp32" else {})}
    with writer_context(lambda: run_lock(out, what=f"amalgamation into {out}")):
        peak = PeakMemory()
        if restart:
            on_writer(lambda: _remove_finished(out))
        store = BlockStore(out, digest(settings))
        store.prepare(settings, restart, log)
        run_key = digest([store.fingerprint, branch_at, dataclasses.asdict(schedule.finetune), schedule.finetune_images,
                          schedule.finetune_freeze_bn, schedule.branch_tolerance, _eval_key(checked)])
        record = on_writer(lambda: _finished(out, run_key))
        if record is not None:
            log(f"re-using the finished run in {out}")
            return record
        times = {"checks": time.perf_counter() - t0}
        result, soft = _blocks(checked, schedule, store, out, seed, (device, precision), times, log)
        record = _branch_record(checked, result, schedule, branch_at, run_key)
        record["precision"] = precision
        _target(checked, result, soft, schedule, store, out, record, seed, (device, precision), times, log)
        times["total"] = sum(times.values())
        record["seconds"] = {k: round(v, 1) for k, v in times.items()}
        record["peak_rss_mb"] = peak.mib()
        record["files"] = {p.name: file_sha(p) for p in (out / "targetnet.pt", out / "targetnet.json")}
        on_writer(lambda: _write_record(out, record, store.dir))
        return record


def _remove_finished(out: Path) -> None:
    """``restart``: the finished record and TargetNet."""
    for path in (out / "run.json", out / "targetnet.pt", out / "targetnet.json"):
        path.unlink(missing_ok=True)


def _write_record(out: Path, record: dict, blocks: Path) -> None:
    """``out/run.json`` (atomically), then the fine-tuning's epoch files are removed."""
    atomic_write(out / "run.json", lambda p: p.write_text(json.dumps(record, indent=1)))
    for partial in blocks.glob("finetune-*.partial.pt"):
        partial.unlink(missing_ok=True)


def _check(teachers, pool, tasks, image_size, mean, std, init, weights, allow_download, eval_dir, eval_labels,
           schedule: OwnSchedule, seed: int, workers: int | None, log, device=None) -> _Checked:
    """Every input, checked before any work (module docstring, step 1): the cheap checks first (sizes, label files,
    tasks, folders, the CSV's header), then the teachers' weights, the student's start, and the pool and the
    evaluation set last, since decoding them is the only slow check."""
    arch = teachers.arch if isinstance(teachers, Teachers) else teacher_specs(teachers)[0].arch
    size = pool.image_size if isinstance(pool, FolderImages) else image_size
    if last_block_size(arch, size) is None:
        raise ConfigError(f"--image-size {size} is too small for {arch}: its last block's output would be "
                          "smaller than 1x1; use a larger size (the teachers' training size, e.g. 224)")
    batch = max(schedule.block.batch_size, schedule.finetune.batch_size)
    check_memory(TRAIN_BYTES_PER_PIXEL * batch * size * size, f"a training step on {batch} images of {size} px",
                 "lower --image-size or the batch size (--set block.batch_size=N --set finetune.batch_size=N)", device)
    specs = teachers.specs if isinstance(teachers, Teachers) else teacher_specs(teachers)
    labels = teachers.labels if isinstance(teachers, Teachers) else [read_labels(s.labels) for s in specs]
    temperatures = [schedule.temperature if s.softmax else None for s in specs]
    plan = task_plan(tasks, labels, shared="first", temperatures=temperatures)
    if (eval_dir is None) != (eval_labels is None):
        raise CommandError("--eval DIR and --eval-labels FILE.csv go together: give both, or neither")
    if eval_labels is not None:
        check_folder(eval_dir, "--eval")
        _label_columns(eval_labels, {n for names in labels for n in names})
    if not isinstance(pool, FolderImages):
        check_room(pool, size, "--pool", files=check_folder(pool, "--pool"))
    init, imagenet = _start(arch, init, weights, allow_download)
    loaded = teachers if isinstance(teachers, Teachers) else load_torchvision_teachers(specs, mean, std)
    for name, owners in shared_labels(loaded.labels).items():
        if name in plan.tasks:
            log(f"label '{name}' is known to teachers {', '.join(str(n + 1) for n in owners)}; taken from teacher "
                f"{owners[0] + 1} ({loaded.specs[owners[0]].weights})")
    student, start = _student(loaded, init, imagenet, seed)
    if not isinstance(pool, FolderImages):
        _decode_first(pool, size, "--pool", workers, log)
    images = pool if isinstance(pool, FolderImages) else image_pool(pool, size, workers=workers, log=log)
    if len(images.files) < 2:
        raise ConfigError(f"--pool {images.root} has {len(images.files)} readable image; amalgamation needs at "
                          "least 2 (some to train on, some held out)")
    rows = images.rows[torch.randperm(len(images.files), generator=torch.Generator().manual_seed(seed))]
    eval_set = _eval_set(eval_dir, eval_labels, plan, size, workers, log) if eval_dir is not None else None
    alignment = _alignment(loaded, rows, schedule.alignment_images, log)
    log(f"student start: {start['name']} ({start['source']})")
    return _Checked(loaded, plan, student, start, images, rows, schedule.heldout(len(images.files)), eval_set,
                    alignment)


def _start(arch: str, init: str | None, weights, allow_download: bool) -> tuple[str, tuple | None]:
    """The student's start (Alg. 1 line 1), checked before the teachers are loaded: ``init`` (default
    ``imagenet`` with ``weights``, else ``teacher-mean``) and, for ``imagenet``, the teachers' shared ImageNet
    state dict and where it came from (``weights`` or torch hub's cache, downloaded only with ``allow_download``)."""
    init = init or ("imagenet" if weights else "teacher-mean")
    if init not in OWN_INITS:
        valid = ", ".join(OWN_INITS)
        raise ConfigError(f"--init {init}: not a start for teachers you bring (there is no generic backbone); "
                          f"valid: {valid}" if init in INITS else f"unknown --init {init}; valid: {valid}")
    if weights is not None and init != "imagenet":
        raise ConfigError(f"--weights {weights} is the ImageNet start; it does not go with --init {init}")
    return init, imagenet_state(arch, weights, allow_download) if init == "imagenet" else None


def _student(teachers: Teachers, init: str, imagenet: tuple | None, seed: int) -> tuple[BlockNet, dict]:
    """The student of :func:`_start`'s choice: ``imagenet`` (its state dict), or :func:`init_student`'s
    ``teacher-mean``, ``teacher1``, ``random``."""
    if init == "imagenet":
        state, source = imagenet
        torch.manual_seed(seed)
        net = build_backbone(teachers.arch, teachers.nets[0].num_classes, input_norm=teachers.input_norm)
        return load_imagenet(net, state, source).requires_grad_(True).train(), {"name": "imagenet", "source": source}
    sources = {"teacher-mean": "the mean of the teachers' weights", "teacher1": "a copy of teacher 1",
               "random": f"a random {teachers.arch} (seed {seed})"}
    return init_student(init, list(teachers.nets), None, seed), {"name": init, "source": sources[init]}


def _decode_first(folder, size: int, what: str, workers: int | None, log) -> None:
    """Under torchrun: rank 0 decodes ``folder`` into the cache (:func:`load_folder`) before the others read it."""
    def decode() -> None:
        load_folder(folder, size, what=what, workers=workers, log=log)
    if distributed.active():
        on_writer(decode)


def _label_columns(eval_labels, known: set) -> None:
    """Refuse, before any image is decoded, a labels CSV whose header is malformed or names a label no teacher
    knows (a misspelt label would otherwise be left out of the evaluation without a word)."""
    unknown = [n for n in read_label_header(eval_labels) if n not in known]
    if unknown:
        raise ImageFolderError(f"--eval-labels {eval_labels}: column{'s' if len(unknown) > 1 else ''} "
                               f"{', '.join(unknown)} name{'' if len(unknown) > 1 else 's'} no label of the "
                               f"teachers (theirs: {', '.join(sorted(known))}); rename or remove "
                               f"{'them' if len(unknown) > 1 else 'it'}")


def _eval_set(eval_dir, eval_labels, plan: TaskPlan, size: int, workers: int | None, log) -> tuple:
    """The labelled evaluation folder: its images, and the CSV's 0/1 targets of the tasks of C it has."""
    _decode_first(eval_dir, size, "--eval", workers, log)
    images = load_folder(eval_dir, size, what="--eval", workers=workers, log=log)
    if images.skipped:
        log(f"warning: {images.skipped_note()}")
    names, targets = read_label_csv(eval_labels, images)
    cols = [i for i, t in enumerate(plan.tasks) if t in names]
    if not cols:
        raise CommandError(f"--eval-labels {eval_labels} has none of the tasks {', '.join(plan.tasks)} (its labels: "
                           f"{', '.join(names)})")
    missing = [t for t in plan.tasks if t not in names]
    if missing:
        log(f"--eval-labels {eval_labels} has no column for {', '.join(missing)}: not evaluated")
    return images, names, targets[:, [names.index(plan.tasks[i]) for i in cols]], cols


def _alignment(teachers: Teachers, rows, n: int, log) -> dict:
    """The first block's channel correlation of teacher 1 with every other teacher on ``n`` pool images, and a
    warning where it is below :data:`ALIGNED` (teachers that do not look like fine-tunings of one start)."""
    sample = rows[:min(n, len(rows))]
    first = teachers.nets[0].block_names[0]
    out = {}
    for i, net in enumerate(teachers.nets[1:], start=2):
        corr = block_correlation(teachers.nets[0], net, sample)
        out[f"teacher 1 vs teacher {i}"] = {k: round(v, 3) for k, v in corr.items()}
        if not corr[first] >= ALIGNED:
            log(f"warning: teachers 1 and {i} do not look like fine-tunings of one start (their {first} channels "
                f"correlate {corr[first]:.2f}, below {ALIGNED}); Eq. 4's filters re-weight channels and assume "
                "teachers fine-tuned from one shared start, so the TargetNet may fall far behind them")
    freeze(list(teachers.nets))
    return out


def _settings(checked: _Checked, schedule: OwnSchedule, seed: int) -> dict:
    """What block-wise training depends on; its digest is the fingerprint of ``OUT/blocks``."""
    t = checked.teachers
    return {"format": OWN_FORMAT, "arch": t.arch, "pool": checked.pool.fingerprint, "image_size": checked.pool.image_size,
            "input_norm": t.input_norm, "teachers": [{"weights": file_sha(s.weights), "labels": list(names),
                                                      "softmax": s.softmax} for s, names in zip(t.specs, t.labels)],
            "init": checked.init, "tasks": list(checked.plan.tasks), "heldout": checked.heldout, "seed": seed,
            "block": dataclasses.asdict(schedule.block), "block_epochs": list(schedule.block_epochs),
            "block_images": schedule.block_images, "temperature": schedule.temperature,
            "reduction": schedule.filter_reduction, "cache": schedule.amalgamation_cache}


def _eval_key(checked: _Checked):
    return None if checked.eval_set is None else [checked.eval_set[0].fingerprint, checked.eval_set[2].tolist()]


def _finished(out: Path, run_key: str) -> dict | None:
    """The finished record in ``out/run.json`` if it belongs to ``run_key`` and its files are intact."""
    record = read_record(out / "run.json")
    if record is None:
        return None
    files = {out / name: sha for name, sha in (record.get("files") or {}).items()}
    return record if files and verify(record.get("run_key"), run_key, files).valid else None


def _blocks(checked: _Checked, schedule: OwnSchedule, store: BlockStore, out: Path, seed: int, where: tuple,
            times: dict, log) -> tuple[Amalgamation, torch.Tensor]:
    """The teachers' soft targets (cached in ``out/soft-targets``) and Alg. 1 lines 2–11, resumed after the last
    finished block in ``store``; ``where``: (device, training precision)."""
    (device, precision), t0 = where, time.perf_counter()
    plan, nets, rows = checked.plan, list(checked.teachers.nets), checked.rows
    key = digest([store.fingerprint, "soft"])
    soft = cached_tensor(out / "soft-targets" / f"{key}.pt", lambda: soft_targets(nets, rows, plan, device=device))
    times["teacher_targets"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    student = checked.student
    torch.manual_seed(seed)
    filters = make_filters(student, nets, schedule.filter_reduction)
    result = Amalgamation(student, filters, plan, np.full((student.num_blocks, len(plan.tasks)), np.nan))
    done = store.last_finished(student.num_blocks, log)
    if done:
        store.load(done, result)
        log(f"resuming after block {student.block_names[done - 1]} ({done}/{student.num_blocks} finished)")
    result = amalgamate(student, nets, plan, rows, schedule.block, images_per_block=schedule.block_images or None,
                        block_epochs=schedule.block_epochs, heldout=checked.heldout, seed=seed, soft=soft,
                        filters=filters, start_block=done + 1, previous=result,
                        cache_dtype=getattr(torch, schedule.amalgamation_cache), device=device,
                        hooks=store.hooks(done, student.block_names, log), precision=precision)
    times["blocks"] = time.perf_counter() - t0
    return result, soft


def _branch_record(checked: _Checked, result: Amalgamation, schedule: OwnSchedule, branch_at, run_key: str) -> dict:
    """Eq. 9's branch blocks (or the tolerance rule's, or ``branch_at``'s) and the record so far."""
    plan, names, t = checked.plan, checked.student.block_names, checked.teachers
    chosen = branch_points(result.losses)
    points = (forced_branch_points(checked.student, branch_at, len(plan.tasks)) if branch_at is not None
              else tolerant_branch_points(result.losses, schedule.branch_tolerance))
    return {
        "run_key": run_key, "format": OWN_FORMAT, "arch": t.arch, "image_size": checked.pool.image_size,
        "normalisation": t.input_norm, "init": checked.init, "tasks": list(plan.tasks),
        "teachers": [{"weights": str(s.weights), "labels_file": str(s.labels), "labels": list(n),
                      "kind": "softmax" if s.softmax else "sigmoid"} for s, n in zip(t.specs, t.labels)],
        "task_teacher": [n + 1 for n in plan.teacher], "shared_labels": {
            name: [n + 1 for n in owners] for name, owners in shared_labels(t.labels).items()},
        "pool": {"folder": str(checked.pool.root), "images": len(checked.pool.files),
                 "skipped": list(checked.pool.skipped[:20]), "skipped_count": len(checked.pool.skipped),
                 "heldout": checked.heldout, "train": len(checked.pool.files) - checked.heldout},
        "schedule": json.loads(json.dumps(dataclasses.asdict(schedule))), "alignment": checked.alignment,
        "blocks": names, "converged_loss": {task: {names[k]: round(float(result.losses[k, i]), 5)
                                                   for k in range(len(names))} for i, task in enumerate(plan.tasks)},
        "block_train_loss": {names[k]: [round(v, 5) for v in h] for k, h in enumerate(result.train_loss)},
        "chosen_block": {task: names[s - 1] for task, s in zip(plan.tasks, chosen)},
        "branch_block": {task: names[s - 1] for task, s in zip(plan.tasks, points)},
        "branch_rule": (f"every task at {branch_at}" if branch_at is not None else "Eq. 9" if not
                        schedule.branch_tolerance else f"tolerance {schedule.branch_tolerance}"),
        "points": points,
    }


def heads(teachers: Teachers, plan: TaskPlan, temperature: float) -> list[dict]:
    """The TargetNet's heads: per teacher with tasks in C, its kind (``sigmoid``: multi-label, ``softmax``:
    single-label, its labels of C sharing one softmax) and those labels, in C's order."""
    return [{"teacher": n + 1, "kind": "softmax" if teachers.specs[n].softmax else "sigmoid",
             "labels": [plan.tasks[i] for i in plan.per_teacher[n]],
             **({"temperature": temperature} if teachers.specs[n].softmax else {})} for n in plan.active_teachers]


def _target(checked: _Checked, result: Amalgamation, soft: torch.Tensor, schedule: OwnSchedule, store: BlockStore,
            out: Path, record: dict, seed: int, where: tuple, times: dict, log) -> None:
    """Eq. 10 and Alg. 1 line 14: the TargetNet of ``record["points"]``, fine-tuned (resumable per epoch),
    measured (parameters, MACs, held-out loss, APs) and saved as ``out/targetnet.pt``; ``where``: (device,
    training precision)."""
    (device, precision), t0 = where, time.perf_counter()
    plan, nets, rows = checked.plan, list(checked.teachers.nets), checked.rows
    points = record.pop("points")
    target = assemble(result.student, result.filters, nets, plan, points)
    train_idx, held = split_pool(len(rows), checked.heldout)
    ft_idx = block_subset(train_idx, 0, schedule.finetune_images or None, seed)
    key = digest([record["run_key"], points])
    groups = plan.softmax_groups
    before = heldout_loss(target, rows[held], soft[held], device=device, softmax_groups=groups)
    pre_scores = predict(target, checked.eval_set[0].rows, device=device) if checked.eval_set else None
    losses = finetune(target, rows[ft_idx], soft[ft_idx], schedule.finetune, seed, freeze_bn=schedule.finetune_freeze_bn,
                      device=device, store=EpochFile(store.dir / f"finetune-{key}.partial.pt", key), plan=plan,
                      precision=precision)
    after = heldout_loss(target, rows[held], soft[held], device=device, softmax_groups=groups)
    x = to_input(rows[:1].to(torch.device("cpu")))
    record.update({
        "finetune_loss": [round(v, 5) for v in losses],
        "heldout_loss": {"before_finetune": round(float(before.mean()), 5), "after_finetune": round(float(after.mean()), 5)},
        "params": {"targetnet": count_parameters(target), "teachers": sum(count_parameters(t) for t in nets),
                   "branches": target.branch_names},
        "macs_per_image": {"targetnet": round(forward_macs_per_image(target.cpu(), x)),
                           "teachers": round(sum(forward_macs_per_image(t.cpu(), x) for t in nets))}})
    freeze(nets, device)
    times["finetune"] = time.perf_counter() - t0
    if checked.eval_set is not None:
        _evaluate(checked, target, pre_scores, record, device, log)
    head_list = heads(checked.teachers, plan, schedule.temperature)
    save_target(out / "targetnet.pt", target, role="targetnet", own_format=OWN_FORMAT, heads=head_list,
                input_size=checked.pool.image_size, normalisation=checked.teachers.input_norm, init=checked.init,
                arch=checked.teachers.arch, **({"eval_ap": record["target_ap"]} if "target_ap" in record else {}))
    log(f"TargetNet: {record['params']['targetnet']:,} parameters, {record['macs_per_image']['targetnet'] / 1e6:.1f} M "
        f"MACs per image (teachers {record['params']['teachers']:,}, "
        f"{record['macs_per_image']['teachers'] / 1e6:.1f} M)")


def _evaluate(checked: _Checked, target, pre_scores, record: dict, device, log) -> None:
    """APs (VOC2007 11-point, per label and mAP) of the teachers and the TargetNet on the evaluation folder."""
    images, _, targets, cols = checked.eval_set
    plan, nets = checked.plan, checked.teachers.nets
    groups = [g for g, _ in plan.softmax_groups]
    teacher_logits = torch.empty(len(images.files), len(plan.tasks))
    for n in plan.active_teachers:
        teacher_logits[:, plan.per_teacher[n]] = select_tasks(predict(nets[n], images.rows, device=device),
                                                              plan.local_per_teacher[n])
    names = [plan.tasks[i] for i in cols]

    def aps(logits):
        return ap_dict(names, probabilities(logits, groups)[:, cols].numpy(), targets.numpy(), digits=3)
    record["evaluated_on"] = {"folder": str(images.root), "images": len(images.files)}
    record["teacher_ap"] = aps(teacher_logits)
    record["target_ap_before_finetune"] = aps(pre_scores)
    record["target_ap"] = aps(predict(target, images.rows, device=device))
    log(f"teachers mAP {record['teacher_ap']['mAP']:.2f}; TargetNet mAP {record['target_ap_before_finetune']['mAP']:.2f} "
        f"before / {record['target_ap']['mAP']:.2f} after fine-tuning ({len(images.files)} images of {images.root})")

