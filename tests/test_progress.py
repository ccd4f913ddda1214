"""Progress bars: redrawn on a terminal, one line per finished bar anywhere else (kalib/progress.py)."""

import io
import re
from pathlib import Path

from kalib.progress import progress_bar


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_off_a_terminal_writes_one_line_when_it_ends():
    out = io.StringIO()
    bar = progress_bar(range(7), desc="block b1_1 2/4", file=out)
    for i in bar:
        bar.set_postfix(loss=f"{1 / (i + 1):.4f}")
        assert out.getvalue() == "", "nothing is drawn while the bar runs"
    text = out.getvalue()
    assert "\r" not in text and text.count("\n") == 1
    assert re.fullmatch(r"block b1_1 2/4: 7/7 in 00:0\d \(\d[\d.]*(it/s|s/it), loss=0\.1429\)\n", text), text


def test_a_bar_without_total_and_a_disabled_bar():
    out = io.StringIO()
    bar = progress_bar(desc="canvases", file=out)
    bar.update(3)
    bar.close()
    bar.close()                                   # closing twice writes nothing more
    assert out.getvalue().startswith("canvases: 3/? in ") and out.getvalue().count("\n") == 1
    quiet = io.StringIO()
    assert list(progress_bar(range(3), desc="x", disable=True, file=quiet)) == [0, 1, 2]
    assert quiet.getvalue() == ""


def test_a_bar_on_a_terminal_is_redrawn_in_place_and_cleared():
    out = _Terminal()
    assert list(progress_bar(range(3), desc="teacher 1", file=out)) == [0, 1, 2]
    text = out.getvalue()
    assert text.startswith("\rteacher 1:") and text.endswith("\r") and "\n" not in text


def test_every_bar_in_kalib_goes_through_the_helper():
    root = Path(__file__).resolve().parent.parent / "kalib"
    direct = [str(p.relative_to(root)) for p in root.rglob("*.py")
              if p.name != "progress.py" and re.search(r"^\s*(from|import) tqdm", p.read_text(), re.M)]
    assert direct == [], f"use kalib.progress.progress_bar instead of tqdm in {direct}"
