"""What the lessons print about a run (kalib.report.lessons, kalib.report.choosing): every sentence generator is run
on crafted inputs that reach each of its branches (mixed results, a level result, a failed run, counts that differ),
names each TargetNet by its rule, and notebook 06's crossover cells print each verdict of version 2's
figures/crossover.json word for word (a summary crafted in tests/crossover_summary.py, analysed by kalib's own report
and written as the study writes it), or say that the study is running, where its records are and how to resume
it."""

import json

import matplotlib
import nbformat
import pytest
import torch
from crossover_summary import summary as crossover_summary
from test_lesson_prose import NOTEBOOKS

from kalib.method.blockwise import soft_targets, train_block
from kalib.method.filters import task_plan
from kalib.method.pool import prefix_features
from kalib.method.student import freeze, init_student, make_filters
from kalib.models import build_backbone
from kalib.report import crossover as report
from kalib.report import choosing, lessons
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


def test_a_runs_map_is_read_as_the_tables_show_it():
    """Notebook 05 printed TargetDenseNet 66.0 where Table 1 says 66.1: the record's own mAP was taken before its
    labels' APs were rounded. Every sentence reads the mAP the tables recompute from the labels."""
    record = {"branch_tolerance": 0.0, "teacher_ap": {"a": 66.7, "b": 66.7, "mAP": 66.7},
              "target_ap": {"a": 66.05, "b": 66.0505, "mAP": 66.04}}
    assert lessons.shown_map(record["target_ap"]) == pytest.approx(66.05025)
    assert "scores 66.1 mAP, 0.6 below its teachers (66.7)" in lessons.target_vs_teachers(record)
    assert lessons.shown_map({"mAP": 70.0}) == 70.0


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


def _fig3_task(chosen, best, ap_chosen, teacher):
    return {"chosen_block": chosen, "best_ap_block": best, "teacher_ap": teacher,
            "ap_by_block": {chosen: ap_chosen, best: max(ap_chosen, teacher + 0.5)} if chosen != best else {chosen: ap_chosen}}


def test_fig3_reading_against_the_papers():
    fig3 = {"unrelated": {"tasks": {"x": _fig3_task("b1", "b1", 90.0, 89.0), "y": _fig3_task("b3", "b2", 80.0, 81.0)}},
            "related": {"tasks": {"u": _fig3_task("b2", "b2", 70.0, 70.0), "v": _fig3_task("b2", "b1", 60.0, 61.0)}}}
    text = lessons.fig3_sentence(fig3, ["b1", "b2", "b3"])
    assert "AP-best block for 2 of the 4 tasks (x and u)" in text
    assert "2 of the 4 tasks reach their teacher's AP (x and u)" in text and "2 of the 2 tasks at their AP-best" in text
    assert "unrelated pair 1, related pair 2 (of 3)" in text and text.endswith("does not hold on this run.")
    assert "13 blocks against 9" in lessons.PAPER_FIG3


def test_fig3_counts_that_differ_between_the_best_block_and_reaching_the_teacher():
    """Notebook 04's old sentence read "picks the AP-best block for 3 of the 4 tasks, and 2 of them reach their
    teacher's AP" where only one of those 3 did: each count is now out of all tasks, names its tasks, and says how
    many of the AP-best ones reach the teacher."""
    fig3 = {"unrelated": {"tasks": {"a": _fig3_task("b1", "b1", 88.0, 89.0), "b": _fig3_task("b1", "b1", 91.0, 90.0)}},
            "related": {"tasks": {"c": _fig3_task("b2", "b2", 70.0, 72.0), "d": _fig3_task("b3", "b1", 75.0, 74.96)}}}
    text = lessons.fig3_sentence(fig3, ["b1", "b2", "b3"])
    assert "AP-best block for 3 of the 4 tasks (a, b and c)" in text
    assert "2 of the 4 tasks reach their teacher's AP (b and d)" in text, "74.96 shows as 75.0: level, so reached"
    assert "1 of the 3 tasks at their AP-best block does" in text
    assert "unrelated pair 1, related pair 2" in text and text.endswith("does not hold on this run.")
    deeper = {"unrelated": {"tasks": {"a": _fig3_task("b3", "b3", 1.0, 2.0), "b": _fig3_task("b3", "b3", 1.0, 2.0)}},
              "related": {"tasks": {"c": _fig3_task("b1", "b1", 1.0, 2.0), "d": _fig3_task("b2", "b2", 1.0, 2.0)}}}
    text = lessons.fig3_sentence(deeper, ["b1", "b2", "b3"])
    assert "0 of the 4 tasks reach their teacher's AP (none)" in text and "tasks at their AP-best" not in text
    assert text.endswith("holds on this run.") and "unrelated pair 3, related pair 1" in text
    single = lessons.fig3_sentence({"unrelated": {"tasks": {"a": _fig3_task("b1", "b1", 91.0, 90.0)}}}, ["b1"])
    assert "1 of the 1 tasks reaches their teacher's AP (a); 1 of the 1 tasks at their AP-best block does." in single
    assert "paper's reading" not in single, "no related pair: nothing to compare"


