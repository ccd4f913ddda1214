"""What the lessons print about a run (kalib.report.lessons): every verdict sentence follows the numbers it is given,
names each TargetNet by its rule, and notebook 05's crossover cells print figures/crossover.json's verdict word for
word (a study summary built here with the keys `kalib study crossover` writes), or say how to make it."""

import json

import matplotlib
import nbformat
import numpy as np
import torch
from test_lesson_prose import NOTEBOOKS

from kalib.method.blockwise import soft_targets, train_block
from kalib.method.filters import task_plan
from kalib.method.pool import prefix_features
from kalib.method.student import freeze, init_student, make_filters
from kalib.models import build_backbone
from kalib.report import crossover as report
from kalib.report import lessons
from kalib.runs.presets import get_preset
from kalib.train import Schedule

matplotlib.use("Agg")


def _record(tolerance: float, target: float, teachers: float, eq9: float | None = None) -> dict:
    record = {"branch_tolerance": tolerance, "teacher_ap": {"mAP": teachers}, "target_ap": {"mAP": target}}
    if eq9 is not None:
        record["eq9"] = {"target_ap": {"mAP": eq9}}
    return record


def test_every_targetnet_is_named_by_its_rule():
    text = lessons.target_vs_teachers(_record(0.02, 87.2, 87.1, eq9=86.7))
    assert "Target (tolerance 0.02)" in text and "Target (Eq. 9)" in text
    assert "0.1 above its teachers (87.1)" in text and "0.4 below the teachers (87.1)" in text
    text = lessons.target_vs_teachers(_record(0.0, 71.6, 72.4))
    assert text.startswith("This run's TargetNet, Target (Eq. 9), scores 71.6 mAP, 0.8 below its teachers (72.4)")


def test_gaps_are_read_from_the_values_as_shown():
    assert lessons.gap_words(86.74, "B", 86.71) == "level with B (86.7)"
    assert lessons.gap_words(88.04, "KD", 87.16) == "0.8 above KD (87.2)"
    assert lessons.gap_words(float("nan"), "B", 1.0).startswith("not comparable")


def test_size_verdict_says_what_eq9s_size_bought():
    bought = lessons.size_verdict([("Target (Eq. 9)", 1.0, 71.6), ("Target b4 (before fine-tuning)", 0.51, 60.2)], 72.4)
    assert "Eq. 9 has bought 11.4 mAP with its size" in bought
    nothing = lessons.size_verdict([("Target (Eq. 9)", 1.0, 86.7), ("Target (tolerance 0.02)", 0.51, 87.2)], 87.1)
    assert "Eq. 9's extra size bought no accuracy" in nothing and "bought 0" not in nothing


def test_ranking_names_the_winner_and_the_label_free_leader():
    rows = {"Teacher": {"mAP": 87.1}, "KD": {"mAP": 88.0}, "Supervised": {"mAP": 87.8},
            "Target (Eq. 9)": {"mAP": 86.7}, "Target (tolerance 0.02)": {"mAP": 87.2}}
    text = lessons.ranking(rows, list(rows), ["KD", "Target (Eq. 9)", "Target (tolerance 0.02)"])
    assert text.startswith("By test mAP: KD 88.0, Supervised 87.8, Target (tolerance 0.02) 87.2")
    assert "The best row, KD, is 0.2 above the next, Supervised (87.8)" in text
    assert "Of the networks trained without a label, KD leads: it is 0.8 above Target (tolerance 0.02)" in text


def _seeds(a: list[float], b: list[float], name_b: str = "Target (tolerance 0.02)") -> dict:
    return {"per_seed": {str(s): {"rows": {"KD": x, name_b: y}} for s, (x, y) in enumerate(zip(a, b))}}


