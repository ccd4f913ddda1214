"""``reproduce`` (kalib/pipeline.py) on tiny notebooks: lessons rendered to HTML and copied with the
figures, the kernel's own log kept off the terminal, a dead kernel reported in one line, each notebook's wall
and CPU seconds (its kernel's worker processes included) and the precision in results.json."""

import json

import nbformat
import pytest

from kalib.errors import NotebookError
from kalib.runs.pipeline import render_lesson, reproduce

NOISY_KERNEL = ("from ipykernel.kernelapp import IPKernelApp\n"
                "IPKernelApp.instance().log.error('KeyboardInterrupt')   # what a shutdown's SIGINT logs")


# a worker process of the kernel that burns CPU; the kernel writes the CPU seconds it waited for
WORKER = ("import resource, subprocess, sys\n"
          "subprocess.run([sys.executable, '-c', 'sum(i * i for i in range(10_000_000))'], check=True)\n"
          "used = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
          "pathlib.Path(out_dir, 'worker_cpu_s').write_text(str(used.ru_utime + used.ru_stime))")


def _notebook(path, *cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("preset = 'x'\nout_dir = ''\nseed = None\ndata_root = None\n"
                                          "device = None\noverrides = []", metadata={"tags": ["parameters"]}),
                *cells]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_lessons_are_rendered_and_copied_and_the_kernel_log_stays_off_the_terminal(tmp_path, monkeypatch,
                                                                                  capfd):
    monkeypatch.chdir(tmp_path)
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "a.ipynb", nbformat.v4.new_markdown_cell("# Filters\n\nThe filter $f_n^k$ of Eq. 4."),
              nbformat.v4.new_code_cell("import json, pathlib\n"
                                        "pathlib.Path(out_dir, 'results.json').write_text('{}')\n"
                                        "print('written to', out_dir)"),
              nbformat.v4.new_code_cell(NOISY_KERNEL), nbformat.v4.new_code_cell(WORKER))
    lines = []
    reproduce("smoke", tmp_path / "out", notebooks=("a",), notebook_dir=nbs, figures=tmp_path / "figs",
              log=lines.append)
    html = (tmp_path / "out" / "lessons" / "a.html").read_text()
    assert "<h1" in html and "Filters" in html and "<msubsup>" in html        # markdown, math as MathML
    assert "$f_n^k$" not in html                                              # (tests/test_lesson_html.py)
    assert "written to out" in html and str(tmp_path) not in html, "paths relative to the working directory"
    assert (tmp_path / "figs" / "lessons" / "a.html").read_text() == html
    assert len(html) < 600_000, "a page without outputs is mostly the template's CSS"
    assert lines[-1].endswith("copied to " + str(tmp_path / "figs"))
    err = capfd.readouterr().err
    assert "IPKernelApp" not in err and "KeyboardInterrupt" not in err, err
    assert "[IPKernelApp] ERROR | KeyboardInterrupt" in (tmp_path / "out" / "notebooks" / "a.kernel.log").read_text()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    worker = float((tmp_path / "out" / "worker_cpu_s").read_text())
    cpu, wall = results["cpu_s"], results["timings_s"]
    assert results["precision"] == "fp32" and results["cores"] >= 1
    assert wall["notebooks"]["a"] > 0 and wall["total"] >= wall["notebooks"]["a"]
    assert cpu["notebooks"]["a"] >= worker > 0.1, "the kernel's worker process counts in its notebook's CPU time"
    assert cpu["total"] >= cpu["notebooks"]["a"]

    stale = tmp_path / "out" / "lessons" / "old.html"
    stale.write_text("from an earlier run")
    reproduce("smoke", tmp_path / "out", notebooks=("a",), notebook_dir=nbs, restart=True, log=lines.append)
    assert not stale.exists() and (tmp_path / "out" / "lessons" / "a.html").is_file()


