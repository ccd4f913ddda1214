"""Progress bars that behave the same everywhere in kalib.

On a terminal a bar is redrawn in place and cleared when it ends. Anywhere else (stderr redirected to a
file or a pipe, a notebook's output) a bar draws nothing while it runs and writes one line when it ends,
so logs hold no carriage-return updates and notebooks no empty outputs. Bars are plain ``tqdm`` bars, not
``tqdm.auto``'s notebook widgets (which need ipywidgets and warn without it).
"""

from __future__ import annotations

import sys

from tqdm import tqdm

from . import distributed

LINE_FORMAT = "{desc}: {n_fmt}/{total_fmt} in {elapsed} ({rate_fmt}{postfix})"


class _LineBar(tqdm):
    """A bar that never redraws and writes its final state as one line when closed."""

    def display(self, msg=None, pos=None):
        return False

    def clear(self, nolock=False):
        pass

    def close(self):
        if not self.disable:
            line = self.format_meter(**{**self.format_dict, "bar_format": LINE_FORMAT})
            self.fp.write(line.replace("( ", "(") + "\n")         # tqdm pads the rate to a fixed width
            self.fp.flush()
        super().close()


def _on_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):      # no isatty, or a closed stream
        return False


def progress_bar(iterable=None, *, desc: str, total: int | None = None, disable: bool = False, file=None):
    """A progress bar over ``iterable`` (``set_postfix`` works as in tqdm), written to ``file``
    (default ``sys.stderr``): redrawn in place on a terminal, else one line when it ends. Under torchrun only
    rank 0 draws its bars."""
    file = sys.stderr if file is None else file
    kind = tqdm if _on_terminal(file) else _LineBar
    return kind(iterable, desc=desc, total=total, disable=disable or distributed.rank() != 0, file=file, leave=False)
