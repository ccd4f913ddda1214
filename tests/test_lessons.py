"""What the lessons print about a run (kalib.report.lessons, kalib.report.choosing): every sentence generator is run
on crafted inputs that reach each of its branches (mixed results, a level result, a failed run, counts that differ),
names each TargetNet by its rule, and notebook 06's crossover cell prints figures/crossover.json's verdict word for
word, says which version of the study it reads (a summary built here with the keys `kalib study crossover` writes,
and version 2's additions), or says how to make it."""

import json

import matplotlib
import nbformat
import numpy as np
import pytest
import torch
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
    nb = nbformat.read(NOTEBOOKS / "06_choosing.ipynb", as_version=4)
    cell = next(c for c in nb.cells if c.get("id") == "ch06-07")
    exec(compile(cell.source, "06_choosing.ipynb:ch06-07", "exec"), namespace)   # noqa: S102 - the notebook's own cell
    return capsys.readouterr().out


def _namespace() -> dict:
    from IPython.display import display

    from kalib.report.notebook import show
    return {"choosing": choosing, "say": lessons.say, "show": show, "P": get_preset("lesson"), "display": display}


def test_notebook_06_prints_the_studys_verdict_word_for_word(tmp_path, monkeypatch, capsys):
    summary = _summary()
    assert "ahead of" in summary["verdict"] and "behind" in summary["verdict"]
    path = tmp_path / "crossover.json"
    path.write_text(json.dumps(summary, indent=1))
    monkeypatch.setattr(choosing, "CROSSOVER_JSON", path)
    printed = _crossover_cells(_namespace(), capsys)
    assert summary["verdict"] in printed.splitlines(), "the verdict, exactly as the JSON states it, on a line of its own"
    assert "version 1 of the committed crossover study (the file has no \"version\" key)" in printed
    assert "not a run of this notebook (preset lesson)" in printed and "no decision table" in printed
    assert ("Against KD, same MACs, amalgamation (tolerance rule) is ahead on pools of 500; behind on 8,000; level on "
            "2,000 images (by the 95 % interval of the paired differences): every pool where it is ahead is smaller "
            "than every pool where it is behind.") in printed
    assert "Against KD, same MACs, amalgamation (Eq. 9) is behind on pools of 500, 2,000 and 8,000 images" in printed
    assert "KD, 2x MACs," not in printed, "the twice-the-MACs pairs are exercise 6.1's, not printed before it"
    assert "At 8,000 images the teachers score 80.0" in printed and "as one expects" not in printed