def test_seed_verdict_tells_a_lead_from_the_spread_and_reads_old_row_names():
    beyond = lessons.seed_verdict(_seeds([88.0, 87.9, 88.3], [87.2, 86.4, 87.4]), "KD", "Target (tolerance 0.02)", "s")
    assert "ahead on 3 of 3" in beyond and beyond.endswith("beyond the seed spread.")
    inside = lessons.seed_verdict(_seeds([87.0, 86.9, 87.2], [86.7, 86.9, 86.9], "Target"), "KD", "Target (Eq. 9)", "s")
    assert "inside the seed spread" in inside, "the old name 'Target' is the Eq. 9 row"
    assert lessons.seed_differences(_seeds([2.0, 3.0], [1.0, 1.5]), "KD", "Target (tolerance 0.02)") == [1.0, 1.5]
    assert "No seed study" in lessons.seed_verdict(None, "KD", "Target (Eq. 9)", "")


def test_seed_study_uses_the_committed_one_only_for_quick(tmp_path):
    assert lessons.seed_study(tmp_path / "seeds.json", "lesson") == (None, "")
    (tmp_path / "seeds.json").write_text(json.dumps(_seeds([1.0], [0.5])))
    assert lessons.seed_study(tmp_path / "seeds.json", "lesson")[1].startswith("this run's seeds")
    if lessons.COMMITTED_SEEDS.is_file():
        assert "committed quick study" in lessons.seed_study(tmp_path / "missing.json", "quick")[1]


def test_table2_order_says_when_the_order_flips_and_which_pools():
    t1 = {"KD": {"mAP": 88.0}, "Target (tolerance 0.02)": {"mAP": 87.2}}
    t2 = {"KD": {"mAP": 59.9}, "Target (Eq. 9)": {"mAP": 63.5}}
    text = lessons.table2_order(t1, t2, "Target (tolerance 0.02)", "Target (Eq. 9)", 15500, 1000)
    assert "+0.8 mAP in Table 1" in text and "-3.6 in Table 2" in text
    assert "The order flips, and on the smaller pool (Table 2) the TargetNet leads." in text
    same = lessons.table2_order(t1, {"KD": {"mAP": 64.0}, "Target (Eq. 9)": {"mAP": 63.5}}, "Target (tolerance 0.02)",
                                "Target (Eq. 9)", 15500, 1000)
    assert same.endswith("The order is the same in both tables.")


def test_fig3_reading_against_the_papers():
    def task(chosen, best, ap_chosen, teacher):
        return {"chosen_block": chosen, "best_ap_block": best, "teacher_ap": teacher,
                "ap_by_block": {chosen: ap_chosen, best: max(ap_chosen, teacher)}}
    fig3 = {"unrelated": {"tasks": {"x": task("b1", "b1", 90.0, 89.0), "y": task("b3", "b2", 80.0, 81.0)}},
            "related": {"tasks": {"u": task("b2", "b2", 70.0, 70.0), "v": task("b2", "b1", 60.0, 61.0)}}}
    text = lessons.fig3_sentence(fig3, ["b1", "b2", "b3"])
    assert "AP-best block for 2 of the 4 tasks" in text and "2 of them reach their teacher's AP" in text
    assert "unrelated pair 1, related pair 2 (of 3)" in text and text.endswith("does not hold on this run.")
    assert "13 blocks against 9" in lessons.PAPER_FIG3


def test_losses_against_their_floor_and_depth():
    assert "small next to" in lessons.rise_vs_floor(0.01, 0.2)
    assert "not small" in lessons.rise_vs_floor(0.05, 0.2)
    losses = {"a": {"b1": 0.1, "b2": 0.2, "b3": 0.3}, "b": {"b1": 0.3, "b2": 0.2, "b3": 0.4}}
    text = lessons.loss_by_depth(losses, ["b1", "b2", "b3"], "loss")
    assert "rises from 0.2000 after b1 to 0.3500 after b3" in text and "up on 1 of the 2 steps" in text


