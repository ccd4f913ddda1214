"""Writing files safely: every write goes to a temporary file beside the target and is renamed over it, so an
interrupted run never leaves a half-written file; a full disk or a missing permission becomes one
:class:`~kalib.errors.StorageError` naming the file. ``file_sha`` is the digest records keep to tell a
damaged file.
"""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path

from .errors import StorageError

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


def atomic_write(path: Path, write) -> None:
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