def test_a_dead_kernel_is_one_error_naming_its_log(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "a.ipynb", nbformat.v4.new_code_cell("import os\nos._exit(3)"))
    log = tmp_path / "out" / "notebooks" / "a.kernel.log"
    with pytest.raises(NotebookError, match=f"a: the kernel died .*its log is {log}"):
        reproduce("smoke", tmp_path / "out", notebooks=("a",), notebook_dir=nbs, log=lambda *_: None)
    assert not (tmp_path / "out" / "lessons" / "a.html").exists()


def test_a_lesson_run_from_the_file_system_root_keeps_its_paths(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(f"Output in {tmp_path}/out")]
    nbformat.write(nb, tmp_path / "a.ipynb")
    render_lesson(tmp_path / "a.ipynb", tmp_path / "a.html", root="/")
    assert f"Output in {tmp_path}/out" in (tmp_path / "a.html").read_text()
    render_lesson(tmp_path / "a.ipynb", tmp_path / "b.html", root=tmp_path)
    assert "Output in out" in (tmp_path / "b.html").read_text()


def test_the_notebooks_are_found_in_a_checkout_or_where_pip_installs_them(tmp_path, monkeypatch):
    import sys
    import tomllib
    from pathlib import Path

    from kalib.runs import pipeline
    root = Path(pipeline.__file__).resolve().parents[2]
    assert pipeline.find_notebooks() == root / "notebooks"            # this source checkout
    # the wheel carries them as data-files under share/kalib/notebooks (pyproject.toml) ...
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["data-files"]
    patterns = data["share/kalib/notebooks"]
    shipped = {p.name for pattern in patterns for p in root.glob(pattern)}
    assert {f"{name}.ipynb" for name in pipeline.NOTEBOOKS} <= shipped
    # ... where an installed kalib (no checkout beside its package) finds them
    installed = tmp_path / "share" / "kalib" / "notebooks"
    installed.mkdir(parents=True)
    for name in pipeline.NOTEBOOKS:
        (installed / f"{name}.ipynb").write_text("{}")
    monkeypatch.setattr(pipeline, "__file__", str(tmp_path / "site-packages" / "kalib" / "runs" / "pipeline.py"))
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    assert pipeline.find_notebooks() == installed
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="lesson notebooks are in none of"):
        pipeline.find_notebooks()


def test_a_lesson_page_is_titled_by_its_heading_and_its_figures_carry_their_alt_text(tmp_path):
    """The page's <title> is the chapter's first heading (formulas as plain text), not nbconvert's "Notebook"; an
    image output's "alt" metadata (kalib.report.notebook.show) becomes the image's alt text."""
    import base64
    import re

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from kalib.report.notebook import alt_text

    fig, (left, right) = plt.subplots(1, 2)
    left.plot([0, 1], [1, 0], label="held-out loss (Eq. 7)")
    left.set(title="Block $b2_2$ trained live", xlabel="epoch", ylabel="nats per task")
    left.legend()
    right.set_title(r"The gates $\|w - 1\|$")
    described = alt_text(fig)
    assert described == ("Figure with 2 panels: Block b2_2 trained live; x: epoch; y: nats per task; lines: held-out "
                         "loss (Eq. 7) | The gates |w - 1|")
    fig.set_label("A drawing of $f_n^k$")
    assert alt_text(fig) == "A drawing of f_n^k"
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n").decode()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(r"# 02 · Filters: the filter $f_n^k$ (Eq. 4) and $\mathcal{A}_n$"),
                nbformat.v4.new_code_cell("", outputs=[
                    nbformat.v4.new_output("display_data", data={"image/png": png}, metadata={"alt": described}),
                    nbformat.v4.new_output("display_data", data={"image/png": png})])]
    nbformat.write(nb, tmp_path / "a.ipynb")
    render_lesson(tmp_path / "a.ipynb", tmp_path / "a.html")
    html = (tmp_path / "a.html").read_text()
    assert "<title>02 · Filters: the filter f_n^k (Eq. 4) and A_n</title>" in html
    alts = re.findall(r'<img [^>]*alt="([^"]*)"', html)
    assert alts == [described, "No description has been provided for this image"], alts
