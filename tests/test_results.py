"""Tables, Fig. 3 data, results.json and the papermill pipeline (kalib.report.results, kalib.runs.pipeline)."""

import json
import re
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

from kalib.errors import NotebookError
from kalib.report import results
from kalib.runs import experiments
from kalib.runs.pipeline import reproduce
from kalib.runs.presets import get_preset

BLOCKS = ["b1_1", "b1_2", "b2_1", "b2_2"]


def _record(tasks=("a", "b"), offset=0.0):
    ap = {t: {b: 10.0 * (i + 1) + j + offset for j, b in enumerate(BLOCKS)} for i, t in enumerate(tasks)}
    loss = {t: {b: 1.0 - 0.1 * j if j < 3 else 0.95 for j, b in enumerate(BLOCKS)} for t in tasks}
    return {"tasks": list(tasks), "blocks": BLOCKS, "task_teacher": [1, 2][:len(tasks)],
            "teacher_ap": {"a": 50.0, "b": 70.0, "mAP": 60.0}, "branch_ap": ap, "converged_loss": loss,
            "chosen_block": {t: "b2_1" for t in tasks}, "ap_best_block": {t: "b2_2" for t in tasks},
            "branch_block": {t: "b2_2" for t in tasks},
            "target_ap": {"a": 55.0 + offset, "b": 65.0 + offset, "mAP": 60.0 + offset},
            "pairs": {"unrelated": ["a", "b"]}}


def test_stage_end_blocks():
    assert results.stage_end_blocks(BLOCKS) == {"b1": "b1_2", "b2": "b2_2"}
    with pytest.raises(ValueError, match="not of the form"):
        results.stage_end_blocks(["denseblock1"])


def test_table_rows_take_stage_ends_and_recompute_map():
    rows = results.table_rows(_record(), _record(offset=1.0), _record(offset=2.0))
    assert list(rows) == ["Teacher", "Target b1", "Target b2", "Target (Eq. 9)", "Target-3 (Eq. 9)", "Teacher-3",
                          "TargetDenseNet (Eq. 9)", "TeacherDenseNet"]
    assert rows["Target b1"] == {"a": 11.0, "b": 21.0, "mAP": 16.0}     # AP at b1_2, the end of stage 1
    assert rows["Target b2"] == {"a": 13.0, "b": 23.0, "mAP": 18.0}
    assert rows["Target-3 (Eq. 9)"]["mAP"] == pytest.approx(61.0)
    assert rows["Teacher"] == {"a": 50.0, "b": 70.0, "mAP": 60.0}
    tolerant = {**_record(), "branch_tolerance": 0.02, "eq9": {"target_ap": {"a": 1.0, "b": 3.0, "mAP": 2.0}}}
    rows = results.table_rows(tolerant, {**_record(offset=1.0), "branch_tolerance": 0.05})
    assert [r for r in rows if r.startswith("Target") and " b" not in r] == [
        "Target (Eq. 9)", "Target (tolerance 0.02)", "Target-3 (tolerance 0.05)"]     # no row is a bare "Target"
    assert rows["Target (Eq. 9)"]["mAP"] == 2.0 and rows["Target (tolerance 0.02)"]["mAP"] == 60.0


def test_the_paper_s_rows_are_eq9_and_side_runs_compare_by_name():
    paper = results.PAPER_MAP["table1"]
    assert results.paper_value(paper, "Target (Eq. 9)") == 93.5
    assert np.isnan(results.paper_value(paper, "Target (tolerance 0.02)"))    # the paper has no tolerance rule
    assert results.paper_value(paper, "Target-3 (tolerance 0.02)") == 93.8
    assert results.paper_value(paper, "TargetDenseNet (Eq. 9)") == 93.6


