"""Safe checkpoints: weights in ``NAME.pt`` (read with ``torch.load(weights_only=True)``), metadata —
architecture, label names, preset, metrics, the weights' digest — in ``NAME.json`` beside them. Writes
are atomic (temporary file, then rename), so an interrupted run never leaves a half-written checkpoint;
a write that fails (disk full, no permission) is one :class:`StorageError` naming the file. Under torchrun
rank 0 alone writes (:func:`kalib.distributed.on_writer`) and the other processes wait for it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from .. import distributed
from ..distributed import on_writer
from ..errors import CheckpointError, ConfigMismatchError
from ..files import atomic_write, file_sha
from ..method.targetnet import TargetNet
from ..models.blocknet import BlockNet, build_backbone
from ..models.pretrained import load_tensors

FORMAT = "kalib-checkpoint"
VERSION = 1
EPOCH_FORMAT = "kalib-epoch-checkpoint"
DAMAGED = "rerun the command that wrote it (a damaged checkpoint is trained again) or restore it from a copy"


def save_model(path: str | Path, model: BlockNet, **meta) -> Path:
    """Write ``model``'s weights to ``path`` (``.pt``) and its config, the weights' digest and ``meta``
    to ``path.json``."""
    path = Path(path).with_suffix(".pt")

    def write() -> None:
        atomic_write(path, lambda p: torch.save(model.state_dict(), p))
        info = {"format": FORMAT, "version": VERSION, "config": model.config, "weights_sha256": file_sha(path), **meta}
        atomic_write(path.with_suffix(".json"), lambda p: p.write_text(json.dumps(info, indent=1)))
    on_writer(write)
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
    if not isinstance(meta.get("version", VERSION), int) or meta.get("version", VERSION) > VERSION:
        raise CheckpointError(f"{path} was written by a newer kalib (checkpoint version {meta.get('version')}; this "
                              f"kalib reads version {VERSION}); update kalib to read it")
    labels = meta.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(n, str) and n for n in labels)
                                   and len(set(labels)) == len(labels)):
        raise CheckpointError(f"{path}: its label names are damaged (not a list of distinct names); {DAMAGED}")
    return meta


def load_state(path: str | Path, sha256: str | None = None) -> dict:
    """The weights at ``path``, loaded without executing any pickled code; with ``sha256`` (the digest
    in the checkpoint's JSON) a file whose bytes changed is refused as corrupt or truncated."""
    path = Path(path).with_suffix(".pt")
    if sha256 is not None and path.is_file() and file_sha(path) != sha256:
        raise CheckpointError(f"{path} is corrupt or truncated (its bytes do not match the digest in "
                              f"{path.with_suffix('.json').name}); {DAMAGED}")
    try:
        return load_tensors(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found") from None
    except Exception as err:  # truncated zip, foreign pickle, anything torch refuses to load safely
        raise CheckpointError(f"{path} is corrupt or truncated, or not a kalib checkpoint "
                              f"({type(err).__name__}); {DAMAGED}") from None


def load_model(path: str | Path) -> tuple[BlockNet, dict]:
    """Rebuild the network of a checkpoint from its JSON config and load its weights."""
    meta = read_meta(path)
    if not isinstance(meta.get("config"), dict) or "arch" not in meta["config"]:
        raise CheckpointError(f"{Path(path).with_suffix('.json')} holds no network config; {DAMAGED}")
    try:
        model = build_backbone(**meta["config"])
    except TypeError as err:         # a config field this kalib does not know
        raise CheckpointError(f"{Path(path).with_suffix('.json')}: its network config does not fit this kalib "
                              f"({err}); {DAMAGED}") from None
    state = load_state(path, meta.get("weights_sha256"))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{Path(path).with_suffix('.pt')} does not match its architecture "
                              f"{meta['config'].get('arch')}: {str(err).splitlines()[0]}") from None
    return model, meta


def save_target(path: str | Path, net: TargetNet, **meta) -> Path:
    """Write the TargetNet's weights to ``path`` (``.pt``) and its spec plus ``meta`` to ``path.json``.

    The JSON's ``config`` names the pseudo-arch ``targetnet`` so that tools expecting a plain backbone
    fail with a clear "unknown arch" message instead of loading the wrong network.
    """
    path = Path(path).with_suffix(".pt")

    def write() -> None:
        atomic_write(path, lambda p: torch.save(net.state_dict(), p))
        info = {"format": FORMAT, "version": VERSION, "kind": "targetnet",
                "config": {"arch": "targetnet", "num_classes": len(net.tasks)},
                "labels": list(net.tasks), "targetnet": net.spec, **meta}
        atomic_write(path.with_suffix(".json"), lambda p: p.write_text(json.dumps(info, indent=1)))
    on_writer(write)
    return path


def load_target(path: str | Path) -> tuple[TargetNet, dict]:
    """Rebuild a TargetNet saved by :func:`save_target` (weights loaded with ``weights_only=True``)."""
    meta = read_meta(path)
    if meta.get("kind") != "targetnet" or "targetnet" not in meta:
        raise CheckpointError(f"{path} is not a TargetNet checkpoint")
    if meta["targetnet"].get("teacher_copies") != "one per teacher":
        raise CheckpointError(f"{path} was written by an older kalib that copied a teacher's blocks once per "
                              "branch; rerun `python -m kalib amalgamate` with --restart to rebuild it")
    try:
        net = TargetNet.from_spec(meta["targetnet"])
    except (KeyError, TypeError, AttributeError, IndexError) as err:
        raise CheckpointError(f"{Path(path).with_suffix('.json')}: its TargetNet spec is damaged "
                              f"({type(err).__name__}: {err}); {DAMAGED}") from None
    try:
        net.load_state_dict(load_state(path))
    except RuntimeError as err:
        raise CheckpointError(f"{Path(path).with_suffix('.pt')} does not match its TargetNet spec: "
                              f"{str(err).splitlines()[0]}") from None
    return net.eval(), meta


class EpochFile:
    """The per-epoch training state of one unit of work (a teacher, a block, a fine-tuning) in one file,
    tagged with the ``fingerprint`` of the settings that made it: the :class:`kalib.train.EpochStore` of
    the run layer. A file of other settings is refused (:class:`~kalib.errors.ConfigMismatchError`)
    rather than resumed; :meth:`remove` deletes it once the unit's own result is saved. A file tagged with
    ``legacy``, the fingerprint of the same settings as an older kalib computed it (teachers keyed by their
    JSON, not their weights), is resumed too."""

    def __init__(self, path: str | Path, fingerprint: str = "", legacy: str | None = None):
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.legacy = legacy

    def __str__(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return self.path.is_file()

    def load(self, meta: dict) -> dict | None:
        """The saved state of this unit, or None (start from its first epoch): none saved, or a damaged file,
        which is said on stderr and removed (only the epochs of this unit are lost; under torchrun rank 0 says it
        and removes it, without waiting for the others, which find it damaged or gone alike)."""
        if not self.path.is_file():
            return None
        try:
            state = load_state(self.path)
        except CheckpointError:
            if distributed.rank() == 0:
                print(f"kalib: {self.path} is damaged (its epochs cannot be read); removed, this unit starts from "
                      "its first epoch", file=sys.stderr)
                self.path.unlink(missing_ok=True)
            return None
        if not isinstance(state, dict) or state.get("format") != EPOCH_FORMAT:
            raise CheckpointError(f"{self.path} is not a kalib epoch checkpoint; delete it or rerun with --restart")
        known = (self.fingerprint, self.legacy) if self.legacy is not None else (self.fingerprint,)
        if state.get("fingerprint") not in known or {k: state.get(k) for k in meta} != meta:
            raise ConfigMismatchError(f"{self.path} holds the training state of another configuration; rerun "
                                      "with --restart to discard it and start over")
        return state

    def save(self, state: dict) -> None:
        blob = {"format": EPOCH_FORMAT, "fingerprint": self.fingerprint, **state}
        on_writer(lambda: atomic_write(self.path, lambda p: torch.save(blob, p)))

    def remove(self) -> None:
        on_writer(lambda: self.path.unlink(missing_ok=True))