def test_pairs_against_the_twenty_task_student_name_the_images_each_saw():
    pairs = {"unrelated": {"C": ["x", "y"], "tasks": {"x": _fig3_task("b1", "b1", 80.0, 81.0),
                                                       "y": _fig3_task("b1", "b1", 70.0, 71.0)}}}
    every = {"unrelated": {"C": [f"t{i}" for i in range(20)], "tasks": {"x": _fig3_task("b2", "b2", 80.04, 81.0),
                                                                         "y": _fig3_task("b1", "b1", 69.0, 71.0)}}}
    text = lessons.pairs_vs_all_tasks(pairs, every, 1000, 2000)
    assert "20-task student scores as high as the pair students or higher on 1 of the 2 tasks (x)" in text
    assert "on 1,000 pool images, the 20-task student on 2,000: the pair students saw fewer" in text
    assert "Both kinds of student trained every block on 2,000" in lessons.pairs_vs_all_tasks(pairs, every, 2000, 2000)
    assert lessons.pairs_vs_all_tasks(pairs, {"unrelated": {"C": [], "tasks": {}}}, 1, 1).startswith("No Fig. 3 task")
    assert lessons.images_per_block({"pool": {"images_per_block": None, "train": 300}}) == 300
    assert lessons.images_per_block({"pool": {"images_per_block": 200, "train": 300}}) == 200


def test_losses_against_their_floor_and_depth():
    assert "small next to" in lessons.rise_vs_floor(0.01, 0.2)
    assert "not small" in lessons.rise_vs_floor(0.05, 0.2)
    assert "not small" in lessons.rise_vs_floor(0.05, 0.0), "no floor: any rise is not small"
    losses = {"a": {"b1": 0.1, "b2": 0.2, "b3": 0.3}, "b": {"b1": 0.3, "b2": 0.2, "b3": 0.4}}
    text = lessons.loss_by_depth(losses, ["b1", "b2", "b3"], "loss")
    assert "rises from 0.2000 after b1 to 0.3500 after b3" in text and "of the 2 steps from one block to the next, it goes up on 1 and is level (to 4 decimals) on 1." in text
    rising = lessons.loss_by_depth({"a": {"b1": 0.1, "b2": 0.2, "b3": 0.3}}, ["b1", "b2", "b3"], "loss")
    assert rising.endswith("of the 2 steps from one block to the next, it goes up on 2.")


