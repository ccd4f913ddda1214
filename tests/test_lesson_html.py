"""The lessons' HTML (``render_lesson``, kalib/report/html.py) shows its maths with the network off.

Every formula of a markdown cell is written as MathML when the page is made, and the page loads nothing
from a URL (no MathJax or require.js from a CDN). The last test opens pages in headless Chromium with
the network cut off (an unreachable proxy, every host unresolvable) and checks what it laid out: the
formulas are MathML boxes of non-zero size with fractions stacked, and no ``$`` or TeX command is left
in the visible text. Chromium is Debian's ``chromium``, which ``make install`` installs; without it the
test fails unless ``KALIB_SKIP_BROWSER=1`` is set (``KALIB_CHROMIUM`` may name another binary).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import nbformat
import pytest
from nbconvert.filters.markdown_mistune import IPythonRenderer, MarkdownWithMath

from kalib.report.html import MathConversionError, tex_to_mathml
from kalib.runs.pipeline import NOTEBOOKS, render_lesson

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"

# The kinds of formula the notebooks use (and a few more), in one markdown cell.
MATHS = r"""# Eq. 4: the filter $f_n^k$

Teachers $\mathcal{A} = \{\mathcal{A}_1, \dots, \mathcal{A}_N\}$, tasks $\sum_{i \in C_n} \ell_i$,
$\operatorname{KL}(p \,\|\, q)$, $\tfrac{1}{2}$, $\lvert C \rvert = \sum_n |C_n|$, $\text{C-P}$,
$S_i = \arg\min_k L_i^k$, $N_c^{\mathrm{correct}}$ and $\mathbb{R}^{c}$; a shell variable stays code:
`$HOME`.

$$
l_n = \frac{1}{T_n} \sum_{i=1}^{T_n} \ell\!\left(a_n^i, a_n^{i*}\right),
\qquad
\ell(y, z) = -\big[\, y \log \sigma(z) + (1 - y) \log\big(1 - \sigma(z)\big) \big],
$$

$$
S_i = \arg\min_{1 \le k \le B} \; L_i^k , \qquad
\mathcal{T}_i = \Big[\, \underbrace{\{\mathcal{T}^1, \dots, \mathcal{T}^{S_i}\}}_{\text{shared trunk}},\;
\underbrace{f_n^{S_i}}_{\text{filter}} \Big] .
$$

$$
\begin{aligned}
F_n^{k+1*} &= \mathcal{A}_n^{k+1}\!\left(F_{un}^k\right), \\
O_{un}^i &= \mathcal{F}_n^i\!\left(F_n^{B*}\right), \quad p_n \le i \le q_n .
\end{aligned}
$$

\begin{equation}
E = \frac{a}{b}
\end{equation}

```python
price = "$5 and $6"
```
"""
N_MATHS = 14          # formulas in MATHS: 10 inline (one in the heading), 3 $$...$$, 1 environment
CODE = 'cost = "$5, not $x$"\nprint("$$ not maths $$")'
OUTPUT = "$$ not maths $$\n\\frac{a}{b} stays as printed\n"

URL = re.compile(r"^\s*(https?:)?//", re.I)
TEX_LEFT = re.compile(r"\$|\\[A-Za-z]+")


def _formulas(source: str) -> int:
    """How many formulas nbconvert's markdown parser finds in ``source`` (what MathJax would typeset)."""
    found = []

    class Counter(IPythonRenderer):
        def block_math(self, body):
            found.append(body)
            return ""

        def inline_math(self, body):
            found.append(body)
            return ""

        def latex_environment(self, name, body):
            found.append(body)
            return ""

    MarkdownWithMath(renderer=Counter(escape=False)).render(source)
    return len(found)


class _Page(HTMLParser):
    """What a page references (script/link/img/iframe/source URLs, ``url(...)``, ``import(...)`` in
    inline scripts and styles), its ``<math>`` elements, and its text outside code, scripts and styles."""

    SKIP = {"script", "style", "code", "pre"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.refs, self.maths, self.text, self.inline_code = [], 0, [], []
        self._open = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "math":
            self.maths += 1
        if tag in ("script", "img", "iframe", "source", "audio", "video", "embed"):
            self.refs.append(attrs.get("src") or "")
        if tag == "link":
            self.refs.append(attrs.get("href") or "")
        if tag in self.SKIP:
            self._open.append(tag)

    def handle_endtag(self, tag):
        if self._open and self._open[-1] == tag:
            self._open.pop()

    def handle_data(self, data):
        if self._open and self._open[-1] in ("script", "style"):
            self.inline_code.append(data)
        elif not any(t in self.SKIP for t in self._open):
            self.text.append(data)


def _page(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    return page


def _assert_offline(page: _Page) -> None:
    assert not [r for r in page.refs if URL.match(r)], f"the page loads from the network: {page.refs}"
    remote = [m.group(0) for code in page.inline_code
              for m in re.finditer(r"(url|import)\(\s*['\"]?(https?:)?//[^)]*\)|(src|href)\s*=\s*['\"](https?:)?//\S*",
                                   code)]
    assert not remote, f"inline scripts or styles load from the network: {remote[:5]}"


def _assert_no_tex(page: _Page) -> None:
    left = [t.strip()[:100] for t in page.text if TEX_LEFT.search(t)]
    assert not left, f"TeX left in the page's text: {left[:5]}"


def _notebook(path: Path, *cells) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.cells = list(cells)
    nbformat.write(nb, path)
    return path


def _maths_notebook(path: Path) -> Path:
    code = nbformat.v4.new_code_cell(CODE, execution_count=1)
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text=OUTPUT),
                    nbformat.v4.new_output("execute_result", {"text/plain": "'$5, not $x$'"}, execution_count=1)]
    return _notebook(path, nbformat.v4.new_markdown_cell(MATHS), code)


