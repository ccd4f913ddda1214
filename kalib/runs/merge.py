"""``kalib merge``: the training-free student (:mod:`kalib.method.merge`) written as a kalib checkpoint that
``kalib evaluate`` and ``kalib predict`` read, from kalib's own teachers (a ``kalib pretrain`` directory, whose
generic checkpoint is their shared start θ₀) or from torchvision teachers a user brings
(``--teacher ARCH:WEIGHTS:LABELS``, θ₀ from ``--start`` where λ is not the plain average 1/N)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ..data.folder import check_folder
from ..errors import ConfigError
from ..files import file_sha
from ..method.filters import task_plan
from ..method.merge import merged_student
from ..metrics import mean_ap
from ..models.blocknet import BlockNet, build_backbone
from ..models.pretrained import blocknet_key
from ..models.torchvision_teachers import IMAGENET_MEAN, IMAGENET_STD, read_labels, read_state, state_architecture
from ..train import predict
from .checkpoints import load_model, save_model
from .data import load_data
from .own import heads, image_pool, input_norm, load_torchvision_teachers, teacher_specs
from .state import load_teachers, teacher_files


def _lam(lam: float | None, active: int) -> float:
    lam = 1.0 / active if lam is None else float(lam)
    if not lam > 0 or lam == float("inf"):
        raise ConfigError(f"--lam must be a positive number, got {lam}")
    return lam


def shared_start(path: str | Path, arch: str, input_norm: dict) -> BlockNet:
    """θ₀ from a torchvision state dict of ``arch`` (with any classifier or none: the merge uses the blocks only);
    refused in one line when it is of another architecture."""
    state = read_state(path)
    found, _ = state_architecture(state)
    if found != arch:
        raise ConfigError(f"--start {path} is {'a ' + found if found else 'not a torchvision'} state dict, but the "
                          f"teachers are {arch}: give the weights all of them were fine-tuned from")
    net = build_backbone(arch, 1, input_norm=input_norm)
    mapped = {new: v for k, v in state.items() if (new := blocknet_key(arch, k, net)) is not None}
    missing, unexpected = net.load_state_dict(mapped, strict=False)
    if unexpected or any(not k.startswith("head.") for k in missing):
        raise ConfigError(f"--start {path}: its weights do not map onto {arch}'s blocks")
    return net


def merge_preset_teachers(preset, teachers_dir: str | Path, out: str | Path, *, teacher_set: str = "2",
                          tasks=None, lam: float | None = None, pool_images: int | None = None, data_root=None,
                          log: Callable[[str], None] = print) -> dict:
    """Merge the teachers of a ``kalib pretrain`` directory for the labels ``tasks`` (default all) with ``lam``
    (default 1/N), BatchNorm statistics from the first ``pool_images`` of the preset's unlabelled pool (default
    all); write ``out`` (``.pt`` and ``.json``) and return its record, with validation and test mAP where the
    data has them."""
    _, paths, generic = teacher_files(preset, teachers_dir, teacher_set)
    teachers, labels = load_teachers(paths)
    plan = task_plan(tasks, labels)
    lam = _lam(lam, len(plan.active_teachers))
    bench = load_data(preset, data_root=data_root)
    if pool_images is not None and not 0 < pool_images:
        raise ConfigError(f"--pool-images must be positive, got {pool_images}")
    images = bench.pool_images[:pool_images] if pool_images else bench.pool_images
    log(f"merging {len(plan.active_teachers)} teachers with lambda {lam:g} from {generic.name}; BatchNorm "
        f"statistics from {len(images):,} pool images")
    net = merged_student(load_model(generic)[0], teachers, plan, lam, images)
    record = {"lam": lam, "labels": list(plan.tasks), "pool_images": len(images),
              "teachers": [file_sha(p) for p in paths], "start": file_sha(generic)}
    for split in ("val", "test"):
        split_images = getattr(bench, f"{split}_images", None)
        if split_images is not None:
            y = getattr(bench, f"{split}_labels")[:, bench.label_indices(plan.tasks)]
            record[f"{split}_map"] = round(float(mean_ap(predict(net, split_images).numpy(), y.numpy())), 3)
    save_model(out, net, role="merged", preset=preset.name, data=bench.spec.key(), **record)
    return record


def merge_own_teachers(teachers: Sequence[str], pool: str | Path, out: str | Path, *, tasks=None,
                       image_size: int = 224, mean=None, std=None, start: str | Path | None = None,
                       lam: float | None = None, log: Callable[[str], None] = print) -> dict:
    """Merge torchvision teachers a user trained from one shared start (``start``: that start's torchvision state
    dict, needed unless ``lam`` is 1/N), BatchNorm statistics from the images of the folder ``pool``; write
    ``out`` and return its record."""
    kwargs = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    input_norm(kwargs.get("mean", IMAGENET_MEAN), kwargs.get("std", IMAGENET_STD))      # the cheap checks first
    plan = task_plan(tasks, [read_labels(s.labels) for s in teacher_specs(teachers)], shared="first")
    lam = _lam(lam, len(plan.active_teachers))
    check_folder(pool, "--pool")
    loaded = load_torchvision_teachers(teachers, **kwargs)
    theta0 = shared_start(start, loaded.arch, loaded.input_norm) if start is not None else None
    images = image_pool(pool, image_size, log=log)
    net = merged_student(theta0, list(loaded.nets), plan, lam, images.rows)
    record = {"lam": lam, "labels": list(plan.tasks), "pool_images": len(images.files),
              "teachers": [file_sha(s.weights) for s in loaded.specs],
              "start": file_sha(start) if start is not None else None}
    save_model(out, net, role="merged", input_size=image_size, normalisation=loaded.input_norm,
               heads=heads(loaded, plan, 1.0), **record)
    return record
