"""Scoring image files with a kalib checkpoint (``kalib predict``): a TargetNet or a teacher, each image read
at the checkpoint's own input size and normalisation, turned into one probability per label.

* Input size: a checkpoint of ``kalib amalgamate --teacher`` records it (``input_size``); one of a preset run
  has its preset's (the image size of the data it was trained on).
* Normalisation: it travels inside the network (:class:`kalib.models.blocknet.InputNorm`, kalib's own
  otherwise), so every image goes through :func:`kalib.train.to_input` unchanged.
* Probabilities: a sigmoid per label, except the labels of a single-label (softmax) teacher, recorded in the
  checkpoint's ``heads``, which share one softmax (:func:`probabilities`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..data.folder import MAX_IMAGE_SIZE, list_files
from ..data.paper import decode_image
from ..errors import CheckpointError, CommandError, MissingFileError
from ..resources import available_memory, check_memory
from ..train import predict
from .checkpoints import DAMAGED, load_model, load_target, read_meta
from .presets import PRESETS

IMAGE_BYTES_PER_PIXEL = 120     # scoring one image: its uint8 and float copies and the first layers' activations


def probabilities(logits: torch.Tensor, softmax_groups: Sequence[Sequence[int]] = ()) -> torch.Tensor:
    """A network's logits ``(N, labels)`` as probabilities: a sigmoid per column, and one softmax over the
    columns of each group of ``softmax_groups`` (the labels of a single-label teacher)."""
    out = torch.sigmoid(logits.float())
    for cols in softmax_groups:
        out[:, list(cols)] = torch.softmax(logits[:, list(cols)].float(), dim=1)
    return out


def head_groups(heads: Iterable[dict], labels: Sequence[str], checkpoint: str | Path = "the checkpoint") -> list[list[int]]:
    """The columns (positions in ``labels``) of every softmax head of a checkpoint's ``heads``;
    :class:`~kalib.errors.CheckpointError` where ``heads`` is not a list of heads of those labels."""
    heads = heads or []
    if not (isinstance(heads, list) and all(isinstance(h, dict) and isinstance(h.get("labels", []), list)
                                            and set(h.get("labels", [])) <= set(labels) for h in heads)):
        raise CheckpointError(f"{checkpoint}: its heads are damaged (not heads of its labels); {DAMAGED}")
    return [[list(labels).index(n) for n in head["labels"]] for head in heads
            if head.get("kind") == "softmax" and head.get("labels")]


def input_size(meta: dict, checkpoint: str | Path) -> int:
    """The side in pixels a checkpoint's network reads: recorded in it (``input_size``), or that of the data it
    was trained on: its preset's, or, for a teacher or generic network of ``kalib pretrain`` (which records
    the data's key, not the preset), the preset data of that key."""
    if "input_size" in meta:
        size = meta["input_size"]
        if not (isinstance(size, int) and 1 <= size <= MAX_IMAGE_SIZE):
            raise CheckpointError(f"{checkpoint}: its input size {size!r} is damaged (a whole number of pixels, 1 to "
                                  f"{MAX_IMAGE_SIZE}); {DAMAGED}")
        return size
    presets = [PRESETS[meta["preset"]]] if meta.get("preset") in PRESETS else list(PRESETS.values())
    specs = [s for p in presets for s in (p.data, p.hard_data) if s is not None]
    spec = next((s for s in specs if s.key() == meta.get("data")), specs[0] if meta.get("preset") in PRESETS else None)
    if spec is not None:
        return int(getattr(spec, "image_size", None) or spec.size)
    raise CheckpointError(f"{checkpoint} records no input size, and the data it was trained on (key "
                          f"{meta.get('data')}) is no preset's: it was pretrained with --set values that change "
                          "the data; score images with a TargetNet of the same run, or pretrain it again")


def load_scorer(checkpoint: str | Path):
    """``(network, label names, input size, softmax groups)`` of a TargetNet or teacher checkpoint."""
    meta = read_meta(checkpoint)
    model, meta = load_target(checkpoint) if meta.get("kind") == "targetnet" else load_model(checkpoint)
    labels = model_labels(model, meta, checkpoint)
    return model.eval(), labels, input_size(meta, checkpoint), head_groups(meta.get("heads"), labels, checkpoint)


def model_labels(model, meta: dict, checkpoint: str | Path) -> list[str]:
    """The label names of a checkpoint's network, one per output; :class:`~kalib.errors.CheckpointError` when
    it stores none, or not as many as the network has outputs."""
    labels = meta.get("labels")
    if not labels:
        raise CheckpointError(f"{checkpoint} stores no label names")
    outputs = len(model.tasks) if hasattr(model, "tasks") else model.num_classes
    if len(labels) != outputs:
        raise CheckpointError(f"{checkpoint} names {len(labels)} labels for its {outputs} outputs; {DAMAGED}")
    return list(labels)


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files named by ``paths``: a file as it is, a folder as every file under it (recursively, as
    :func:`kalib.data.folder.list_files`, which follows a link to a folder once); a file named twice (the
    same path, or a folder and a file in it) is scored once."""
    out, seen = [], set()
    for p in map(Path, paths):
        if p.is_dir():
            found = [p / rel for rel in list_files(p)]
        elif p.is_file():
            found = [p]
        else:
            raise MissingFileError(f"{p} is neither an image file nor a folder")
        for f in found:
            if f.resolve() not in seen:
                seen.add(f.resolve())
                out.append(f)
    return out


def predict_images(checkpoint: str | Path, paths: Iterable[str | Path], *, device=None, batch_size: int = 64,
                   log: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Score every image of ``paths`` (files, or folders searched recursively) with a kalib TargetNet or teacher
    checkpoint: ``{image path: {label: probability}}``, in the order of the files. A file that is not a readable
    image is skipped and named in one ``log`` line."""
    model, labels, size, groups = load_scorer(checkpoint)
    per_image = IMAGE_BYTES_PER_PIXEL * size * size
    check_memory(per_image, f"scoring one image of {size} px", f"score on a machine with more memory "
                 f"({checkpoint} reads {size} px images)")
    batch_size = max(1, min(batch_size, int(0.5 * (available_memory() or 1 << 62) / per_image)))
    files = image_files(paths)
    if not files:
        raise CommandError(f"no image files in {', '.join(map(str, paths))}")
    out, skipped = {}, []
    for start in range(0, len(files), batch_size):
        chunk, arrays = [], []
        for path in files[start:start + batch_size]:
            try:
                arrays.append(decode_image(path, size))
                chunk.append(path)
            except Exception:       # PIL's errors for a broken or non-image file are many
                skipped.append(str(path))
        if not chunk:
            continue
        probs = probabilities(predict(model, torch.from_numpy(np.stack(arrays)), device=device), groups)
        out.update({str(p): {n: round(float(v), 6) for n, v in zip(labels, row)} for p, row in zip(chunk, probs)})
    if not out:
        raise CommandError(f"none of the {len(files)} files is a readable image (e.g. {skipped[0]}); give image "
                           "files PIL can open (PNG, JPEG, …)")
    if skipped:
        log(f"skipped {len(skipped)} file{'s' if len(skipped) > 1 else ''} that "
            f"{'are' if len(skipped) > 1 else 'is'} not a readable image: {', '.join(skipped[:3])}"
            + (", …" if len(skipped) > 3 else ""))
    return out