def test_steps_are_counted_as_shown():
    """Notebook 03 said the loss "goes up on 7 of the 7 steps" beside two values that showed equal: steps are read
    at the decimals the sentence prints, and a level step is named as such."""
    losses = {"a": {"b1": 0.10001, "b2": 0.10003, "b3": 0.2, "b4": 0.1}}
    text = lessons.loss_by_depth(losses, ["b1", "b2", "b3", "b4"], "loss")
    assert "is level from 0.1000 after b1 to 0.1000 after b4" in text
    assert "of the 3 steps from one block to the next, it goes up on 1, goes down on 1 and is level (to 4 decimals) on 1." in text
    falling = lessons.loss_by_depth({"a": {"b1": 0.3, "b2": 0.2}}, ["b1", "b2"], "loss")
    assert "falls from 0.3000" in falling and "it goes up on 0 and goes down on 1." in falling
    epochs = lessons.epoch_losses_by_depth({"b1": [0.5, 0.30001], "b2": [0.4, 0.30004], "b3": [0.35]})
    assert "that of b3 at 0.3500" in epochs and "the last epoch's loss goes up on 1 and is level (to 4 decimals) on 1" in epochs
    assert lessons.epoch_losses_by_depth({"b1": []}).startswith("No block has finished an epoch")


def test_alignment_names_where_the_teachers_agree_and_reads_steps_as_shown():
    table = {"teacher 1 vs teacher 2": {"b1": 0.901, "b2": 0.899, "b3": 0.5},
             "teacher 1 vs start": {"b1": 0.95, "b2": 0.9, "b3": 0.7}, "teacher 2 vs start": {"b1": 0.96, "b2": 0.8, "b3": 0.6}}
    text = lessons.alignment_sentence(table)
    assert "0.90 after b1 and 0.50 after b3; most after b1 (0.90), least after b3 (0.50)" in text
    assert "Of the 2 steps from one block to the next, their agreement rises on 0, falls on 1 and is level (to 2 decimals) on 1." in text
    assert "teacher 2 is furthest from the shared start (correlation 0.60)" in text
    assert lessons.alignment_sentence({"teacher 1 vs start": {"b1": 1.0}}).startswith("Only one teacher")


def test_hardest_labels_count_the_garments():
    text = lessons.hardest_labels({"teacher 1": {"shirt": 50.0, "coat": 60.0, "one": 99.0, "two": float("nan"), "mAP": 70.0}}, n=2)
    assert "teacher 1: shirt 50.0, coat 60.0 (its best: one 99.0)" in text and "2 of these 2 hardest labels are garments" in text
    assert "garments" not in lessons.hardest_labels({"teacher 1": {"bus": 50.0, "dog": 60.0, "mAP": 55.0}})
    assert lessons.hardest_labels({"teacher 1": {"a": float("nan"), "mAP": float("nan")}}).startswith("No label")


def test_filters_spread_and_eq9_sentences():
    import numpy as np
    weights = {"b1": np.array([[1.0, 1.2], [1.0, 0.8]]), "b4": np.array([[1.5, 0.5], [1.5, 0.5]])}
    text = lessons.filter_sentence(weights)
    assert "after b1 the gates lie on average 0.100 from 1 and the two teachers' gates 0.200 apart" in text
    assert text.endswith("furthest from the identity after b4.")
    assert "Eq. 5 varies by a factor 4.0 and Eq. 7 by a factor 1.50: Eq. 5 is the one" in lessons.spread_sentence([1, 4], [2, 3])
    assert "Eq. 7 is the one" in lessons.spread_sentence([1, 1.1], [1, 3])
    record = {"blocks": ["b1", "b2"], "tasks": ["a", "b", "c"], "chosen_block": {"a": "b1", "b": "b1", "c": "b2"},
              "converged_loss": {"a": {"b1": 0.1, "b2": 0.2}, "b": {"b1": 0.3, "b2": 0.2}, "c": {"b1": 0.3, "b2": 0.2}},
              "ap_best_block": {"a": "b2", "b": "b1", "c": "b2"},
              "branch_ap": {"a": {"b1": 80.0, "b2": 82.0}, "b": {"b1": 70.0, "b2": 60.0}, "c": {"b1": 50.0, "b2": 51.0}}}
    assert lessons.eq9_sentence(record) == ("On this run the converged loss is higher at the last block than at the first for "
                                            "1 of the 3 tasks, and Eq. 9 sends 2 after b1, 1 after b2.")
    text = lessons.eq9_vs_ap_best(record)
    assert "Eq. 9's block is the AP-best one for 2 tasks" in text and "would gain 0.7 AP per task" in text


