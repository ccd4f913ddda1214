"""One writer per run directory: ``OUT/.NAME.lock`` is held (``fcntl.flock``) while a process trains into
``OUT``. A second process is refused with :class:`LockedError` naming the holder's pid. The kernel drops
the lock when its holder dies, so the lock file a killed process leaves behind is simply taken over.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

from ..errors import LockedError
from ..files import storage_error

try:
    import fcntl
except ImportError:             # not on POSIX: runs are not locked
    fcntl = None


@contextmanager
def run_lock(directory: str | Path, name: str = "run", what: str = "a kalib run", wait: bool = False):
    """Hold ``directory/.NAME.lock`` for the duration of the block; ``what`` says what the holder does
    (it is written into the lock file and shown to a second process). The file is removed on release, and
    so is ``directory`` when this call created it and nothing was written into it. ``wait``: a second process
    waits for the holder (saying so on stderr) instead of being refused."""
    directory = Path(directory)
    path = directory / f".{name}.lock"
    created = not directory.exists()
    fd = _acquire(directory, path, wait)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} ({what})".encode(), 0)
        yield path
    finally:
        path.unlink(missing_ok=True)          # while still locked: the next holder creates a fresh file
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)    # forked workers share the descriptor: unlock, not just close
        os.close(fd)
        if created and not any(directory.iterdir()):
            directory.rmdir()                 # a run refused before writing anything leaves no directory


def _acquire(directory: Path, path: Path, wait: bool = False) -> int:
    """An open descriptor of ``path`` holding its lock (retried when the file was replaced meanwhile)."""
    while True:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise (storage_error(err, path) or err) from None
        if fcntl is None:
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            if wait:
                print(f"waiting for {holder} to finish with {directory}", file=sys.stderr, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                os.close(fd)
                raise LockedError(f"{directory} is in use by {holder}; wait for it to finish (or stop it), then "
                                  "rerun: one process at a time writes into a run directory") from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            return fd
        os.close(fd)                          # the holder removed the file as we opened it: try again