def test_fig3_data_and_markdown_table(tmp_path):
    fig3 = results.fig3_data({"unrelated": _record()})          # the pair's own two-task run: C = the pair
    assert fig3["unrelated"]["C"] == ["a", "b"]
    assert fig3["unrelated"]["tasks"]["b"] == {
        "teacher": 2, "teacher_ap": 70.0, "ap_by_block": _record()["branch_ap"]["b"],
        "loss_by_block": _record()["converged_loss"]["b"], "chosen_block": "b2_1", "branch_block": "b2_2",
        "best_ap_block": "b2_2"}
    every = _record(("a", "b", "c"))                              # one C = A run drawn for a pair
    from_all = results.fig3_data({"unrelated": every}, tasks={"unrelated": ["a", "b"]})
    assert from_all["unrelated"]["C"] == ["a", "b", "c"] and list(from_all["unrelated"]["tasks"]) == ["a", "b"]
    frame = results.table_frame(results.table_rows(_record(), _record()), ["b", "a"], paper={"Target (Eq. 9)": 93.5})
    assert list(frame.columns) == ["b", "a", "mAP", "paper mAP"]
    csv, md = results.write_table(frame, tmp_path / "t", "Title")
    text = md.read_text()
    assert text.startswith("Title") and "| Target (Eq. 9) " in text and "nan" not in text
    assert "93.5" in text and np.isclose(float(csv.read_text().splitlines()[1].split(",")[1]), 70.0)


def test_table3_row_matches_hand_computed_top1():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    targets = np.array([[1, 0], [1, 1], [0, 1]])
    row = results.table3_row(scores, targets, k=1)
    # top-1 predictions: a, b, a -> class a: 1 of 2 correct, class b: 1 of 1; recall a 1/2, b 1/2
    assert row["C-P"] == pytest.approx(75.0) and row["C-R"] == pytest.approx(50.0)
    assert row["O-P"] == pytest.approx(200 / 3) and row["O-R"] == pytest.approx(50.0)


def test_write_results_merges(tmp_path):
    path = results.write_results(tmp_path / "results.json", table1={"Teacher": {"mAP": 1.0}})
    results.write_results(path, fig3={"p": {}})
    assert json.loads(path.read_text()) == {"table1": {"Teacher": {"mAP": 1.0}}, "fig3": {"p": {}}}


def test_side_runs_use_the_cheaper_schedule():
    quick = get_preset("quick")
    assert experiments.for_run(quick, "table1", "2") is quick
    side = experiments.for_run(quick, "table2", "2")
    assert side.pretraining.teacher == quick.side.teacher
    assert side.student.pool_images - quick.student.loss_slice == quick.side.pool_images   # all of side.pool_images
    assert side.student.block_images == side.student.finetune_images == 0     # all of the smaller pool's training part
    assert side.student.branch_tolerance == quick.side.branch_tolerance       # the side runs' own branch-out rule
    assert side.pretraining.generic == quick.pretraining.generic
    assert experiments.for_run(quick, "table1", "dense").pretraining.generic.epochs == quick.side.teacher.epochs
    said = experiments.side_run_changes(quick, "table2", "2")
    assert "pretraining.teacher" in said and "student.pool_images 0 -> 1500" in said
    assert experiments.variants(quick) == ("table1", "table2")
    with pytest.raises(ValueError, match="unknown table variant"):
        experiments.variant_data(quick, "table9")


def test_table2_teachers_start_from_table1s_generic_backbone_and_teachers(tmp_path, one_thread):
    """One shared "ImageNet" for both tables (Table 2's generic checkpoint is Table 1's, trained once), and
    Table 2's teachers start from Table 1's teachers of the same set."""
    smoke = get_preset("smoke")
    bench2 = experiments.load_variant(smoke, "table2")
    paths = experiments.ensure_teachers(smoke, bench2, tmp_path, "table2", "2", log=lambda *_: None)
    shared = experiments.teachers_dir(tmp_path, "table1") / "generic-resnet18_narrow.pt"
    copied = experiments.teachers_dir(tmp_path, "table2") / "generic-resnet18_narrow.pt"
    assert shared.read_bytes() == copied.read_bytes()
    assert [p.parent for p in paths] == [copied.parent] * 2
    table1 = sorted(shared.parent.glob("set2-teacher*.pt"))
    assert len(table1) == 2
    before = [p.stat().st_mtime_ns for p in [copied, *paths]]
    experiments.ensure_teachers(smoke, bench2, tmp_path, "table2", "2", log=lambda *_: None)
    assert [p.stat().st_mtime_ns for p in [copied, *paths]] == before     # re-used, not trained again

    from kalib.method.teachers import train_teacher
    from kalib.runs.checkpoints import load_model
    from kalib.train import Schedule
    start, meta = load_model(table1[0])
    generic = load_model(shared)[0]
    targets = bench2.train_labels[:, bench2.label_indices(meta["labels"])]
    same = train_teacher(generic, bench2.train_images, targets, Schedule(epochs=0), warm_start=start)
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), start.state_dict().values()))
    with pytest.raises(ValueError, match="outputs"):
        train_teacher(generic, bench2.train_images, targets[:, :3], Schedule(epochs=0), warm_start=start)


