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

from ..errors import ConfigError
from .presets import Preset, field_names, field_path, set_path


def digest(obj) -> str:
    """A short, stable hash of a JSON-able object (dict keys sorted)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_digest(path: str | Path) -> str:
    """Hash of a checkpoint's JSON metadata: changes whenever the checkpoint is rewritten."""
    return hashlib.sha1(Path(path).with_suffix(".json").read_bytes()).hexdigest()[:16]


def changed_keys(old: dict, new: dict) -> list[str]:
    """Top-level keys whose values differ between two settings dicts."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def parse_value(text: str, current, name: str):
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
        raise ConfigError(f"--set {name}={text}: expected a value of type {kind}") from None


def _current(obj, path: list[str]):
    for head in path:
        obj = obj.get(head) if isinstance(obj, dict) else getattr(obj, head, None)
    return obj


def override(preset: Preset, assignments: Iterable[str] | None) -> Preset:
    """A copy of ``preset`` with fields set from ``FIELD=VALUE`` strings (the command line's ``--set``).

    ``FIELD`` is a dotted path; its first name may be a field of one of the preset's parts
    (``teacher.epochs``, ``block.lr``, ``block_images``: :func:`~kalib.runs.presets.field_path`). Values
    are parsed as the type of the field they replace, and every part checks its new values, so a value
    that cannot run raises :class:`~kalib.errors.ConfigError` naming the field and its rule.
    """
    for item in assignments or ():
        name, sep, text = item.partition("=")
        name, text = name.strip(), text.strip()
        if not sep or not name:
            raise ConfigError(f"--set expects FIELD=VALUE (for example teacher.epochs=3), got '{item}'")
        try:
            path = field_path(preset, name)
        except ConfigError:
            raise ConfigError(f"--set {name}: unknown field '{name.split('.')[0]}'; "
                              f"{', '.join(field_names(preset))} are valid") from None
        parent = _current(preset, path[:-1])
        if dataclasses.is_dataclass(parent) and path[-1] not in {f.name for f in dataclasses.fields(parent)}:
            raise ConfigError(f"--set {name}: unknown field '{path[-1]}' of {type(parent).__name__}; valid: "
                              f"{', '.join(f.name for f in dataclasses.fields(parent))}")
        value = parse_value(text, _current(preset, path), name)
        try:
            preset = set_path(preset, path, value)
        except ConfigError as err:
            raise ConfigError(f"--set {name}={text}: {err}") from None
    return preset
