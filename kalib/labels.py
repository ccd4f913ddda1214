"""Label names to indices: how kalib reads a task set C (``--tasks bus,dog``) against a list of labels, with a
suggestion for a misspelt name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from .errors import UnknownTaskError


def resolve_tasks(names: str | Iterable[str], valid: Sequence[str]) -> list[int]:
    """Indices of task ``names`` (a list or a comma-separated string) in ``valid``, in the given order."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    names = list(names)
    if not names:
        raise UnknownTaskError("the customized task set C is empty: name at least one task, e.g. --tasks "
                               + ",".join(valid[:2]))
    out = []
    for name in names:
        if name not in valid:
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise UnknownTaskError(f"unknown task '{name}'.{hint} Valid tasks: {', '.join(valid)}")
        if valid.index(name) in out:
            raise UnknownTaskError(f"task '{name}' is named twice")
        out.append(valid.index(name))
    return out
