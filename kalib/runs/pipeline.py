"""``python -m kalib reproduce``: the six lesson notebooks, run in order with papermill, then their worked solutions.

Each notebook gets the same parameters (``preset``, ``seed``, ``out_dir``), its executed copy is kept in
``OUT/notebooks/`` and rendered to HTML in ``OUT/lessons/`` (readable without running anything), and
everything it trains is found and re-used on a second run (teachers, finished blocks). A failing cell stops
the run with that cell's error. The kernel's own log (not the notebook's output) goes to
``OUT/notebooks/NAME.kernel.log``, so the terminal shows only kalib's lines. ``OUT/results.json`` holds
every number behind Fig. 3 and Tables 1–3, the training precision, and each notebook's and the whole run's
wall seconds (``timings_s``) beside its CPU seconds (``cpu_s``: this process and every process it waited for,
the kernels and their workers) and the cores it could use (``cores``), so that the packing of the cores,
CPU seconds / (wall seconds x cores), can be computed; ``OUT/figures/`` the figures and tables (copied with
the lessons to ``figures`` if given).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

from ..device import resolve_device, resolve_precision
from ..errors import MissingFileError, NotebookError
from ..report.results import write_results
from .config import override
from .presets import get_preset

def find_notebooks() -> Path:
    """Where the lesson notebooks are: a source checkout's ``notebooks/`` (a clone, an editable install), else
    the copy an installed kalib carries (``share/kalib/notebooks`` under the environment's prefix, pyproject's
    data-files)."""
    places = [Path(__file__).resolve().parents[2] / "notebooks", Path(sys.prefix) / "share" / "kalib" / "notebooks"]
    for place in places:
        if (place / f"{NOTEBOOKS[0]}.ipynb").is_file():
            return place
    raise MissingFileError(f"the lesson notebooks are in none of {', '.join(map(str, places))}; reinstall kalib "
                           "(pip install kalib puts them in the second) or run from a clone")
NOTEBOOKS = ("01_teachers", "02_filters", "03_block_training", "04_branch_out", "05_tables", "06_choosing")
SOLUTIONS = "solutions"      # the worked solutions of the chapters' exercises: notebooks/solutions/NAME_solutions.ipynb
KERNEL = "kalib"


def _logging_kernel_manager(log):
    """A kernel manager whose kernel writes its own stdout and stderr (start-up warnings, the SIGINT that
    jupyter_client sends before every shutdown) to the open file ``log``."""
    from jupyter_client import AsyncKernelManager

    class LoggingKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw):
            return await super().start_kernel(**{**kw, "stdout": log, "stderr": log})

    return LoggingKernelManager


def render_lesson(executed: Path, html: Path, root: Path | None = None) -> None:
    """An executed notebook as a stand-alone HTML page (nbconvert's lab template, as JupyterLab shows it;
    widget state, which no kalib notebook needs, is left out to keep the page small), titled by its first
    heading, each figure with the alternative text its output carries. The page loads
    nothing from the network: the markdown cells' formulas are written as MathML, not left to MathJax
    from a CDN (:mod:`kalib.report.html`; a formula it cannot convert raises ``MathConversionError``).
    Paths under ``root`` (default: the working directory) are shown relative to it, so the page names
    no machine's folders."""
    import nbformat

    from ..report.html import lesson_exporter, lesson_title

    nb = nbformat.read(executed, as_version=4)
    nb.metadata.pop("widgets", None)
    nb.metadata["title"] = lesson_title(nb) or nb.metadata.get("title") or executed.stem
    body, _ = lesson_exporter().from_notebook_node(nb)
    root = (Path.cwd() if root is None else Path(root)).resolve()
    if root != root.parent:                                     # not the file system's root
        body = body.replace(f"{root}{os.sep}", "")
    html.parent.mkdir(parents=True, exist_ok=True)
    html.write_text(body, encoding="utf-8")


def _kernel_name() -> str:
    """The ``kalib`` kernel registered by ``make install``, else this interpreter's own ``python3``."""
    from jupyter_client.kernelspec import KernelSpecManager
    return KERNEL if KERNEL in KernelSpecManager().find_kernel_specs() else "python3"


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and of its children that have ended and been waited for
    (``RUSAGE_CHILDREN``: each papermill kernel, with the worker processes it waited for, once it has shut
    down). A difference around a notebook is that notebook's CPU time."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the system says, else the CPU count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


RUN_STATE = ("notebooks", "lessons", "table1", "table2", "figures", "results.json", "teachers.json", "fig3.json")


