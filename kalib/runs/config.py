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


CACHE_DTYPES = ("float32", "bfloat16", "float16")


def check_preset(preset):
    """``preset`` if its amalgamation settings can run; ``ValueError`` listing every value that would only
    fail deep inside a run (a held-out slice of 0 images, a negative image count, an unknown student start),
    so that ``--set`` mistakes are refused before any work. Schedules and data check themselves."""
    from ..method.student import INITS
    bad = [] if preset.loss_slice >= 1 else [f"loss_slice must be >= 1 (held-out pool images), got {preset.loss_slice}"]
    bad += [f"{name} must be >= 0, got {getattr(preset, name)}"
            for name in ("pool_images", "block_images", "finetune_images", "pair_block_images", "seed")
            if not getattr(preset, name) >= 0]
    if preset.side_pool_images is not None and not preset.side_pool_images >= 0:
        bad.append(f"side_pool_images must be >= 0, got {preset.side_pool_images}")
    if not preset.filter_reduction >= 1:
        bad.append(f"filter_reduction must be >= 1, got {preset.filter_reduction}")
    if not 0 <= preset.branch_tolerance < float("inf"):
        bad.append(f"branch_tolerance must be >= 0 and finite, got {preset.branch_tolerance}")
    if any(not e >= 0 for e in preset.block_epochs):
        bad.append(f"block_epochs must be non-negative, got {list(preset.block_epochs)}")
    if preset.student_init not in INITS:
        bad.append(f"student_init must be one of {', '.join(INITS)}, got {preset.student_init!r}")
    if preset.amalgamation_cache not in CACHE_DTYPES:
        bad.append(f"amalgamation_cache must be one of {', '.join(CACHE_DTYPES)}, got {preset.amalgamation_cache!r}")
    pools = (preset.pool_images or getattr(preset.data, "n_pool", 0), preset.side_pool_images)
    small = [n for n in pools if n is not None and 0 < n <= preset.loss_slice]
    if small:
        bad.append(f"loss_slice ({preset.loss_slice}) must be smaller than the amalgamation pool ({min(small)} "
                   "images), which also has to train the blocks")
    if bad:
        raise ValueError(f"invalid preset {preset.name}: {'; '.join(bad)}")
    return preset
