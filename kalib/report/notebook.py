"""Helpers for the lesson notebooks (``notebooks/01..07``): their papermill parameters and what a preset's
numbers can mean.

* :func:`check_parameters` refuses a parameter the notebooks do not take. papermill only warns about an
  unknown ``-p NAME VALUE`` and runs the notebook on its defaults, so ``-p presett smoke`` would quietly run
  the 40-minute ``quick`` preset; every notebook calls this at the top of its second cell instead.
* :func:`at_chance`, :func:`chance_map` and :func:`chance_note`: the ``smoke`` preset trains for seconds and
  its networks score at chance level; the notebooks say so wherever they print its results.
* :func:`meaningful`: the presets whose numbers were measured far above chance (``lesson``, ``quick``); on
  them the notebooks assert what their numbers should mean (teachers far above chance, the TargetNet
  close to its teachers). Other presets (the paper presets, not yet run here) only print their numbers.
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable

import numpy as np

from ..errors import UnknownParameterError
from ..metrics import mean_ap

# the names the parameters cell of every notebook defines (papermill's -p NAME VALUE)
PARAMETERS = ("preset", "seed", "out_dir", "data_root", "device", "overrides")
# presets whose networks train too briefly to learn anything: their numbers are at chance level
CHANCE_PRESETS = ("smoke",)
# presets whose numbers were measured to mean something: the notebooks assert it
MEANINGFUL_PRESETS = ("lesson", "quick")
_CHECKED = "_kalib_parameters_checked"
_IMPORTS = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)   # imported, not parameters


def _ipython_hidden() -> Iterable[str]:
    """Names IPython puts into a kernel's namespace itself (``In``, ``Out``, ``get_ipython``, ``exit``...)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return ()
    shell = get_ipython()
    return getattr(shell, "user_ns_hidden", {}) if shell is not None else ()


def check_parameters(namespace: dict, valid: Iterable[str] = PARAMETERS) -> None:
    """Raise :class:`UnknownParameterError` naming every variable of ``namespace`` (a notebook's
    ``globals()``) that is not one of the ``valid`` parameters, with the closest valid name and the full
    list. Modules, functions and classes (imports), names starting with ``_`` and IPython's own names are
    not parameters.

    Call it first in the cell after the parameters cell (and papermill's injected one): at that point the
    namespace holds nothing else. Once a namespace has passed, later calls return at once, so running the
    cell again in JupyterLab after other cells have defined variables is fine."""
    if namespace.get(_CHECKED):
        return
    valid = tuple(valid)
    hidden = set(_ipython_hidden())
    unknown = sorted(name for name, value in namespace.items()
                     if not name.startswith("_") and name not in valid and name not in hidden
                     and not isinstance(value, _IMPORTS))
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, valid, n=1)
            hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise UnknownParameterError(
            f"unknown notebook parameter{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
            f"the notebooks take: {', '.join(valid)} (papermill -p NAME VALUE, or edit the parameters cell)")
    namespace[_CHECKED] = True


def at_chance(preset_name: str) -> bool:
    """Whether a preset's networks train too briefly to learn anything (``smoke``: seconds, for the tests):
    its APs are those of random scores, and no conclusion may be drawn from them."""
    return preset_name in CHANCE_PRESETS


def meaningful(preset_name: str) -> bool:
    """Whether a preset's networks were measured to learn their tasks (``lesson``, ``quick``), so that the
    notebooks can assert what their numbers mean; ``smoke`` is at chance and the paper presets are not yet
    measured here."""
    return preset_name in MEANINGFUL_PRESETS


def chance_map(targets, seed: int = 0, draws: int = 10) -> float:
    """mAP (%) of uniformly random scores on the multi-hot ``targets`` ``(images, labels)`` (VOC 2007
    11-point AP, :func:`kalib.metrics.mean_ap`), averaged over ``draws`` random scorings: the level at
    which a network has learned nothing. It is a little above the fraction of images that show each label
    (the 11-point AP takes the best precision at each recall level). Entries of -1 (VOC's "difficult") are
    ignored, as by the metric."""
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    return float(np.mean([mean_ap(rng.random(targets.shape), targets) for _ in range(draws)]))


def chance_note(preset_name: str, chance: float) -> str:
    """The sentence a notebook prints under results of a preset at chance level ("" otherwise)."""
    if not at_chance(preset_name):
        return ""
    return (f"preset '{preset_name}' trains for seconds: these numbers are at chance level (random scores "
            f"give {chance:.1f} mAP here) and mean nothing; run preset 'lesson' for numbers that do")


def alt_text(fig) -> str:
    """What a figure shows, in words, for the image's alternative text: its label where one is set
    (``fig.set_label``, the drawings do), else its title and every panel's title, axis labels and legend
    entries, with the mathtext's ``$`` and backslashes taken out."""
    def plain(text: str) -> str:
        return " ".join(text.replace("$", "").replace("\\", "").split())

    if fig.get_label():
        return plain(fig.get_label())
    panels = []
    for ax in fig.axes:
        parts = [plain(ax.get_title(loc)) for loc in ("left", "center", "right") if ax.get_title(loc)]
        parts += [f"{axis}: {plain(label)}" for axis, label in (("x", ax.get_xlabel()), ("y", ax.get_ylabel())) if label]
        legend = ax.get_legend()
        if legend is not None:
            parts.append("lines: " + ", ".join(plain(t.get_text()) for t in legend.get_texts()))
        if parts:
            panels.append("; ".join(parts))
    title = plain(fig.get_suptitle()) if fig.get_suptitle() else ""
    return (f"Figure{': ' + title if title else ''} with {len(panels)} panel{'s' if len(panels) != 1 else ''}: " +
            " | ".join(panels)) if panels else (title or "A figure without titles or labels")


def show(fig, alt: str | None = None) -> None:
    """Show ``fig`` in a notebook with its alternative text (``alt``, else :func:`alt_text`) in the output's
    metadata, which the lessons' HTML writes into the image's ``alt`` (:mod:`kalib.report.html`), and close it
    so that the inline backend does not show it a second time. Returns nothing, so that a cell ending in
    ``show(...)`` shows the figure once. Outside IPython it does nothing."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:                       # pragma: no cover - IPython comes with the notebooks' extras
        return
    if get_ipython() is not None:
        import matplotlib.pyplot as plt
        display(fig, metadata={"alt": alt or alt_text(fig)})
        plt.close(fig)