def test_finetune_sentence_reads_both_directions():
    record = {"branch_tolerance": 0.0, "heldout_loss": {"before_finetune": 0.3, "after_finetune": 0.2},
              "target_ap_before_finetune": {"mAP": 70.0}, "target_ap": {"mAP": 71.25}}
    assert lessons.finetune_sentence(record) == ("Fine-tuning Target (Eq. 9) lowered its held-out loss (0.3000 to 0.2000 "
                                                 "nats) and moved its test mAP from 70.0 to 71.2 (+1.2).")
    record["heldout_loss"]["after_finetune"] = 0.4
    assert "did not lower its held-out loss" in lessons.finetune_sentence(record)


def test_sizes_against_teachers_say_which_are_larger():
    text = lessons.sizes_against_teachers({"Target (tolerance 0.02) (table1)": (719460, 1402932),
                                           "TargetDenseNet (Eq. 9) (table1)": (198043, 195956)})
    assert text.startswith("TargetNets smaller than their own teachers together: Target (tolerance 0.02) (table1) (0.513×); "
                           "as large or larger: TargetDenseNet (Eq. 9) (table1) (1.011×).")
    assert "can end up larger than its teachers" in text
    smaller = lessons.sizes_against_teachers({"T": (1, 2)})
    assert "as large or larger" not in smaller and "can end up larger" not in smaller
    assert lessons.sizes_against_teachers({}) == "No TargetNet to compare."


def test_costs_ranking_and_going_further():
    cost = {"Ensemble": {"params": 100, "macs": 10}, "KD": {"params": 50, "macs": 5}, "Target (Eq. 9)": {"params": 100, "macs": 17}}
    assert lessons.costs_sentence(cost) == ("Parameters and MACs per image as a fraction of the Ensemble's: KD 0.50× and "
                                            "0.50×; Target (Eq. 9) 1.00× and 1.70×.")
    assert lessons.costs_sentence({"KD": {}}) == "No Ensemble row to compare with."
    assert lessons.ranking({"A": {"mAP": float("nan")}}) == "No row to rank."
    from kalib.runs.config import override
    quick, lesson = get_preset("quick"), get_preset("lesson")
    candidates = ["block_epochs=[1,1,2,2,4,4,8,8]", "block_epochs=[2,2,2,2,2,2,2,2]"]
    assert lessons.going_further(quick, candidates, override, "try {change}") == "try block_epochs=[2,2,2,2,2,2,2,2]"
    assert lessons.going_further(lesson, candidates, override, "try {change}") == "try block_epochs=[1,1,2,2,4,4,8,8]"
    assert lessons.going_further(quick, candidates[:1], override, "try {change}") == ""


def test_run_time_adds_the_records_up():
    text = lessons.run_time({"table1/generic-x": 10.0, "table1/set2-teacher1-x": 5.0, "table1/KD": 7.0,
                             "table1/Ensemble": None, "table1/amalgamation-2": {"total": 20.0, "blocks": 15.0}})
    assert "took 42 s" in text and "teachers 15 s, amalgamations 20 s, baselines 7 s" in text


@pytest.mark.usefixtures("one_thread")
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


# ------------------------------------------------------------------ notebook 06's crossover sections

def _cells_of_06(ids: tuple[str, ...], namespace: dict, capsys) -> tuple[str, object]:
    """Run notebook 06's cells ``ids`` in ``namespace``, as the notebook does; what they printed and the value of
    the last cell's last expression (what the notebook would show, e.g. an exercise's Check)."""
    import ast

    import matplotlib.pyplot as plt
    nb = nbformat.read(NOTEBOOKS / "06_choosing.ipynb", as_version=4)
    value = None
    for cell_id in ids:
        tree = ast.parse(next(c for c in nb.cells if c.get("id") == cell_id).source)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, f"06_choosing.ipynb:{cell_id}", "exec"), namespace)      # noqa: S102 - the notebook's cell
        value = eval(compile(ast.Expression(last.value), cell_id, "eval"), namespace) if last else None  # noqa: S307
    plt.close("all")                                # show() draws nothing outside a notebook
    return capsys.readouterr().out, value