def test_notebook_06_says_how_to_make_a_missing_study(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(choosing, "CROSSOVER_JSON", tmp_path / "crossover.json")
    printed = _crossover_cells(_namespace(), capsys)
    assert "is missing" in printed and "make study" in printed
    (tmp_path / "crossover.json").write_text('{"verdict": "cut off"}')      # an incomplete summary is missing too
    assert "is missing" in _crossover_cells(_namespace(), capsys)


def test_the_keys_notebook_06_reads_are_those_the_study_writes():
    """kalib.runs.crossover.summarise returns one dict literal: its keys hold every key notebook 06 reads."""
    import ast
    import inspect

    from kalib.runs import crossover
    tree = ast.parse(inspect.getsource(crossover.summarise))
    returned = [n.value for n in ast.walk(tree) if isinstance(n, ast.Return) and isinstance(n.value, ast.Dict)]
    keys = {k.value for d in returned for k in d.keys if isinstance(k, ast.Constant)}
    assert set(choosing.CROSSOVER_KEYS) <= keys <= set(_summary()) | {"version", "protocol", "task_sets", "decision"}


def test_notebook_06_reads_a_study_with_a_diverged_run(tmp_path, monkeypatch, capsys):
    """A run that diverged at its chosen setting (no test mAP) is named by the verdict; the notebook's means
    at the largest pool are over the runs that finished."""
    summary = _summary()
    victim = next(r for r in summary["runs"] if (r["arm"], r["pool"], r["seed"]) == ("amalgamation", 8000, 2))
    victim.update(val_map=None, test_map=None)
    summary["paired"] = report.paired(summary["runs"])
    summary["failures"] = report.failures(summary["runs"])
    summary["verdict"] = report.study_verdict(summary["paired"], summary["failures"])
    (tmp_path / "crossover.json").write_text(json.dumps(summary, indent=1))
    monkeypatch.setattr(choosing, "CROSSOVER_JSON", tmp_path / "crossover.json")
    printed = _crossover_cells(_namespace(), capsys)
    assert summary["verdict"] in printed.splitlines() and "amalgamation (tolerance rule) at 8,000 images, seed 2" in printed
    finished = [r["test_map"] for r in summary["runs"] if r["arm"] == "amalgamation" and r["pool"] == 8000
                and r["test_map"] is not None]
    assert f"amalgamation (tolerance rule) {sum(finished) / 2:.1f}" in printed
    table = choosing.arm_table(summary)
    row = table[(table["pool"] == 8000) & (table["arm"] == "amalgamation (tolerance rule)")].iloc[0]
    assert row["seeds"] == "2 of 3" and abs(row["test mAP"] - sum(finished) / 2) < 1e-9


def _v2(summary: dict) -> dict:
    """Version 2's additions on a version-1 summary: a protocol, task sets, inference MACs and images seen per run,
    a word and an adjusted interval per paired entry (here the opposite of what the 95 % interval says), a decision."""
    summary = {**summary, "version": 2, "protocol": {"seeds": 3, "intervals": "Holm-adjusted"},
               "task_sets": {"all": 20, "pair": 2}, "decision": [{"pool": 500, "choose": "amalgamate"}]}
    summary["runs"] = [{**r, "task_set": "all", "inference_macs": 3.5e7, "images_seen": r["pool"] * 10}
                       for r in summary["runs"]]
    summary["paired"] = [{**e, "task_set": "all", "word": "level", "adjusted_ci95": [-1.0, 1.0]} for e in summary["paired"]]
    return summary


def test_the_choosing_chapter_reads_version_2_and_says_so():
    summary = _v2(_summary())
    assert choosing.version(summary) == 2 and choosing.version(_summary()) == 1
    source = choosing.crossover_source(summary, "lesson")
    assert "version 2 of the committed crossover study, preset quick" in source and "no \"version\" key" not in source
    assert "Its protocol: seeds: 3; intervals: Holm-adjusted." in source and "Its task sets: all: 20; pair: 2." in source
    text = choosing.crossover_explanation(summary)
    assert text.startswith("Task set all: Against KD, same MACs, amalgamation (tolerance rule) is level on pools of 500, "
                           "2,000 and 8,000 images (as the study words each pool).")
    table = choosing.arm_table(summary)
    assert {"task set", "inference MMAC / image", "images seen"} <= set(table.columns)
    assert choosing.decision_frame(summary).to_dict("records") == [{"pool": 500, "choose": "amalgamate"}]
    assert choosing.decision_frame(_summary()) is None
    assert "task set" not in choosing.arm_table(_summary()).columns
    assert len(choosing.options_figure(table).axes) == 3 and len(choosing.options_figure(choosing.arm_table(_summary())).axes) == 2


def test_a_paired_entry_is_read_by_its_word_then_its_adjusted_interval_then_its_interval():
    assert choosing.outcome({"ci95": [0.1, 0.5]}) == "ahead"
    assert choosing.outcome({"ci95": [-0.5, -0.1]}) == "behind"
    assert choosing.outcome({"ci95": [-0.1, 0.5]}) == "level"
    assert choosing.outcome({"ci95": [0.1, 0.5], "adjusted_ci95": [-0.1, 0.7]}) == "level"
    assert choosing.outcome({"ci95": [0.1, 0.5], "adjusted_ci95": [-0.1, 0.7], "word": "wins"}) == "ahead"
    assert choosing.outcome({"ci95": [0.1, 0.5], "word": "something else"}) == "ahead"
    entries = [{"pool": p, "ci95": ci} for p, ci in ((250, [1, 2]), (1000, [-2, -1]), (4000, [1, 3]))]
    mixed = choosing.arm_against(entries, "amalgamation", "kd")
    assert "ahead on pools of 250 and 4,000; behind on 1,000 images" in mixed
    assert mixed.endswith("the pools where it is ahead are not all smaller than those where it is behind.")
    only = choosing.arm_against(entries[:1], "amalgamation-eq9", "kd-2x")
    assert only == ("Against KD, 2x MACs, amalgamation (Eq. 9) is ahead on pools of 250 images (by the 95 % interval of "
                    "the paired differences).")


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
    decision table given as a mapping."""
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
    assert choosing.decision_frame({"decision": {"500": {"choose": "amalgamate"}}}).loc["500", "choose"] == "amalgamate"
    assert lessons.shown_path(lessons.REPO / "figures" / "x.json") == "figures/x.json"
    assert lessons.shown_path(lessons.REPO.parent / "elsewhere.json").endswith("elsewhere.json")