def _committed(name: str, tmp_path: Path) -> Path:
    """notebooks/NAME.ipynb as committed, outputs stripped: only its markdown and code."""
    nb = nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.write(nb, tmp_path / f"{name}.ipynb")
    return tmp_path / f"{name}.ipynb"


@pytest.mark.parametrize("tex, display, expected", [
    (r"\mathcal{A}_n^k", False, "&#x1D49C;"),
    (r"\sum_{i \in C_n} \ell_i", True, "<munder><mo>&#x02211;</mo>"),
    (r"\operatorname{KL}(p \| q)", False, "<mo>KL</mo>"),
    (r"\tfrac{1}{2}", False, "<mfrac>"),
    (r"\lvert C \rvert", False, "<mo>&#x0007C;</mo>"),
    (r"\text{C-P}", False, "<mtext>C-P</mtext>"),
    (r"\arg\min_{1 \le k \le B} L_i^k", True, "<mo>arg</mo><munder><mo>min</mo>"),
    (r"\arg\min_k L_i^k", False, "<mo>arg</mo><msub><mo>min</mo>"),
    (r"\underbrace{f_n^{S_i}}_{\text{filter}}", True, "<mo>&#x23DF;</mo>"),
    (r"\begin{aligned} a &= b \\ c &= d \end{aligned}", True, '<mtd columnalign="right" style="text-align: right'),
    (r"\mathcal{A}\!\left(F\right)", False, "<mi>&#x1D49C;</mi><mrow>"),     # \! dropped, not a named space
])
def test_the_constructs_the_lessons_use_become_mathml(tex, display, expected):
    mathml = tex_to_mathml(tex, display)
    assert mathml.startswith(f'<math display="{"block" if display else "inline"}">') and expected in mathml
    assert "mathspace" not in mathml and "\\" not in mathml


@pytest.mark.parametrize("tex, error", [
    (r"\frac{1}{", r"cannot convert \$\\frac\{1\}\{\$"),
    (r"x = \nosuchcommand{y}", r"does not know \\nosuchcommand"),
])
def test_a_formula_that_cannot_be_converted_fails_loudly(tmp_path, tex, error):
    with pytest.raises(MathConversionError, match=error):
        tex_to_mathml(tex)
    nb = _notebook(tmp_path / "a.ipynb", nbformat.v4.new_markdown_cell(f"Broken: ${tex}$"))
    with pytest.raises(MathConversionError, match=error):
        render_lesson(nb, tmp_path / "a.html")
    assert not (tmp_path / "a.html").exists()


def test_markdown_maths_become_mathml_and_code_and_outputs_stay_as_they_are(tmp_path):
    render_lesson(_maths_notebook(tmp_path / "a.ipynb"), tmp_path / "a.html")
    html = (tmp_path / "a.html").read_text(encoding="utf-8")
    page = _page(html)
    assert _formulas(MATHS) == N_MATHS and page.maths == N_MATHS
    assert 'id="Eq.-4:-the-filter-fnk"' in html and "ns0:" not in html      # a heading's formula keeps its anchor
    _assert_no_tex(page)
    _assert_offline(page)
    assert "mathjax" not in html.lower() and "require.js" not in html
    # a fenced block and a code span of the markdown, the code cell and its outputs: as written
    text = unescape(re.sub(r"<[^>]+>", "", html))
    for kept in ("$HOME", 'price = "$5 and $6"', CODE, OUTPUT, "'$5, not $x$'"):
        assert kept in text, kept


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_formula_of_the_committed_notebooks_becomes_mathml(tmp_path, name):
    nb = _committed(name, tmp_path)
    expected = sum(_formulas(c.source) for c in nbformat.read(nb, as_version=4).cells if c.cell_type == "markdown")
    render_lesson(nb, tmp_path / f"{name}.html")
    page = _page((tmp_path / f"{name}.html").read_text(encoding="utf-8"))
    assert expected > 0 and page.maths == expected
    _assert_no_tex(page)
    _assert_offline(page)