def _notebook(path, source):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("preset = 'x'\nout_dir = ''", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell(source)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_reproduce_runs_notebooks_in_order_and_stops_at_a_failing_cell(tmp_path):
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    _notebook(nbs / "a.ipynb", "import json, pathlib\n"
                               "pathlib.Path(out_dir, 'results.json').write_text(json.dumps({'preset': preset}))")
    _notebook(nbs / "b.ipynb", "raise ValueError('broken cell')")
    lines = []
    out = reproduce("smoke", tmp_path / "out", notebooks=("a",), notebook_dir=nbs, log=lines.append)
    assert out["preset"] == "smoke" and set(out["timings_s"]["notebooks"]) == {"a"}
    assert (tmp_path / "out" / "notebooks" / "a.ipynb").is_file() and lines[0].startswith("[1/1] a")
    # cell 3: papermill inserts the injected parameters after the tagged cell
    with pytest.raises(NotebookError, match=r"b, cell 3: ValueError: broken cell"):
        reproduce("smoke", tmp_path / "out", notebooks=("a", "b"), notebook_dir=nbs, log=lines.append)
    assert (tmp_path / "out" / "results.json").is_file(), "finished work is kept"


def test_the_readme_headline_numbers_are_the_committed_seed_means():
    """Every "mean ± std" of the README's Verdict and Table 1 in brief is a row of figures/seeds.json."""
    root = Path(__file__).resolve().parents[1]
    seeds = json.loads((root / "figures" / "seeds.json").read_text())["rows"]
    pairs = {(f"{r['mean']:.1f}", f"{r['std']:.1f}") for r in seeds.values()}
    readme = (root / "README.md").read_text()
    headline = readme[readme.index("## Verdict"):readme.index("## Glossary")]
    brief = readme[readme.index("### Table 1 in brief"):readme.index("### Where it differs")]
    quoted = re.findall(r"(\d+\.\d) ± (\d\.\d)\b", headline + brief)
    assert len(quoted) >= 8
    assert not set(quoted) - pairs, f"README numbers not in figures/seeds.json: {set(quoted) - pairs}"


def test_the_readme_states_the_crossover_verdict_word_for_word():
    """Once version 2 of the crossover study has a summary, the README's "Amalgamate, distil, merge, or keep the
    teachers?" quotes every cell's verdict and the decision table as the JSON states them; until then it says the
    study is running and where its records go, and quotes no verdict of version 1."""
    from kalib.report.crossover import readme_quote
    root = Path(__file__).resolve().parents[1]
    readme = (root / "README.md").read_text()
    section = readme[readme.index("## Amalgamate, distil, merge, or keep the teachers?"):readme.index("## Glossary")]
    path = root / "figures" / "crossover.json"
    if path.exists():
        summary = json.loads(path.read_text())
        assert summary.get("version") == 2, "figures/crossover.json must be version 2's summary (version 1 was withdrawn)"
        assert readme_quote(summary) in section
    else:
        assert "version 2 is running" in section and "figures/crossover/records" in section
        assert "500 or fewer here): amalgamate" not in readme


def test_a_run_says_the_epochs_each_block_gets():
    from kalib.runs.amalgamation import block_plan
    quick = get_preset("quick").student
    line = block_plan(quick, ["b1_1", "b1_2", "b2_1", "b2_2", "b3_1", "b3_2", "b4_1", "b4_2"], 15500)
    assert "b1_1 1, b1_2 1, b2_1 2, b2_2 2, b3_1 4, b3_2 4, b4_1 8, b4_2 8 epochs" in line and "7,000 pool images" in line
    assert "d1 1, d2 2, d3 4, d4 8 epochs" in block_plan(quick, ["d1", "d2", "d3", "d4"], 1000)   # a depth profile
    assert "1,000 pool images" in block_plan(quick, ["d1", "d2", "d3", "d4"], 1000)
