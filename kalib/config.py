"""Run configuration helpers: the hash that ties saved training state to the settings that produced it,
and ``--set FIELD=VALUE`` overrides of preset fields (``teacher.epochs=3``, ``block.lr=0.05``,
``data.n_pool=2000``, ``arch_kwargs.width=16``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable
from pathlib import Path


def digest(obj) -> str:
    """A short, stable hash of a JSON-able object (dict keys sorted)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """Hash of a checkpoint's JSON metadata: changes whenever the checkpoint is rewritten."""
    return hashlib.sha1(Path(path).with_suffix(".json").read_bytes()).hexdigest()[:16]


def changed_keys(old: dict, new: dict) -> list[str]:
    """Top-level keys whose values differ between two settings dicts."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _parse(text: str, current, name: str):
    """``text`` as a value of the type of ``current``."""
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, str):
            return text
        value = json.loads(text)
        return tuple(value) if isinstance(current, tuple) and isinstance(value, list) else value
    except ValueError:
        kind = type(current).__name__ if current is not None else "JSON"
        raise ValueError(f"--set {name}={text}: expected a value of type {kind}") from None


def _assign(obj, path: list[str], text: str, name: str):
    head, rest = path[0], path[1:]
    if dataclasses.is_dataclass(obj):
        names = [f.name for f in dataclasses.fields(obj)]
        if head not in names:
            raise ValueError(f"--set {name}: unknown field '{head}' of {type(obj).__name__}; valid: "
                             f"{', '.join(names)}")
        current = getattr(obj, head)
        value = _assign(current, rest, text, name) if rest else _parse(text, current, name)
        try:
            return dataclasses.replace(obj, **{head: value})
        except (ValueError, TypeError) as err:
            raise ValueError(f"--set {name}={text}: {err}") from None
    if isinstance(obj, dict):
        current = obj.get(head)
        new = dict(obj)
        new[head] = _assign(current, rest, text, name) if rest else _parse(text, current, name)
        return new
    raise ValueError(f"--set {name}: '{head}' is not a field ({type(obj).__name__} has none)")


def override(obj, assignments: Iterable[str] | None):
    """A copy of the (frozen) dataclass ``obj`` with dotted fields set from ``FIELD=VALUE`` strings.

    Values are parsed as the type of the field they replace; validation of the dataclass (for example
    :class:`~kalib.train.Schedule`: epochs >= 0, batch size >= 1) raises ``ValueError``.
    """
    for item in assignments or ():
        name, sep, text = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--set expects FIELD=VALUE (for example teacher.epochs=3), got '{item}'")
        obj = _assign(obj, name.strip().split("."), text.strip(), name.strip())
    return obj