def _execute(source: Path, executed: Path, params: dict, kernel: str) -> None:
    """Run one notebook with papermill (its own folder as the working directory), the kernel's log beside the
    executed copy; a failing cell or a dead kernel becomes one :class:`NotebookError`."""
    import papermill as pm
    from nbclient.exceptions import DeadKernelError

    kernel_log = executed.with_suffix(".kernel.log")
    executed.parent.mkdir(parents=True, exist_ok=True)
    try:
        with kernel_log.open("w") as klog:
            pm.execute_notebook(source, executed, parameters=params, kernel_name=kernel, cwd=str(source.parent),
                                progress_bar=False, kernel_manager_class=_logging_kernel_manager(klog))
    except pm.PapermillExecutionError as err:
        raise NotebookError(f"{source.stem}, cell {err.exec_count}: {err.ename}: {err.evalue} "
                            f"(executed notebook: {executed})") from None
    except DeadKernelError:
        raise NotebookError(f"{source.stem}: the kernel died (a crash, or out of memory); its log is "
                            f"{kernel_log}, the executed notebook {executed}") from None


def lesson_pages(notebooks, notebook_dir: Path, solutions: bool = True) -> list[tuple[str, Path]]:
    """(page, notebook) of every page a run renders, in order: the chapters, then (``solutions``) the worked
    solutions of those that have them (``solutions/NAME_solutions``, after every chapter, whose runs they re-use)."""
    chapters = [(name, notebook_dir / f"{name}.ipynb") for name in notebooks]
    if not solutions:
        return chapters
    solved = [(f"{SOLUTIONS}/{name}_solutions", notebook_dir / SOLUTIONS / f"{name}_solutions.ipynb")
              for name in notebooks]
    return chapters + [(page, path) for page, path in solved if path.is_file()]


def reproduce(preset: str = "quick", out_dir: str | Path = "runs/quick", seed: int | None = None,
              data_root: str | Path | None = None, device: str | None = None, restart: bool = False,
              overrides=(),
              figures: str | Path | None = None, notebooks=NOTEBOOKS, notebook_dir: Path | None = None,
              solutions: bool | None = None, log=print) -> dict:
    """Run ``notebooks`` in order with papermill, then their worked solutions (:func:`lesson_pages`); returns
    the content of ``OUT/results.json``. ``solutions``: whether to run and render the solutions too; by default
    on the embedded presets, whose solutions the tests run (nbval), and not on the paper presets.

    ``restart`` first deletes what an earlier run wrote to ``out_dir`` (only the paths it writes);
    ``overrides`` are ``FIELD=VALUE`` changes of the preset (the CLI's ``--set``)."""
    chosen = override(get_preset(preset), overrides)
    precision = resolve_precision(chosen.precision, resolve_device(device))
    solutions = chosen.dataset == "embedded" if solutions is None else solutions

    notebook_dir = find_notebooks() if notebook_dir is None else Path(notebook_dir)
    if not notebook_dir.is_dir():
        raise MissingFileError(f"notebooks not found in {notebook_dir}")
    out = Path(out_dir).resolve()
    if restart:
        for name in RUN_STATE:
            path = out / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    (out / "notebooks").mkdir(parents=True, exist_ok=True)
    params = {"preset": preset, "seed": seed, "out_dir": str(out),
              "data_root": None if data_root is None else str(data_root), "device": device,
              "overrides": list(overrides or ())}
    kernel = _kernel_name()
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    start, cpu_start = time.perf_counter(), cpu_seconds()
    pages = lesson_pages(notebooks, notebook_dir, solutions)
    for i, (page, source) in enumerate(pages, start=1):
        executed = out / "notebooks" / f"{page}.ipynb"
        t0, c0 = time.perf_counter(), cpu_seconds()
        _execute(source, executed, params, kernel)
        timings[page] = round(time.perf_counter() - t0, 1)
        cpu[page] = round(cpu_seconds() - c0, 1)
        render_lesson(executed, out / "lessons" / f"{page}.html")
        log(f"[{i}/{len(pages)}] {page:<18s} {timings[page]:7.1f} s  (CPU {cpu[page]:.0f} s; total "
            f"{time.perf_counter() - start:.0f} s)")

    results_path = out / "results.json"
    earlier = json.loads(results_path.read_text()).get("timings_s", {}) if results_path.is_file() else {}
    write_results(results_path, timings_s={**earlier, "notebooks": timings,
                                           "total": round(time.perf_counter() - start, 1)},
                  cpu_s={"notebooks": cpu, "total": round(cpu_seconds() - cpu_start, 1)}, cores=usable_cores(),
                  precision=precision)
    results = json.loads(results_path.read_text())
    if figures is not None:
        dest = Path(figures)
        dest.mkdir(parents=True, exist_ok=True)
        for f in sorted((out / "figures").glob("*")):
            shutil.copy2(f, dest / f.name)
        shutil.copy2(results_path, dest / "results.json")
        for page, _ in pages:
            (dest / "lessons" / page).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(out / "lessons" / f"{page}.html", dest / "lessons" / f"{page}.html")
        log(f"figures, tables, results.json and the lessons and their solutions (HTML) copied to {dest}")
    return results
