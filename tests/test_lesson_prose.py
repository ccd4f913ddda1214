"""The lessons' prose (issue 27): no markdown cell of a lesson or of its solutions restates a measured mAP, AP,
parameter ratio or percentage of kalib's runs (those are printed by code from the run's numbers; the paper's own
numbers are fine in a sentence that names the paper); every chapter has at least three exercises, each with a cell
that calls a checker on ``answer = None``, at least one of them a derivation or a design question, and a solutions
notebook that nbval collects and runs after the chapters; every build-it skeleton has its checker and its solution."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kalib.report.notebook import PARAMETERS

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
CHAPTERS = ("01_teachers", "02_filters", "03_block_training", "04_branch_out", "05_tables", "06_choosing")
LESSONS = [NOTEBOOKS / f"{c}.ipynb" for c in CHAPTERS] + [NOTEBOOKS / "solutions" / f"{c}_solutions.ipynb"
                                                          for c in CHAPTERS]
# numbers that read like a measurement of a run: 86.7 or 93.5 (an AP), 72 mAP, 0.51× (a size), 74.9 % (not 95 %)
MEASURED = (re.compile(r"(?<![\w.§])\d{2,3}\.\d+(?![\w.])"), re.compile(r"\b\d+(?:\.\d+)?\s*m?AP\b"),
            re.compile(r"\b\d+(?:\.\d+)?\s*×"), re.compile(r"\b(?!95\b)\d+(?:\.\d+)?\s*%"))


def _cells(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def _source(cell: dict) -> str:
    return "".join(cell["source"])


def prose(markdown: str) -> str:
    """A markdown cell without its formulas and code spans (numbers there are notation, not results)."""
    markdown = re.sub(r"\$\$.*?\$\$", " ", markdown, flags=re.DOTALL)
    markdown = re.sub(r"\$[^$]*\$", " ", markdown)
    return re.sub(r"`[^`]*`", " ", markdown)


def measured_numbers(markdown: str) -> list[tuple[str, str]]:
    """(number, sentence) for every measured-looking number in a sentence that does not name the paper."""
    found = []
    for sentence in re.split(r"(?<=[.!?:;])\s+|\n\s*\n|\n\s*[*\d]+[.)]?\s", prose(markdown)):
        if "paper" in sentence.lower():
            continue
        found += [(m.group(), sentence.strip()) for pattern in MEASURED for m in pattern.finditer(sentence)]
    return found


def test_the_scan_finds_restated_results_and_spares_the_papers():
    assert [n for n, _ in measured_numbers("Eq. 9 had 86.7 mAP at 1.00× the teachers' parameters.")] == \
        ["86.7", "86.7 mAP", "1.00×"]
    assert measured_numbers("the tolerance net 87.2 at 0.51×; random scores give 14.5")
    assert measured_numbers("The teachers reach 72 mAP.") and measured_numbers("KD keeps 50.2 % of them.")
    assert not measured_numbers("The paper's TargetRes50 reaches 93.5 mAP (Tab. 1).")
    assert not measured_numbers("A 95 % interval of Eq. 6–8, §3.4, VOC 2007 with $\\tau = 0.02$ and `0.51×`.")


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.stem)
def test_no_markdown_cell_restates_a_measured_number(path):
    hits = [(cell.get("id"), number, sentence[:120]) for cell in _cells(path) if cell["cell_type"] == "markdown"
            for number, sentence in measured_numbers(_source(cell))]
    assert not hits, f"{path.name}: print these from the run's numbers (kalib.report.lessons) instead: {hits}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_chapter_has_checked_exercises_and_a_solution(chapter):
    checks = [_source(c) for c in _cells(NOTEBOOKS / f"{chapter}.ipynb") if c["cell_type"] == "code"
              and re.search(r"^answer = None\b", _source(c), re.MULTILINE) and re.search(r"^check_\w+\(answer", _source(c), re.MULTILINE)]
    assert len(checks) >= 3, f"{chapter}: at least three exercises with a check_…(answer, …) cell"
    prompts = [_source(c) for c in _cells(NOTEBOOKS / f"{chapter}.ipynb") if c["cell_type"] == "markdown"
               and re.search(r"^\*\*\d\. ", _source(c), re.MULTILINE)]
    assert any(re.search(r"\(a (derivation|design question|design choice)\)", p) for p in prompts), \
        f"{chapter}: at least one exercise asks for a derivation or a design choice"
    solution = _cells(NOTEBOOKS / "solutions" / f"{chapter}_solutions.ipynb")
    solved = [c for c in solution if c["cell_type"] == "code" and "check_" in _source(c) and "assert result" in _source(c)]
    assert len(solved) >= 3, f"{chapter}: its solutions assert that the checkers accept them"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_solutions_take_the_checked_parameters_first_and_are_stripped(chapter):
    cells = _cells(NOTEBOOKS / "solutions" / f"{chapter}_solutions.ipynb")
    assert all(c.get("id") for c in cells) and len({c["id"] for c in cells}) == len(cells)
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c["outputs"] and c["execution_count"] is None for c in code)
    assert "parameters" in code[0]["metadata"].get("tags", [])
    assert all(f"\n{name} = " in "\n" + _source(code[0]) for name in PARAMETERS)
    assert _source(code[1]).startswith("from kalib.report.notebook import check_parameters\n\ncheck_parameters(globals())")


def test_nbval_collects_the_solutions_after_the_chapters():
    """`make test` collects notebooks/ (pyproject testpaths): the solutions must come after the chapters whose runs
    they re-use."""
    listed = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "notebooks"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    files = list(dict.fromkeys(line.split("::")[0] for line in listed.splitlines() if ".ipynb::" in line))
    chapters = [files.index(f"notebooks/{c}.ipynb") for c in CHAPTERS]
    solutions = [files.index(f"notebooks/solutions/{c}_solutions.ipynb") for c in CHAPTERS]
    assert chapters == sorted(chapters) and min(solutions) > max(chapters)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_every_build_it_skeleton_is_checked_and_solved(chapter):
    """A skeleton (``raise NotImplementedError``) in a chapter is followed by a cell calling a kalib.report.builds
    checker on it, and the chapter's solutions define the same function or class and pass that checker."""
    code = [_source(c) for c in _cells(NOTEBOOKS / f"{chapter}.ipynb") if c["cell_type"] == "code"]
    skeletons = [re.search(r"^(?:def|class) (\w+)", src, re.MULTILINE).group(1) for src in code
                 if "raise NotImplementedError" in src]
    solution = "\n".join(_source(c) for c in _cells(NOTEBOOKS / "solutions" / f"{chapter}_solutions.ipynb")
                         if c["cell_type"] == "code")
    for name in skeletons:
        assert any(re.search(rf"check_\w+\({name}\b", src) for src in code), f"{chapter}: {name} has no checker cell"
        assert re.search(rf"^(def|class) {name}\b", solution, re.MULTILINE), f"{chapter}: {name} has no worked solution"
        assert "NotImplementedError" not in solution and "assert result" in solution
    expected = {"02_filters": {"MyFilter"},
                "03_block_training": {"my_entangled_predictions", "my_filtered_loss", "my_train_block"}}
    assert set(skeletons) == expected.get(chapter, set())