def _namespace() -> dict:
    from IPython.display import display

    from kalib.report.notebook import show
    return {"choosing": choosing, "say": lessons.say, "show": show, "P": get_preset("lesson"), "display": display}


def _committed(summary: dict, figures, monkeypatch, as_the_study: bool = True) -> dict:
    """``summary`` written as the study writes it (crossover.json, .md, .png; else the JSON alone) and put where
    notebook 06 reads it."""
    from kalib.runs.crossover import write_summary
    if as_the_study:
        write_summary(summary, figures)
    else:
        (figures / "crossover.json").write_text(json.dumps(summary, indent=1))
    monkeypatch.setattr(choosing, "CROSSOVER_JSON", figures / "crossover.json")
    return json.loads((figures / "crossover.json").read_text())


SECTION_62 = ("ch06-07", "ch06-10", "ch06-13", "ch06-15")       # 6.2, 6.3 and the exercises on the study


def test_notebook_06_prints_every_cells_verdict_word_for_word(tmp_path, monkeypatch, capsys):
    summary = _committed(crossover_summary(), tmp_path, monkeypatch)
    shown = []
    printed, check = _cells_of_06(SECTION_62, {**_namespace(), "display": shown.append}, capsys)
    lines = printed.splitlines()
    for cell, verdict in summary["verdict"].items():
        assert "ahead at 250" in summary["verdict"]["pair-1/all"] and "behind at 4,000" in summary["verdict"]["pair-1/all"]
        assert f"The study's verdict for {cell}, as figures/crossover.json states it:" in lines
        assert verdict in lines, "each verdict, exactly as the JSON states it, on a line of its own"
    assert all(line in lines for line in report.answer(summary)), "the answer in brief, a paragraph per sentence"
    assert printed.startswith(f"From `{tmp_path / 'crossover.json'}`: version 2 of the committed crossover study, preset "
                              "quick, its protocol fixed at commit e3a94b519cb6 before its first run (code path 1)")
    assert ("**pair-1/all** (20 labels): At the same network size, images and training MACs (`amalgamation-b4` − "
            "`kd`), the block-wise start pays at N = 250 (ahead), costs at N = 4,000 (behind: KD spends the same "
            "compute better). At twice the training MACs (`amalgamation-b4-2x` − `kd-2x`), the block-wise start pays "
            "at N = 250 (ahead), makes no difference at N = 4,000 (equivalent: within the margin). Words as the study "
            "gives them: 95 % intervals Holm-adjusted for the cell's 20 pairs, equivalent within ±0.5 mAP.") in printed
    tables = [t.to_dict("records") for t in shown]                   # 6.2's decision table, 6.3's arms
    assert tables[0] == choosing.decision_frame(summary).round({"test mAP": 1, "inference MMAC / image": 1,
                                                                "training TMAC": 2}).to_dict("records")
    assert tables[1] == choosing.arm_table(summary).round({"test mAP": 1, "parameters": 0, "inference MMAC / image": 1,
                                                          "training TMAC": 2, "images seen": 0}).to_dict("records")
    assert "pair-1/custom at N = 250: at most 735,000 parameters and 36.8 MMACs per image" in printed
    assert check.ok is None and check.message.startswith("Not answered yet"), "exercise 2 on the study"


