"""Safe checkpoints: weights in ``NAME.pt`` (read with ``torch.load(weights_only=True)``), metadata —
architecture, label names, preset, metrics — in ``NAME.json`` beside them. Writes are atomic
(temporary file, then rename), so an interrupted run never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .models import BlockNet, build_backbone

FORMAT = "kalib-checkpoint"
VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, truncated, foreign or incompatible."""


class ConfigMismatchError(CheckpointError):
    """Saved training state (a finished checkpoint, an epoch checkpoint, block states) belongs to another
    configuration; resuming from it would mix two runs. The message offers ``--restart``."""


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def save_model(path: str | Path, model: BlockNet, **meta) -> Path:
    """Write ``model``'s weights to ``path`` (``.pt``) and its config plus ``meta`` to ``path.json``."""
    path = Path(path).with_suffix(".pt")
    _atomic_write(path, lambda p: torch.save(model.state_dict(), p))
    info = {"format": FORMAT, "version": VERSION, "config": model.config, **meta}
    _atomic_write(path.with_suffix(".json"), lambda p: p.write_text(json.dumps(info, indent=1)))
    return path


def read_meta(path: str | Path) -> dict:
    """The JSON metadata of a kalib checkpoint; :class:`CheckpointError` if it is not one."""
    path = Path(path).with_suffix(".json")
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a kalib checkpoint is NAME.pt with NAME.json beside it")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is corrupt ({err}); delete it and rerun with --restart") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a kalib checkpoint (no '\"format\": \"{FORMAT}\"' field)")
    return meta


def load_state(path: str | Path) -> dict:
    """The weights at ``path``, loaded without executing any pickled code."""
    path = Path(path).with_suffix(".pt")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found") from None
    except Exception as err:  # truncated zip, foreign pickle, anything torch refuses to load safely
        raise CheckpointError(f"{path} is corrupt, truncated or not a kalib checkpoint "
                              f"({type(err).__name__}); delete it and rerun with --restart") from None


def load_model(path: str | Path) -> tuple[BlockNet, dict]:
    """Rebuild the network of a checkpoint from its JSON config and load its weights."""
    meta = read_meta(path)
    model = build_backbone(**meta["config"])
    try:
        model.load_state_dict(load_state(path))
    except RuntimeError as err:
        raise CheckpointError(f"{Path(path).with_suffix('.pt')} does not match its architecture "
                              f"{meta['config'].get('arch')}: {str(err).splitlines()[0]}") from None
    return model, meta
