"""The lesson notebooks' helpers (kalib.report.notebook): a misspelt papermill parameter stops a notebook at once,
naming itself and the valid ones; chance level and the presets whose numbers are asserted; figures keep
showing after the first one in a notebook."""

import ast
import json
import os
import time
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from kalib.errors import UnknownParameterError
from kalib.runs.pipeline import NOTEBOOKS
from kalib.report.notebook import PARAMETERS, at_chance, chance_map, chance_note, check_parameters, meaningful

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"


def _namespace(**extra):
    """What a notebook's namespace holds when its second cell starts: the parameters cell's names and imports,
    IPython-style private names, papermill's injected values."""
    values = {"preset": "lesson", "seed": None, "out_dir": "", "data_root": None, "device": None, "overrides": []}
    return {**values, "os": os, "Path": Path, "check_parameters": check_parameters, "print": print,
            "__name__": "__main__", "_i1": "import os", "_": None, **extra}


def test_the_parameters_imports_and_private_names_pass():
    namespace = _namespace()
    check_parameters(namespace)


def test_a_misspelt_parameter_is_named_with_the_closest_and_all_valid_ones():
    with pytest.raises(UnknownParameterError) as err:
        check_parameters(_namespace(presett="smoke"))
    message = str(err.value)
    assert "'presett' (did you mean 'preset'?)" in message
    assert all(name in message for name in PARAMETERS)


def test_every_unknown_parameter_is_named_at_once():
    with pytest.raises(UnknownParameterError) as err:
        check_parameters(_namespace(sed=3, colour="red"))
    message = str(err.value)
    assert "parameters 'colour', 'sed' (did you mean 'seed'?)" in message


def test_a_namespace_that_passed_is_not_checked_again_but_one_that_failed_is():
    namespace = _namespace()
    check_parameters(namespace)
    namespace.update(bench=object(), record={})        # variables of later cells, then the cell runs again
    check_parameters(namespace)
    failed = _namespace(presett="smoke")
    for _ in range(2):
        with pytest.raises(UnknownParameterError):
            check_parameters(failed)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_takes_the_checked_parameters_and_checks_them_first(name):
    """The first code cell (tagged ``parameters``) defines exactly PARAMETERS with the lesson preset as the
    default, and the second starts with check_parameters; every cell has an id and no outputs."""
    notebook = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())
    cells = notebook["cells"]
    assert all(cell.get("id") for cell in cells) and len({cell["id"] for cell in cells}) == len(cells)
    assert all(not cell.get("outputs") and cell.get("execution_count") is None
               for cell in cells if cell["cell_type"] == "code"), "outputs are committed stripped"
    first, second = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"][:2]
    assert "parameters" in [c for c in cells if c["cell_type"] == "code"][0]["metadata"].get("tags", [])
    assigned = [t.id for node in ast.parse(first).body if isinstance(node, ast.Assign) for t in node.targets]
    assert tuple(assigned) == PARAMETERS
    assert 'preset = os.environ.get("KALIB_PRESET", "lesson")' in first
    assert second.startswith("from kalib.report.notebook import check_parameters\n\ncheck_parameters(globals())")


def test_a_misspelt_papermill_parameter_stops_the_notebook_before_any_work(tmp_path):
    """papermill only warns about ``-p presett smoke`` and would run the 30-minute default; the notebook's
    second cell refuses it instead, before anything is trained or written."""
    import papermill as pm

    from kalib.runs.pipeline import _kernel_name
    out = tmp_path / "run"
    t0 = time.perf_counter()
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(NOTEBOOK_DIR / "01_teachers.ipynb", tmp_path / "executed.ipynb",
                            parameters={"presett": "smoke", "out_dir": str(out)}, kernel_name=_kernel_name(),
                            cwd=str(NOTEBOOK_DIR), progress_bar=False, execution_timeout=120)
    assert err.value.ename == "UnknownParameterError"
    assert "'presett' (did you mean 'preset'?)" in err.value.evalue
    assert all(name in err.value.evalue for name in PARAMETERS)
    assert time.perf_counter() - t0 < 120
    assert not out.exists(), "nothing may be trained or written before the parameters are checked"


def test_progress_in_a_notebook_kernel_is_one_line_per_bar_without_a_widget_warning(tmp_path):
    """In a Jupyter kernel kalib's progress bars write one line when they end: no TqdmWarning about
    ipywidgets at the top of a notebook, no carriage-return updates and no blank outputs."""
    import nbformat
    import papermill as pm

    from kalib.runs.pipeline import _kernel_name
    source = ("import torch\nfrom kalib.train import Schedule, fit\n"
              "model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))\n"
              "fit(model, torch.zeros(64, 3, 8, 8, dtype=torch.uint8), torch.zeros(64, 2), "
              "torch.nn.functional.binary_cross_entropy_with_logits, Schedule(epochs=2, batch_size=16), desc='demo')")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    nbformat.write(notebook, tmp_path / "progress.ipynb")
    pm.execute_notebook(tmp_path / "progress.ipynb", tmp_path / "out.ipynb", kernel_name=_kernel_name(),
                        progress_bar=False, execution_timeout=120)
    outputs = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0].outputs
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "TqdmWarning" not in text and "IProgress" not in text and "\r" not in text
    assert all(o.text.strip() for o in outputs if o.output_type == "stream"), "no blank stream outputs"
    assert text.count("demo 1/2: 4/4") == 1 and text.count("demo 2/2: 4/4") == 1


def test_chance_map_is_the_map_of_random_scores_near_the_label_frequency():
    rng = np.random.default_rng(0)
    targets = (rng.random((4000, 10)) < 0.15).astype(np.float32)
    chance = chance_map(targets)
    assert 15 <= chance <= 20
    assert chance_map(targets, seed=1) == pytest.approx(chance, abs=1.5)
    targets[:, 0] = -1                                   # VOC's "difficult": ignored, as by the metric
    targets[:5, 0] = 1
    assert np.isfinite(chance_map(targets))


def test_only_smoke_is_at_chance_and_only_measured_presets_are_asserted():
    assert at_chance("smoke") and not at_chance("lesson") and not at_chance("quick")
    assert "chance level" in chance_note("smoke", 16.6) and "16.6" in chance_note("smoke", 16.6)
    assert chance_note("lesson", 16.6) == ""
    assert meaningful("lesson") and meaningful("quick")
    assert not meaningful("smoke") and not meaningful("paper-voc07")


def test_every_figure_of_a_notebook_shows_not_only_the_first(monkeypatch):
    """Jupyter's inline backend turns interactive mode on while it draws the first figure; the style
    context of kalib.report.plots must not switch it off again, or no later figure is displayed."""
    import matplotlib.pyplot as plt

    from kalib.report import plots
    matplotlib.use("Agg")
    monkeypatch.setattr(plt, "subplots", _switching_on(plt.subplots))
    plt.ioff()
    try:
        fig = plots.ap_bars({"coat": 50.0, "bag": 90.0, "mAP": 70.0}, "teacher")
        assert plt.isinteractive(), "the first figure's backend switched interactive mode on; it must stay on"
        plt.close(fig)
    finally:
        plt.ioff()


def _switching_on(subplots):
    def first_figure(*args, **kwargs):
        plt = matplotlib.pyplot
        plt.ion()              # what matplotlib-inline does on the kernel's first figure
        return subplots(*args, **kwargs)
    return first_figure