def test_notebook_06_says_where_the_records_are_while_it_has_no_summary(tmp_path, monkeypatch, capsys):
    records = tmp_path / "records" / "pair-1" / "all"
    records.mkdir(parents=True)
    for name in ("kd-N250-s0-lr0.1.json", "merge-N250-s0-lam0.5.json"):
        (records / name).write_text("{}")
    monkeypatch.setattr(choosing, "CROSSOVER_JSON", tmp_path / "crossover.json")
    monkeypatch.setattr(choosing, "CROSSOVER_RECORDS", tmp_path / "records")
    namespace = _namespace()
    printed, check = _cells_of_06(("ch06-07", "ch06-10", "ch06-13"), namespace, capsys)
    assert printed == (f"`{tmp_path / 'crossover.json'}` is missing, so this section has no study to read. Here "
                       f"version 2 of the crossover study has 2 records in `{tmp_path / 'records'}`, one per finished "
                       "run; `make study` re-uses them, trains the runs that have none (hours on two CPU cores for the "
                       "whole study; README) and writes the summary once every run has a record.\n")
    assert check.ok is None and "nothing to check against yet" in check.message and "make study" in check.message
    _, check = _cells_of_06(("ch06-15",), namespace, capsys)
    assert check.ok is None and "nothing to check against yet" in check.message
    version_1 = {"pool_sizes": [500], "seeds": [0], "arms": ["kd"], "runs": [], "paired": [], "verdict": "withdrawn",
                 "failures": []}
    for content, why in ((json.dumps(version_1), "is version 1 of the study (no \"version\" key), which was withdrawn: "
                          "its advice did not follow from its runs (docs/design.md §9); this chapter reads version 2 only"),
                         ('{"version": 1}', "is version 1 of the study (\"version\": 1), which was withdrawn"),
                         ('{"version": 2, "verdict": {}}', "is an incomplete summary of version 2 (no preset, protocol, "
                          "cells, arms, runs, paired, decision, commits, cost)"),
                         ('{"version": 2, "cut', "is not readable JSON ("), ("[2]", "is not a study's summary"),
                         ('{"version": 3}', "is of a version of the study this chapter does not know (\"version\": 3)")):
        (tmp_path / "crossover.json").write_text(content)
        assert choosing.load_crossover() is None
        printed, _ = _cells_of_06(("ch06-07",), _namespace(), capsys)
        assert why in printed and "version 2 of the crossover study has 2 records" in printed, content
    (records / "merge-N250-s0-lam0.5.json").unlink()
    assert "version 2 of the crossover study has 1 record in" in choosing.crossover_missing()
    assert "Here there are no records of version 2 of the crossover study, one per finished run" in \
        choosing.crossover_missing(records=tmp_path / "none")


def test_the_keys_notebook_06_reads_are_those_the_study_writes():
    """kalib.runs.crossover.summarise returns one dict literal with kalib.report.crossover.analyse's: the crafted
    summary has exactly their keys, notebook 06 reads only those, and its runs only the fields a run keeps."""
    import ast
    import inspect
    from types import SimpleNamespace

    from kalib.runs.crossover import study
    keys = set()
    for function in (study.summarise, report.analyse):
        tree = ast.parse(inspect.getsource(function))
        returned = [n.value for n in ast.walk(tree) if isinstance(n, ast.Return) and isinstance(n.value, ast.Dict)]
        keys |= {k.value for d in returned for k in d.keys if isinstance(k, ast.Constant)}
    summary = crossover_summary(diverged=("all", "kd", 250, 0))
    assert set(choosing.CROSSOVER_KEYS) <= keys == set(summary)
    ctx = SimpleNamespace(cell=SimpleNamespace(teachers="pair-1", task_set="all"), teacher_key=["a" * 64, "b" * 64])
    kept = set(study.run_entry(ctx, {k: 0 for r in summary["runs"] for k in r} | {"key": "x", "wall_s": 1.0}))
    assert {k for r in summary["runs"] for k in r} == kept


def test_notebook_06_reads_a_study_with_a_diverged_run(tmp_path, monkeypatch, capsys):
    """A run that diverged at its chosen setting (no test mAP) is named by the verdict, printed word for word, and
    by the sentence on the primary pair; the tables count it with its start's mAP, as the study's pairs do."""
    summary = _committed(crossover_summary(diverged=("all", "amalgamation-b4", 4000, 2)), tmp_path, monkeypatch, False)
    printed, _ = _cells_of_06(("ch06-07",), _namespace(), capsys)
    verdict = summary["verdict"]["pair-1/all"]
    assert verdict in printed.splitlines()
    assert verdict.endswith("Diverged at the chosen setting, counted with the mAP of its start: amalgamation, every "
                            "label at b4 at 4,000, seed 2.")
    assert ("(`amalgamation-b4` − `kd`), the block-wise start pays at N = 250 (ahead), is undecided at N = 4,000 "
            "(inconclusive); a run diverged at N = 4,000, seed 2, and counts with the mAP of its start. At twice") in printed
    table = choosing.arm_table(summary)
    row = table[(table["cell"] == "pair-1/all") & (table["N"] == 4000) & (table["arm"] == "amalgamation, every label at b4")]
    others = [r["test_map"] for r in summary["runs"] if (r["task_set"], r["arm"], r["pool"]) ==
              ("all", "amalgamation-b4", 4000) and r["test_map"] is not None]
    assert row.iloc[0]["finished"] == "2 of 3" and row.iloc[0]["test mAP"] == pytest.approx((sum(others) + 60.0) / 3)