def test_run_time_adds_the_records_up():
    text = lessons.run_time({"table1/generic-x": 10.0, "table1/set2-teacher1-x": 5.0, "table1/KD": 7.0,
                             "table1/Ensemble": None, "table1/amalgamation-2": {"total": 20.0, "blocks": 15.0}})
    assert "took 42 s" in text and "teachers 15 s, amalgamations 20 s, baselines 7 s" in text


def test_a_block_trained_live_is_measured_every_epoch():
    torch.manual_seed(0)
    labels = [["a", "b"], ["c", "d"]]
    teachers = freeze([build_backbone("resnet18_narrow", num_classes=2, width=8) for _ in labels])
    plan = task_plan(None, labels)
    student = init_student("teacher-mean", teachers)
    filters = make_filters(student, teachers)[3]
    images = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    held = torch.randint(0, 256, (32, 3, 16, 16), dtype=torch.uint8)
    probe = lessons.BlockProbe(student.blocks[3], filters, teachers, plan,
                               prefix_features(student, held, 3, torch.float32), held, soft_targets(teachers, held, plan), 4)
    probe.measure()
    history = train_block(student, filters, teachers, plan, images, soft_targets(teachers, images, plan), 4,
                          Schedule(epochs=3, lr=0.5, batch_size=16), store=probe)
    assert len(history) == 3 and len(probe.held) == len(probe.gates) == 4
    assert probe.gates[0] == 0 and probe.gates[-1] > 0, "the filters start as the identity and move"
    text = lessons.live_block_sentence("b2_2", 64, 1.0, probe, 0.0, run_loss=0.2)
    assert ("fell" if probe.held[-1] < probe.held[0] else "did not fall") in text and "converged at 0.2000" in text
    assert lessons.live_block_figure(history, probe, 0.1, "b2_2") is not None


# ---------------------------------------------------------------------- notebook 05's crossover section

def _summary() -> dict:
    """A study summary with the keys of kalib.runs.crossover.summarise: amalgamation ahead of KD on the small pool,
    level in the middle, behind on the large one; the paired intervals and the verdict made by kalib's report."""
    pools, seeds = [500, 2000, 8000], [0, 1, 2]
    gaps = {("amalgamation", 500): 2.0, ("amalgamation", 2000): 0.0, ("amalgamation", 8000): -1.5,
            ("kd-2x", 500): -0.5, ("kd-2x", 2000): 0.5, ("kd-2x", 8000): 0.8}
    runs = []
    for pool in pools:
        for seed in seeds:
            noise = (0.1, -0.1, 0.05)[seed]
            kd = 70.0 + 5 * np.log10(pool / 500)
            for arm, value in (("kd", kd), ("amalgamation", kd + gaps["amalgamation", pool] + noise),
                               ("amalgamation-eq9", kd - 0.5 + noise), ("kd-2x", kd + gaps["kd-2x", pool] - noise)):
                runs.append({"arm": arm, "pool": pool, "seed": seed, "val_map": value, "test_map": round(value, 3),
                             "train_macs": pool * (3e9 if arm == "kd-2x" else 1.5e9), "params": 700000,
                             "wall_s": 1.0, "cpu_s": 1.0, "setting": {"lr": 0.1}, "commit": "abc"})
    pairs = report.paired(runs)
    return {"preset": "quick", "pool_sizes": pools, "seeds": seeds,
            "arms": ["amalgamation", "amalgamation-eq9", "kd", "kd-2x"], "teachers_test_map": 80.0,
            "teachers_val_map": 80.5, "runs": runs, "tuning": [], "paired": pairs, "verdict": report.verdict(pairs),
            "commits": ["abc"], "tuning_runs": 0, "failures": report.failures(runs),
            "cost": {"records": len(runs), "runs_cpu_s": len(runs), "blocks_s": 0, "core_s": len(runs), "core_h": 0.0}}