# A page of the test's own (never a lesson) that frames the lessons and reports, as JSON in its DOM, what
# Chromium laid out: computed display of every <math>, fractions stacked, boxes of non-zero size, text
# outside code that still holds $ or a TeX command, and any resource fetched from outside file: / data:.
PROBE = """<!DOCTYPE html><html><body>
%s
<pre id="report">not run</pre>
<script>
function probe(frame) {
  const doc = frame.contentDocument, win = frame.contentWindow;
  const maths = [...doc.querySelectorAll('math')];
  const displays = {};
  for (const m of maths) { const d = win.getComputedStyle(m).display; displays[d] = (displays[d] || 0) + 1; }
  const fracs = [...doc.querySelectorAll('mfrac')];
  const stacked = fracs.filter(f => {
    const a = f.children[0].getBoundingClientRect(), b = f.children[1].getBoundingClientRect();
    return a.height > 0 && b.height > 0 && a.bottom <= b.top + 1; }).length;
  const sized = maths.filter(m => { const r = m.getBoundingClientRect(); return r.width > 0 && r.height > 0; }).length;
  const tex = [];
  const walker = doc.createTreeWalker(doc.body, NodeFilter.SHOW_TEXT);
  for (let n; (n = walker.nextNode()); ) {
    if (n.parentElement.closest('code, pre, script, style, .jp-CodeCell')) continue;
    if (/\\$|\\\\[A-Za-z]/.test(n.data)) tex.push(n.data.slice(0, 100));
  }
  const remote = win.performance.getEntriesByType('resource').map(e => e.name)
    .filter(u => !/^(file|data|blob):/.test(u));
  return {src: frame.getAttribute('src'), maths: maths.length, displays, fracs: fracs.length, stacked, sized,
          tex, remote, height: doc.documentElement.scrollHeight};
}
window.addEventListener('load', () => {
  const report = document.getElementById('report');
  try { report.textContent = JSON.stringify([...document.querySelectorAll('iframe')].map(probe)); }
  catch (e) { report.textContent = 'error: ' + e; }
});
</script></body></html>
"""


def _chromium() -> str:
    for name in (os.environ.get("KALIB_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    if os.environ.get("KALIB_SKIP_BROWSER") == "1":
        pytest.skip("KALIB_SKIP_BROWSER=1: the lessons are not opened in a browser (no chromium here)")
    pytest.fail("chromium is not installed: run `make install` (it installs Debian's chromium), "
                "or set KALIB_SKIP_BROWSER=1 to skip the browser test", pytrace=False)


def _dump_dom(chromium: str, url: str, profile: Path) -> str:
    """The DOM of ``url`` after load, from headless Chromium with no network at all."""
    cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-default-apps", "--disable-extensions", "--mute-audio",
           "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",   # the network is off
           "--allow-file-access-from-files",        # the probe page may read the framed lessons' DOM
           f"--user-data-dir={profile}", "--window-size=1280,1000", "--dump-dom", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(profile)})
    assert done.returncode == 0, f"chromium failed ({done.returncode}): {done.stderr[-2000:]}"
    return done.stdout


def test_chromium_offline_shows_the_lessons_maths_typeset(tmp_path):
    chromium = _chromium()
    render_lesson(_maths_notebook(tmp_path / "a.ipynb"), tmp_path / "a.html")
    render_lesson(_committed("02_filters", tmp_path), tmp_path / "02_filters.html")

    dom = _dump_dom(chromium, (tmp_path / "a.html").as_uri(), tmp_path / "profile")
    page = _page(dom)
    assert page.maths == N_MATHS, "Chromium's DOM of the lesson lacks its <math> elements"
    _assert_no_tex(page)

    frames = "\n".join(f'<iframe src="{n}" style="width:1200px;height:900px"></iframe>'
                       for n in ("a.html", "02_filters.html"))
    (tmp_path / "probe.html").write_text(PROBE % frames, encoding="utf-8")
    dom = _dump_dom(chromium, (tmp_path / "probe.html").as_uri(), tmp_path / "profile")
    report = re.search(r'<pre id="report">(.*?)</pre>', dom, re.S)
    assert report and report.group(1).startswith("["), f"the probe did not run: {report and report.group(1)}"
    ours, lesson = json.loads(unescape(report.group(1)))
    n_02 = _page((tmp_path / "02_filters.html").read_text(encoding="utf-8")).maths
    for got, n, fracs in ((ours, N_MATHS, 2), (lesson, n_02, 1)):
        assert got["maths"] == n, got
        # Chromium lays <math> out as MathML ("math" is inline maths), every formula a box of its own
        assert got["displays"].get("math", 0) + got["displays"].get("block math", 0) == n, got
        assert got["displays"].get("block math", 0) >= 1, got
        assert got["sized"] == n, got
        assert got["fracs"] >= fracs and got["stacked"] == got["fracs"], got   # numerators above denominators
        assert got["tex"] == [], got
        assert got["remote"] == [], got

