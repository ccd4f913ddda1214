"""Safe checkpoints: weights in ``NAME.pt`` (read with ``torch.load(weights_only=True)``), metadata —
architecture, label names, preset, metrics, the weights' digest — in ``NAME.json`` beside them. Writes
are atomic (temporary file, then rename), so an interrupted run never leaves a half-written checkpoint;
a write that fails (disk full, no permission) is one :class:`StorageError` naming the file.
"""

from __future__ import annotations

import errno
import hashlib
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


class StorageError(RuntimeError):
    """A file could not be written: no space left, no permission, a read-only file system."""


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
NO_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


def storage_error(err: OSError, path: str | Path | None = None) -> StorageError | None:
    """The one-line :class:`StorageError` for an ``OSError`` of a full disk or a missing permission
    (``None`` for other errors)."""
    path = path or err.filename
    if err.errno in NO_SPACE:
        return StorageError(f"no space left writing {path}; free some disk space and rerun the same command "
                            "to resume (finished epochs and blocks are kept)")
    if err.errno in NO_PERMISSION:
        return StorageError(f"cannot write {path} ({err.strerror}); choose an --out directory you can write "
                            "to, or make this one writable")
    return None


def _disk_full(directory: Path) -> bool:
    try:
        stat = os.statvfs(directory)
    except (OSError, AttributeError):
        return False
    return stat.f_bavail * stat.f_frsize < 1 << 20


def _atomic_write(path: Path, write) -> None:
    """``write(tmp)`` to a temporary file beside ``path``, then rename it to ``path``; the temporary file
    is removed when the write fails, and a full disk or a missing permission becomes a StorageError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            write(tmp)
            os.replace(tmp, path)
        except RuntimeError as err:   # torch.save reports a failed write as "... file write failed"
            if "write failed" not in str(err) or not _disk_full(path.parent):
                raise
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from None
        finally:
            if tmp.exists():
                tmp.unlink()
    except OSError as err:
        mapped = storage_error(err, path)
        if mapped is None:
            raise
        raise mapped from None


def file_sha(path: str | Path) -> str:
    """SHA-256 (first 16 hex digits) of a file's bytes: what a record keeps to tell a damaged file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def save_model(path: str | Path, model: BlockNet, **meta) -> Path:
    """Write ``model``'s weights to ``path`` (``.pt``) and its config, the weights' digest and ``meta``
    to ``path.json``."""
    path = Path(path).with_suffix(".pt")
    _atomic_write(path, lambda p: torch.save(model.state_dict(), p))
    info = {"format": FORMAT, "version": VERSION, "config": model.config, "weights_sha256": file_sha(path), **meta}
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


DAMAGED = "rerun the command that wrote it (a damaged checkpoint is trained again) or restore it from a copy"


def load_state(path: str | Path, sha256: str | None = None) -> dict:
    """The weights at ``path``, loaded without executing any pickled code; with ``sha256`` (the digest
    in the checkpoint's JSON) a file whose bytes changed is refused as corrupt or truncated."""
    path = Path(path).with_suffix(".pt")
    if sha256 is not None and path.is_file() and file_sha(path) != sha256:
        raise CheckpointError(f"{path} is corrupt or truncated (its bytes do not match the digest in "
                              f"{path.with_suffix('.json').name}); {DAMAGED}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found") from None
    except Exception as err:  # truncated zip, foreign pickle, anything torch refuses to load safely
        raise CheckpointError(f"{path} is corrupt or truncated, or not a kalib checkpoint "
                              f"({type(err).__name__}); {DAMAGED}") from None


def load_model(path: str | Path) -> tuple[BlockNet, dict]:
    """Rebuild the network of a checkpoint from its JSON config and load its weights."""
    meta = read_meta(path)
    model = build_backbone(**meta["config"])
    state = load_state(path, meta.get("weights_sha256"))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{Path(path).with_suffix('.pt')} does not match its architecture "
                              f"{meta['config'].get('arch')}: {str(err).splitlines()[0]}") from None
    return model, meta
