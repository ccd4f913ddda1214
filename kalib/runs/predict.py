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

from ..data.folder import list_files
from ..data.paper import decode_image
from ..errors import CheckpointError, CommandError, MissingFileError
from ..train import predict
from .checkpoints import load_model, load_target, read_meta
from .presets import PRESETS


def probabilities(logits: torch.Tensor, softmax_groups: Sequence[Sequence[int]] = ()) -> torch.Tensor:
    """A network's logits ``(N, labels)`` as probabilities: a sigmoid per column, and one softmax over the
    columns of each group of ``softmax_groups`` (the labels of a single-label teacher)."""
    out = torch.sigmoid(logits.float())
    for cols in softmax_groups:
        out[:, list(cols)] = torch.softmax(logits[:, list(cols)].float(), dim=1)
    return out


def head_groups(heads: Iterable[dict], labels: Sequence[str]) -> list[list[int]]:
    """The columns (positions in ``labels``) of every softmax head of a checkpoint's ``heads``."""
    return [[list(labels).index(n) for n in head["labels"]] for head in heads or ()
            if head.get("kind") == "softmax" and head.get("labels")]


def input_size(meta: dict, checkpoint: str | Path) -> int:
    """The side in pixels a checkpoint's network reads: recorded in it (``input_size``), or that of the data of
    the preset it was trained with."""
    if meta.get("input_size"):
        return int(meta["input_size"])
    preset = PRESETS.get(meta.get("preset"))
    if preset is not None:
        specs = [s for s in (preset.data, preset.hard_data) if s is not None]
        spec = next((s for s in specs if s.key() == meta.get("data")), specs[0])
        return int(getattr(spec, "image_size", None) or spec.size)
    raise CheckpointError(f"{checkpoint} records no input size and no preset; it was not written by kalib "
                          "amalgamate or pretrain")


def load_scorer(checkpoint: str | Path):
    """``(network, label names, input size, softmax groups)`` of a TargetNet or teacher checkpoint."""
    meta = read_meta(checkpoint)
    model, meta = load_target(checkpoint) if meta.get("kind") == "targetnet" else load_model(checkpoint)
    labels = meta.get("labels")
    if not labels:
        raise CheckpointError(f"{checkpoint} stores no label names")
    return model.eval(), list(labels), input_size(meta, checkpoint), head_groups(meta.get("heads"), labels)


def image_files(paths: Iterable[str | Path]) -> list[Path]:
    """The files named by ``paths``: a file as it is, a folder as every file under it (recursively, as
    :func:`kalib.data.folder.list_files`)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += [p / rel for rel in list_files(p)]
        elif p.is_file():
            out.append(p)
        else:
            raise MissingFileError(f"{p} is neither an image file nor a folder")
    return out


def predict_images(checkpoint: str | Path, paths: Iterable[str | Path], *, device=None, batch_size: int = 64,
                   log: Callable[[str], None] = print) -> dict[str, dict[str, float]]:
    """Score every image of ``paths`` (files, or folders searched recursively) with a kalib TargetNet or teacher
    checkpoint: ``{image path: {label: probability}}``, in the order of the files. A file that is not a readable
    image is skipped and named in one ``log`` line."""
    model, labels, size, groups = load_scorer(checkpoint)
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
    if skipped:
        log(f"skipped {len(skipped)} file{'s' if len(skipped) > 1 else ''} that "
            f"{'are' if len(skipped) > 1 else 'is'} not a readable image: {', '.join(skipped[:3])}"
            + (", …" if len(skipped) > 3 else ""))
    if not out:
        raise CommandError(f"none of the {len(files)} files is a readable image")
    return out