def test_the_choosing_sentences_on_each_branch():
    """What the tests above do not reach: a protocol changed after a test number was seen, several commits, an
    untuned cell with more than six labels, a study without KD at the branch-out nets' own budgets, a cell
    without a pair, seeds that diverged on both sides, every word."""
    summary = crossover_summary()
    summary["protocol"] = {**summary["protocol"], "changes": ["the margin, from 0.4 to 0.5 mAP"]}
    summary["commits"] = ["aaa", "bbb", "ccc"]
    summary["cells"] = [*summary["cells"], {"teachers": "pair-2", "task_set": "all", "labels": [str(i) for i in range(7)],
                                            "pools": [250], "seeds": [0, 1], "tuned": False}]
    summary["arms"] = [a for a in summary["arms"] if a not in ("kd-tol", "kd-eq9")]
    source = choosing.crossover_source(summary, "smoke", "elsewhere/crossover.json")
    assert source.startswith("From `elsewhere/crossover.json`: version 2 of the committed crossover study, preset quick, "
                             "its protocol fixed at commit e3a94b519cb6 before its first run (code path 1), changed after "
                             "a test number was seen: the margin, from 0.4 to 0.5 mAP. It reads 78 runs at their chosen "
                             "settings, out of 80 records with the tuning grids, made by commits aaa, bbb and ccc.")
    assert ("pair-2/all (7 labels) at N = 250, seeds 0 and 1, settings chosen on a tuned cell of its task set. Arms: "
            "`teachers`, `merge`, `amalgamation-b4`, `amalgamation`, `amalgamation-eq9`, `kd`, `kd-2x`, "
            "`amalgamation-b4-2x`. Every arm but the teachers sees exactly the N pool images of its seed; the "
            "amalgamation arms' blocks train on the first 90 % and hold the last 10 % out") in source
    assert source.endswith("Not a run of this notebook (preset smoke).")
    assert choosing.crossover_explanation(summary).endswith("**pair-2/all** (7 labels): the study has no paired runs in "
                                                            "this cell.")
    assert choosing.start_pays([], "amalgamation-b4-2x", "kd-2x", "At twice the training MACs") == \
        "At twice the training MACs, the study has no pair `amalgamation-b4-2x` − `kd-2x` in this cell."
    assert "**pair-1/custom** (4 labels): At the same network size, images and training MACs (`amalgamation-b4` − " \
           "`kd`), the block-wise start is undecided at N = 250 (inconclusive). At twice" in choosing.crossover_explanation(summary)
    entries = [{"pool": p, "word": w, "failed": f} for p, w, f in ((250, "ahead", [0, 3]), (500, "behind", []),
                                                                   (1000, "equivalent", []), (4000, "inconclusive", [1]))]
    assert choosing.words_by_pool(entries) == {"ahead": [250], "behind": [500], "equivalent": [1000], "inconclusive": [4000]}
    assert choosing.start_pays(entries, "amalgamation-b4", "kd", "At b") == (
        "At b (`amalgamation-b4` − `kd`), the block-wise start pays at N = 250 (ahead), costs at N = 500 (behind: KD "
        "spends the same compute better), makes no difference at N = 1,000 (equivalent: within the margin), is "
        "undecided at N = 4,000 (inconclusive); a run diverged at N = 250, seeds 0 and 3; N = 4,000, seed 1, and "
        "counts with the mAP of its start.")
    frame = choosing.decision_frame(summary)
    first = frame.iloc[0].to_dict()
    assert first == {"cell": "pair-1/all", "N": 250, "question": "accuracy is all that matters",
                     "best choice": "the teachers", "test mAP": 75.0, "parameters": 1_400_000,
                     "inference MMAC / image": 70.0, "training TMAC": 0.0,
                     "runner-up": "amalgamation b4, fine-tuned to 2x MACs", "word against it": "ahead"}
    table = choosing.arm_table(summary)
    assert list(table.columns) == ["cell", "N", "arm", "test mAP", "finished", "parameters", "inference MMAC / image",
                                   "training TMAC", "images seen"]
    assert list(table[table["cell"] == "pair-1/custom"]["arm"])[:3] == ["the teachers", "merge (training-free)",
                                                                       "amalgamation, every label at b4"]
    assert len(choosing.options_figure(table).axes) == 3 * 2
    for r in summary["runs"]:
        if (r["task_set"], r["arm"], r["pool"]) == ("custom", "merge", 250):       # diverged before it had a start
            r.update(test_map=None)
    row = choosing.arm_table(summary).query("cell == 'pair-1/custom' and arm == 'merge (training-free)'").iloc[0]
    assert row["finished"] == "0 of 3" and row["test mAP"] != row["test mAP"], "no score: NaN"


