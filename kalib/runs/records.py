"""One rule for "is this saved result still valid", used by every result kalib re-uses instead of computing
it again (finished teachers and baselines, a finished amalgamation run, finished blocks, seed summaries,
cached soft targets):

    A saved result is valid when the key stored with it equals the key of the settings asked for, and every
    file it names still has the digest (:func:`kalib.files.file_sha`) recorded for it. A file for which no
    digest was recorded (a record of an older kalib) is checked by loading it instead.

:func:`verify` applies the rule and says what it found (:class:`Verdict`); what to do about it stays with the
caller: a result of another configuration is refused with ``--restart`` offered (teachers, blocks of a run
directory) or simply made again (baselines, seed summaries); a damaged one is made again, saying so.
:func:`read_record` reads the JSON a record is kept in.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..files import file_sha

VALID, OTHER, DAMAGED = "valid", "other configuration", "damaged"


@dataclass(frozen=True)
class Verdict:
    """What :func:`verify` found: ``status`` (``VALID``, ``OTHER``: made with another key, ``DAMAGED``: a file
    it names is missing or changed, or, without a digest, does not load), the ``damaged`` files (in the order
    the record names them) and what was ``loaded`` from the files checked by loading (path -> value)."""
    status: str
    damaged: tuple[Path, ...] = ()
    loaded: dict = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return self.status == VALID


def verify(stored_key, expected_key, files: Mapping[str | Path, str | None] = (), *,
           load: Callable[[Path], object] | None = None, keyless_is_old: bool = False) -> Verdict:
    """Apply the rule to a saved result: ``stored_key`` is the key saved with it, ``expected_key`` the key of
    the settings asked for, ``files`` every file it names -> the digest recorded for it (``None``: none was
    recorded). A file without a digest is checked by ``load(path)`` (any exception: damaged; its value is kept
    in :attr:`Verdict.loaded`), or, without ``load``, by being there. ``keyless_is_old``: a result saved
    without a key (``stored_key`` None; made before kalib stored keys) counts as made with ``expected_key``.
    The key is checked first: the files of a result of another configuration are not looked at."""
    if stored_key != expected_key and not (keyless_is_old and stored_key is None):
        return Verdict(OTHER)
    damaged, loaded = [], {}
    for path, sha in dict(files).items():
        path = Path(path)
        if sha is not None:
            if not path.is_file() or file_sha(path) != sha:
                damaged.append(path)
        elif load is None:
            if not path.is_file():
                damaged.append(path)
        else:
            try:
                loaded[path] = load(path)
            except Exception:            # whatever stops it from loading: it is damaged
                damaged.append(path)
    return Verdict(DAMAGED if damaged else VALID, tuple(damaged), loaded)


def read_record(path: str | Path) -> dict | None:
    """The JSON object a record is kept in, or ``None`` when there is none yet or it cannot be read (cut
    off by a kill, not JSON, not an object): such a record is no record, and its result is made again."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
