"""Run configuration helpers: the hash that ties saved training state to the settings that produced it,
and ``--set FIELD=VALUE`` overrides of preset fields (``teacher.epochs=3``, ``block.lr=0.05``,
``data.n_pool=2000``, ``arch_kwargs.width=16``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from collections.abc import Iterable
from pathlib import Path

from ..errors import ConfigError
from ..files import file_sha
from .presets import Preset, field_names, field_path, set_path


def digest(obj) -> str:
    """A short, stable hash of a JSON-able object (dict keys sorted)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def weights_key(path: str | Path) -> str:
    """What runs and records key a checkpoint (a teacher, a generic start) by: the SHA-256 (first 16 hex digits)
    of its weights file, as its JSON recorded it when it was written (``weights_sha256``), else computed now.
    Teachers pretrained again with bit-identical weights have the same key, whatever else their JSON says
    (seconds, memory, APs), so every run and table made from them is re-used."""
    path = Path(path).with_suffix(".pt")
    try:
        recorded = json.loads(path.with_suffix(".json").read_text()).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        recorded = None
    return recorded or file_sha(path)


def file_digest(path: str | Path) -> str:
    """Hash of a checkpoint's JSON metadata, the key kalib gave checkpoints before :func:`weights_key`: what
    was saved under it is still re-used (each place that keys by weights also accepts this older key)."""
    return hashlib.sha1(Path(path).with_suffix(".json").read_bytes()).hexdigest()[:16]


def changed_keys(old: dict, new: dict) -> list[str]:
    """Top-level keys whose values differ between two settings dicts."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def parse_value(text: str, current, name: str, hint=None):
    """``text`` as a value of the type of ``current`` (or, where ``current`` is None, of the type ``hint``, a
    field's annotation): a bool, int, float or string as such; a tuple, dict or dataclass field from JSON of
    that shape (a list, an object; a dataclass's object names some of its fields)."""
    kind = type(current) if current is not None else None
    if text == "null" and type(None) in typing.get_args(hint):
        return None
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
        if current is None:
            return _typed(value, hint, name, text)
        if dataclasses.is_dataclass(current):
            return _dataclass_value(type(current), value, name, text, current)
        if isinstance(current, (tuple, dict)) and not isinstance(value, list if kind is tuple else dict):
            raise ValueError
        return _tuples(value) if isinstance(current, tuple) else value
    except ConfigError:
        raise
    except ValueError:
        shape = {tuple: "a JSON list, e.g. [1, 2]", dict: "a JSON object, e.g. {\"width\": 16}"}.get(kind)
        expected = shape or f"a value of type {kind.__name__ if kind else 'JSON'}"
        raise ConfigError(f"--set {name}={text}: expected {expected}") from None


def _tuples(value):
    """JSON lists, nested, as tuples (the presets' groups are tuples of tuples)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def _dataclass_value(cls, value, name: str, text: str, base=None):
    """A JSON object as the dataclass ``cls`` (``base`` with the fields it names changed, where given)."""
    if not isinstance(value, dict):
        raise ConfigError(f"--set {name}={text}: expected a JSON object of {cls.__name__} fields, e.g. "
                          f"{name}.FIELD=VALUE or {name}={{\"FIELD\": VALUE}}")
    try:
        return dataclasses.replace(base, **value) if base is not None else cls(**value)
    except TypeError as err:
        raise ConfigError(f"--set {name}={text}: {err}; {cls.__name__}'s fields are "
                          f"{', '.join(f.name for f in dataclasses.fields(cls))}") from None


def _typed(value, hint, name: str, text: str):
    """A JSON ``value`` for a field that is None now, checked against its annotation ``hint`` (``int | None``,
    ``Schedule | None``)."""
    options = [a for a in typing.get_args(hint) or (hint,) if a is not type(None)]
    if value is None or hint is None:
        return value
    for option in options:
        if dataclasses.is_dataclass(option):
            return _dataclass_value(option, value, name, text)
        if option in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
            if option is int and value != int(value):
                continue
            return option(value)
    raise ConfigError(f"--set {name}={text}: expected {' or '.join(getattr(o, '__name__', str(o)) for o in options)}"
                      " or null")


def _current(obj, path: list[str]):
    for head in path:
        obj = obj.get(head) if isinstance(obj, dict) else getattr(obj, head, None)
    return obj


def _hint(obj, path: list[str]):
    """The annotation of the field at ``path`` (None where its parent is no dataclass)."""
    parent = _current(obj, path[:-1])
    if not dataclasses.is_dataclass(parent):
        return None
    return typing.get_type_hints(type(parent)).get(path[-1])


def override(preset: Preset, assignments: Iterable[str] | None) -> Preset:
    """A copy of ``preset`` with fields set from ``FIELD=VALUE`` strings (the command line's ``--set``).

    ``FIELD`` is a dotted path; its first name may be a field of one of the preset's parts
    (``teacher.epochs``, ``block.lr``, ``block_images``: :func:`~kalib.runs.presets.field_path`). Values
    are parsed as the type of the field they replace. Every value is set first and the parts check their
    values once, at the end, so the result never depends on the order of the assignments (a later one of the
    same field wins); a value that cannot run raises :class:`~kalib.errors.ConfigError` naming the
    assignments of the part that refuses it and its rule.
    """
    given = []
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
        value = parse_value(text, _current(preset, path), name, _hint(preset, path))
        try:
            preset = set_path(preset, path, value, check=False)
        except ConfigError as err:
            raise ConfigError(f"--set {name}={text}: {err}") from None
        given.append((path, f"{name}={text}"))
    return checked(preset, given)


def checked(obj, given: list, prefix: list[str] | None = None):
    """``obj`` (nested frozen dataclasses whose ``given`` fields were set unchecked: ``(path, "FIELD=VALUE")``)
    rebuilt from its innermost dataclasses outwards, so that each checks its final values once; a
    :class:`ConfigError` names the assignments under the part that refused."""
    prefix = prefix or []
    if not dataclasses.is_dataclass(obj):
        return obj
    touched = [(path, text) for path, text in given if path[:len(prefix)] == prefix]
    if not touched:
        return obj
    fields = {f.name: checked(getattr(obj, f.name), touched, [*prefix, f.name]) for f in dataclasses.fields(obj)}
    try:
        return dataclasses.replace(obj, **fields)
    except (TypeError, ValueError, IndexError) as err:     # ConfigError, or a check that met a value of the wrong kind
        raise ConfigError(f"--set {', '.join(text for _, text in touched)}: {err}") from None