def test_this_runs_options_against_keeping_the_teachers():
    options = {"keep the teachers": {"mAP": 80.04, "params": 1000, "macs": 100.0, "train_macs": 0},
               "merge (no training)": {"mAP": 70.0, "params": 500, "macs": 50.0, "train_macs": 0},
               "distil (KD)": {"mAP": 80.0, "params": 500, "macs": 50.0, "train_macs": 2.5e12},
               "amalgamate": {"mAP": 81.0, "params": 1000, "macs": 170.0, "train_macs": None}}
    text = choosing.options_sentence(options)
    assert text.startswith("Against keeping the teachers (80.0 mAP, 1,000 parameters): merge (no training): 70.0 mAP, "
                           "10.0 below them, at 0.50× their parameters and 0.50× their MACs per image (no training)")
    assert "distil (KD): 80.0 mAP, level with them" in text and "(2.50 TMAC of training)" in text
    assert "amalgamate: 81.0 mAP, 1.0 above them, at 1.00× their parameters and 1.70× their MACs per image " \
           "(training MACs not recorded here)" in text
    assert choosing.options_sentence({"x": {}}).startswith("No row")


def test_the_remaining_branches_of_the_sentences():
    """Branches the tests above do not reach: a live block whose loss did not fall, an Eq. 9 net no larger than
    another, a seed study without both rows, a spread with no positive value, pair students with more images, a
    path outside the repository."""
    from types import SimpleNamespace
    probe = SimpleNamespace(held=[0.30, 0.31], gates=[0.0, 0.01])
    text = lessons.live_block_sentence("b2_2", 64, 1.0, probe, 0.35)
    assert "it did not fall by 0.0100" in text and "went from -0.0500 to -0.0400." in text and "removed" not in text
    assert "converged at" not in text
    text = lessons.size_verdict([("Target (Eq. 9)", 0.5, 70.0), ("Target b4", 0.6, 69.0)], 71.0)
    assert "Target b4 is no smaller (0.60×) at 69.0." in text
    assert "does not have both KD and Target (Eq. 9)" in lessons.seed_verdict(_seeds([1.0], [0.5]), "KD", "Target (Eq. 9)", "s")
    assert "factor nan" in lessons.spread_sentence([0.0, 0.0], [1.0, 2.0])
    pairs = {"p": {"C": ["x"], "tasks": {"x": _fig3_task("b1", "b1", 1.0, 2.0)}}}
    assert "the pair students saw more images" in lessons.pairs_vs_all_tasks(pairs, pairs, 3000, 2000)
    assert lessons.shown_path(lessons.REPO / "figures" / "x.json") == "figures/x.json"
    assert lessons.shown_path(lessons.REPO.parent / "elsewhere.json").endswith("elsewhere.json")