def _crossover_cells(namespace: dict, capsys) -> str:
    nb = nbformat.read(NOTEBOOKS / "05_tables.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.get("id") == "a5x00002")
    exec(compile(cell.source, "05_tables.ipynb:a5x00002", "exec"), namespace)   # noqa: S102 - the notebook's own cell
    return capsys.readouterr().out


def _namespace() -> dict:
    from IPython.display import display
    return {"lessons": lessons, "say": lessons.say, "P": get_preset("lesson"), "display": display}


def test_notebook_05_prints_the_studys_verdict_word_for_word(tmp_path, monkeypatch, capsys):
    summary = _summary()
    assert "ahead of" in summary["verdict"] and "behind" in summary["verdict"]
    path = tmp_path / "crossover.json"
    path.write_text(json.dumps(summary, indent=1))
    monkeypatch.setattr(lessons, "CROSSOVER_JSON", path)
    printed = _crossover_cells(_namespace(), capsys)
    assert summary["verdict"] in printed.splitlines(), "the verdict, exactly as the JSON states it, on a line of its own"
    assert "committed crossover study of preset quick" in printed and "not a run of this notebook (preset lesson)" in printed
    assert "Against KD at the same training MACs, amalgamation is ahead (95 % interval above 0) on pools of 500" in printed
    assert "behind on 8,000" in printed and "level on 2,000 images" in printed
    assert "Against KD with twice the MACs" in printed and "At 8,000 images the teachers score 80.0" in printed
    assert "the block-wise start pays on the smaller pools and plain distillation wins on the larger ones" in printed


def test_notebook_05_says_how_to_make_a_missing_study(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(lessons, "CROSSOVER_JSON", tmp_path / "crossover.json")
    printed = _crossover_cells(_namespace(), capsys)
    assert "is missing" in printed and "make study" in printed
    (tmp_path / "crossover.json").write_text('{"verdict": "cut off"}')      # an incomplete summary is missing too
    assert "is missing" in _crossover_cells(_namespace(), capsys)


def test_the_keys_notebook_05_reads_are_those_the_study_writes():
    """kalib.runs.crossover.summarise returns one dict literal: its keys hold every key notebook 05 reads."""
    import ast
    import inspect

    from kalib.runs import crossover
    tree = ast.parse(inspect.getsource(crossover.summarise))
    returned = [n.value for n in ast.walk(tree) if isinstance(n, ast.Return) and isinstance(n.value, ast.Dict)]
    keys = {k.value for d in returned for k in d.keys if isinstance(k, ast.Constant)}
    assert set(lessons.CROSSOVER_KEYS) <= keys <= set(_summary())


def test_notebook_05_reads_a_study_with_a_diverged_run(tmp_path, monkeypatch, capsys):
    """A run that diverged at its chosen setting (no test mAP) is named by the verdict; the notebook's means
    at the largest pool are over the runs that finished."""
    summary = _summary()
    victim = next(r for r in summary["runs"] if (r["arm"], r["pool"], r["seed"]) == ("amalgamation", 8000, 2))
    victim.update(val_map=None, test_map=None)
    summary["paired"] = report.paired(summary["runs"])
    summary["failures"] = report.failures(summary["runs"])
    summary["verdict"] = report.study_verdict(summary["paired"], summary["failures"])
    (tmp_path / "crossover.json").write_text(json.dumps(summary, indent=1))
    monkeypatch.setattr(lessons, "CROSSOVER_JSON", tmp_path / "crossover.json")
    printed = _crossover_cells(_namespace(), capsys)
    assert summary["verdict"] in printed.splitlines() and "amalgamation (tolerance rule) at 8,000 images, seed 2" in printed
    finished = [r["test_map"] for r in summary["runs"] if r["arm"] == "amalgamation" and r["pool"] == 8000
                and r["test_map"] is not None]
    assert f"amalgamation (tolerance rule) {sum(finished) / 2:.1f}" in printed
