"""The lessons' exercise checkers (kalib.report.exercises): each accepts the right answer, refuses a wrong one with a
hint that does not give the answer away, and says "not answered yet" for ``answer = None`` without computing
anything. Tiny random networks stand in for a run: the checkers compute their answers from whatever they are
given."""

import math

import numpy as np
import pytest
import torch
from crossover_summary import summary as crossover_summary

from kalib.method.filters import task_plan
from kalib.method.student import freeze, init_student, make_filters
from kalib.models import build_backbone
from kalib.report import exercises as ex
from kalib.report.crossover import interval
from kalib.report.notebook import chance_map

LABELS = [["a0", "a1", "a2", "a3"], ["b0", "b1", "b2"]]
pytestmark = pytest.mark.usefixtures("one_thread")      # tiny networks: one thread (tests/conftest.py)
TINY = {"width": 8}


@pytest.fixture(scope="module")
def nets():
    torch.manual_seed(0)
    teachers = freeze([build_backbone("resnet18_narrow", num_classes=len(g), **TINY) for g in LABELS])
    plan = task_plan(None, LABELS)
    student = init_student("teacher-mean", teachers).eval()
    filters = make_filters(student, teachers, 4).eval()
    images = torch.randint(0, 256, (24, 3, 16, 16), dtype=torch.uint8)
    return student, filters, teachers, plan, images


def _record(losses: dict, chosen: dict, best: dict) -> dict:
    tasks = list(losses)
    return {"tasks": tasks, "blocks": list(next(iter(losses.values()))), "task_teacher": [1, 1, 2, 2][:len(tasks)],
            "converged_loss": losses, "chosen_block": chosen, "ap_best_block": best}


RECORD = _record({"a0": {"b1": 0.20, "b2": 0.21, "b3": 0.23}, "a1": {"b1": 0.30, "b2": 0.28, "b3": 0.29},
                  "b0": {"b1": 0.10, "b2": 0.12, "b3": 0.15}, "b1": {"b1": 0.40, "b2": 0.41, "b3": 0.40}},
                 chosen={"a0": "b1", "a1": "b2", "b0": "b1", "b1": "b1"},
                 best={"a0": "b1", "a1": "b3", "b0": "b1", "b1": "b2"})


def _assert_refused_without_the_answer(check: ex.Check, truth) -> None:
    assert check.ok is False and not check and "Hint:" in check.message
    shown = [str(truth)] if not isinstance(truth, float) else [f"{truth:.{d}f}" for d in (2, 3, 4)]
    assert not any(s in check.message for s in shown), f"the hint gives the answer away: {check.message}"


def _assert_unanswered(check: ex.Check) -> None:
    assert check.ok is None and not check and check.message.startswith("Not answered yet")


def test_a_check_shows_its_message_and_is_true_only_when_right():
    assert bool(ex.right()) and repr(ex.right("Well done.")) == "Right. Well done."
    assert not ex.wrong("look again") and ex.wrong("look again")._repr_markdown_() == "Not yet. Hint: look again"
    assert not ex.Check(None, ex.NOT_ANSWERED)


def test_numbers_are_told_too_high_or_too_low_and_non_numbers_refused():
    assert ex.number(1.0001, 1.0, 1e-3, "h")
    assert "too high" in ex.number(1.2, 1.0, 1e-3, "h").message
    assert "too low" in ex.number(0.8, 1.0, 0.1, "h", relative=True).message
    assert "one number" in ex.number("one", 1.0, 1e-3, "h").message
    nan = ex.number(math.nan, 1.0, 1e-3, "h").message
    assert "not a finite number" in nan and "logsigmoid" in nan and "got float" not in nan
    assert "not a finite number" in ex.number(float("-inf"), 1.0, 1e-3, "h").message
    _assert_unanswered(ex.number(None, 1.0, 1e-3, "h"))


def test_logit_gradient(nets):
    teachers, images = nets[2], nets[4]
    labels = (torch.rand(len(images), 3) > 0.5).float()
    from kalib.train import to_input
    z = teachers[1](to_input(images)).detach().requires_grad_(True)
    torch.nn.functional.binary_cross_entropy_with_logits(z, labels, reduction="sum").backward()
    truth = float(z.grad.abs().mean())                                     # autograd's ∂ℓ/∂z, per term
    assert ex.check_logit_gradient(truth, teachers[1], images, labels)
    _assert_refused_without_the_answer(ex.check_logit_gradient(truth * 1.1, teachers[1], images, labels), truth)
    of_the_mean = ex.check_logit_gradient(truth / z.numel(), teachers[1], images, labels)
    assert not of_the_mean and "gradient of the mean" in of_the_mean.message
    _assert_unanswered(ex.check_logit_gradient(None, teachers[1], images, labels))


def test_rarest_chance_and_percent_not_fraction():
    rng = np.random.default_rng(0)
    labels = torch.tensor((rng.random((400, 4)) < [0.4, 0.3, 0.1, 0.5]).astype(np.float32))
    truth = float(np.mean([chance_map(labels[:, [2]].numpy(), seed=s) for s in range(5)]))
    assert ex.check_rarest_chance(chance_map(labels[:, [2]]), labels)
    _assert_refused_without_the_answer(ex.check_rarest_chance(chance_map(labels[:, [3]]), labels), truth)
    assert "percent" in ex.check_rarest_chance(truth / 100, labels).message
    _assert_unanswered(ex.check_rarest_chance(None, labels))


def test_last_stage_share():
    truth = ex.stage_share("resnet18_narrow", TINY)
    assert 0.5 < truth < 1
    assert ex.check_last_stage_share(truth, "resnet18_narrow", TINY)
    _assert_refused_without_the_answer(ex.check_last_stage_share(truth - 0.1, "resnet18_narrow", TINY), truth)
    assert "fraction" in ex.check_last_stage_share(100 * truth, "resnet18_narrow", TINY).message
    _assert_unanswered(ex.check_last_stage_share(None, "resnet18_narrow", TINY))


def test_task_plan_by_hand():
    c = ["a2", "b1", "a0"]
    assert ex.check_task_plan([[2, 0], [1]], c, LABELS)
    assert "order" in ex.check_task_plan([[0, 2], [1]], c, LABELS).message
    assert "one list per teacher" in ex.check_task_plan([[2, 0]], c, LABELS).message
    assert "position" in ex.check_task_plan([[0, 2], [4]], c, LABELS).message
    assert "list" in ex.check_task_plan(3, c, LABELS).message
    _assert_unanswered(ex.check_task_plan(None, c, LABELS))


def test_half_gate_and_eq5_lambda_spread(nets):
    student, filters, teachers, _, images = nets
    shift = ex.half_gate_shift(student, teachers, images)
    assert shift > 0
    assert ex.check_half_gate(shift, student, teachers, images)
    _assert_refused_without_the_answer(ex.check_half_gate(shift * 2, student, teachers, images), shift)
    _assert_unanswered(ex.check_half_gate(None, student, teachers, images))
    eq5 = ex.eq5_by_block(student, filters, teachers, images)
    record = {"tasks": ["a0", "b0"], "blocks": student.block_names,
              "converged_loss": {t: {b: 0.1 * (k + 1) for k, b in enumerate(student.block_names)} for t in ("a0", "b0")}}
    lam = [0.1 * (k + 1) / v for k, v in enumerate(eq5)]
    assert ex.eq5_balance(student, filters, teachers, images, record) == pytest.approx(lam)
    truth = max(lam) / min(lam)
    assert ex.check_eq5_lambda_spread(truth, student, filters, teachers, images, record)
    _assert_refused_without_the_answer(ex.check_eq5_lambda_spread(truth * 1.5, student, filters, teachers, images, record),
                                       truth)
    assert "at least 1" in ex.check_eq5_lambda_spread(1 / truth, student, filters, teachers, images, record).message
    _assert_unanswered(ex.check_eq5_lambda_spread(None, student, filters, teachers, images, record))


def test_teacher2_share():
    truth = (0.15 + 0.40) / 2
    assert ex.teacher_mean_loss(RECORD, 2) == pytest.approx(truth)
    assert ex.check_teacher2_share(truth, RECORD)
    _assert_refused_without_the_answer(ex.check_teacher2_share(ex.teacher_mean_loss(RECORD, 1), RECORD), truth)
    _assert_unanswered(ex.check_teacher2_share(None, RECORD))


def test_floors_and_temperature(nets):
    _, _, teachers, plan, images = nets
    h = ex.floors(teachers, plan, images)
    top = max(h, key=h.get)
    assert ex.check_highest_floor(top, teachers, plan, images)
    other = min(h, key=h.get)
    assert not ex.check_highest_floor(other, teachers, plan, images)
    assert "task name" in ex.check_highest_floor("nothing", teachers, plan, images).message
    assert "task name" in ex.check_highest_floor(["a0"], teachers, plan, images).message
    _assert_unanswered(ex.check_highest_floor(None, teachers, plan, images))
    hot = float(np.mean(list(ex.floors(teachers, plan, images, 2.0).values())))
    assert hot >= float(np.mean(list(h.values()))), "a temperature above 1 raises the entropy floor"
    assert ex.check_temperature_floor(hot, teachers, plan, images, 2.0)
    _assert_refused_without_the_answer(ex.check_temperature_floor(hot * 0.9, teachers, plan, images, 2.0), hot)
    _assert_unanswered(ex.check_temperature_floor(None, teachers, plan, images))


def test_forced_params(nets):
    student, filters, teachers, plan, _ = nets
    truth = ex.forced_params(student, filters, teachers, plan, "b3")
    assert ex.check_forced_params(truth, student, filters, teachers, plan, "b3")
    _assert_refused_without_the_answer(ex.check_forced_params(truth - 1, student, filters, teachers, plan, "b3"), truth)
    assert "int" in ex.check_forced_params("many", student, filters, teachers, plan, "b3").message
    _assert_unanswered(ex.check_forced_params(None, student, filters, teachers, plan, "b3"))


def test_all_last_tolerance_and_depth_price():
    truth = ex.all_last_tolerance(RECORD)
    assert truth == pytest.approx(0.05)                 # b0: 0.15 at the last block against its minimum 0.10
    assert ex.check_all_last_tolerance(truth, RECORD)
    assert "still leaves" in ex.check_all_last_tolerance(0.02, RECORD).message
    assert "smaller" in ex.check_all_last_tolerance(0.1, RECORD).message
    _assert_unanswered(ex.check_all_last_tolerance(None, RECORD))
    assert ex.priced_branch_points(RECORD, 0.0) == RECORD["chosen_block"], "no price: Eq. 9"
    # μ = 0.015: a0 0.185/0.180/0.185 -> b2; a1 0.285/0.250/0.245 -> b3; b0 0.085/0.090/0.105 -> b1; b1 -> b3
    assert ex.priced_branch_points(RECORD, 0.015) == {"a0": "b2", "a1": "b3", "b0": "b1", "b1": "b3"}
    assert ex.check_depth_price(2, RECORD, 0.015)
    _assert_refused_without_the_answer(ex.check_depth_price(3, RECORD, 0.015), 2)
    assert ex.check_depth_price(4, RECORD, 1.0), "a large price sends every task to the last block"
    _assert_unanswered(ex.check_depth_price(None, RECORD, 0.015))


def test_soft_ce_excess_is_the_kl_divergence():
    truth = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert ex.soft_ce_excess(0.9, 0.5) == pytest.approx(truth) and ex.soft_ce_excess(0.3, 0.3) == 0
    assert ex.check_soft_ce_excess(truth)
    _assert_refused_without_the_answer(ex.check_soft_ce_excess(truth + 0.1), truth)
    whole = ex.check_soft_ce_excess(math.log(2))
    assert not whole and "whole loss" in whole.message
    _assert_unanswered(ex.check_soft_ce_excess(None))


def test_top1_of1():
    rng = np.random.default_rng(1)
    targets = torch.tensor((rng.random((60, 5)) < 0.3).astype(np.float32))
    scores = torch.tensor(rng.random((60, 5)), dtype=torch.float32)
    from kalib.metrics import topk_metrics
    truth = float(topk_metrics(scores.numpy(), targets.numpy(), k=1)["OF1"])
    assert ex.check_top1_of1(truth, scores, targets)
    _assert_refused_without_the_answer(ex.check_top1_of1(truth + 5, scores, targets), truth)
    assert "percent" in ex.check_top1_of1(truth / 100, scores, targets).message
    _assert_unanswered(ex.check_top1_of1(None, scores, targets))


def test_paired_interval():
    diffs = [0.8, 1.6, 0.9]
    _, (low, high) = interval(diffs)
    assert ex.check_paired_interval([low, high], diffs)
    assert "centred" in ex.check_paired_interval([low + 1, high + 1], diffs).message
    assert "half-width" in ex.check_paired_interval([low + 0.3, high - 0.3], diffs).message
    assert "pair" in ex.check_paired_interval(1.0, diffs).message
    _assert_unanswered(ex.check_paired_interval(None, diffs))
    assert ex.check_paired_interval([0, 1], [0.5]).ok is None


def test_top3_ceiling():
    targets = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
    truth = 100 * (1 + 3 + 2 + 0) / 12
    assert ex.top3_precision_ceiling(targets) == pytest.approx(truth)
    assert ex.check_top3_ceiling(truth, targets)
    _assert_refused_without_the_answer(ex.check_top3_ceiling(truth + 5, targets), truth)
    assert "percent" in ex.check_top3_ceiling(truth / 100, targets).message
    _assert_unanswered(ex.check_top3_ceiling(None, targets))


STUDY = crossover_summary()      # version 2's summary of crafted runs, analysed by kalib's report


def test_crossover_wins_read_the_studys_holm_adjusted_words():
    """`pair-1/all`: amalgamation-b4-2x − kd-2x ahead at 250, equivalent at 4,000; amalgamation-b4 − kd behind at
    4,000; `pair-1/custom`: inconclusive, once with its unadjusted interval above 0 (tests/crossover_summary.py)."""
    assert ex.crossover_pools(STUDY, "pair-1/all", "amalgamation-b4-2x", "kd-2x") == \
        {"ahead": [250], "behind": [], "equivalent": [4000], "inconclusive": []}
    assert ex.check_crossover_wins([250], STUDY) and ex.check_crossover_wins((250,), STUDY, "pair-1/all")
    equivalent = ex.check_crossover_wins([250, 4000], STUDY)
    assert not equivalent and "inside the equivalence margin" in equivalent.message
    behind = ex.check_crossover_wins([250, 4000], STUDY, "pair-1/all", "amalgamation-b4", "kd")
    assert not behind and "'behind'" in behind.message
    unadjusted = ex.check_crossover_wins([250], STUDY, "pair-1/custom")
    assert not unadjusted and "Holm-adjusted interval (adjusted_ci95)" in unadjusted.message
    inconclusive = ex.check_crossover_wins([250], STUDY, "pair-1/custom", "amalgamation-b4", "kd")
    assert not inconclusive and "contains 0 and reaches beyond the margin" in inconclusive.message
    assert ex.check_crossover_wins([], STUDY, "pair-1/custom", "amalgamation-b4", "kd")
    missed = ex.check_crossover_wins([], STUDY)
    assert not missed and "kind == 'verdict'" in missed.message and "250" not in missed.message
    assert "list" in ex.check_crossover_wins(500, STUDY).message
    _assert_unanswered(ex.check_crossover_wins(None, STUDY))
    for check in (ex.check_crossover_wins([500], None), ex.check_crossover_wins(None, None)):
        assert check.ok is None and "nothing to check against yet" in check.message and "make study" in check.message
    no_cell = ex.check_crossover_wins([250], STUDY, "pair-2/all")
    assert no_cell.ok is None and "no pair amalgamation-b4-2x − kd-2x in cell pair-2/all" in no_cell.message


def test_budget_choice_on_the_studys_means():
    """`pair-1/custom` at 250: KD's student has 700,000 parameters and 35 MMACs; amalgamation-b4(-2x) 720,000 and
    36 MMACs: inside 1.05 times KD's, not inside 1.0 times."""
    assert ex.crossover_budget(STUDY, "pair-1/custom") == (250, pytest.approx(735_000), pytest.approx(36.75e6))
    assert ex.budget_choice(STUDY, "pair-1/custom", 250, 735_000, 36.75e6) == "amalgamation-b4-2x"
    assert ex.budget_choice(STUDY, "pair-1/custom", 250, 700_000, 35e6) == "kd-2x"
    assert ex.budget_choice(STUDY, "pair-1/custom", 250, 1e5, 1e6) is None
    assert ex.check_budget_choice("amalgamation-b4-2x", STUDY)
    assert ex.check_budget_choice("amalgamation b4, fine-tuned to 2x MACs", STUDY, "pair-1/custom", 1.05)
    assert ex.check_budget_choice("kd-2x", STUDY, "pair-1/custom", 1.0)
    too_large = ex.check_budget_choice("amalgamation-b4-2x", STUDY, "pair-1/custom", 1.0)
    assert not too_large and "larger than the budget" in too_large.message
    assert "larger than the budget" in ex.check_budget_choice("teachers", STUDY).message
    _assert_refused_without_the_answer(ex.check_budget_choice("kd", STUDY), "amalgamation-b4-2x")
    assert "one arm" in ex.check_budget_choice("distillation", STUDY).message
    assert "no run of that arm in pair-1/custom at N = 250" in ex.check_budget_choice("kd-tol", STUDY).message
    _assert_unanswered(ex.check_budget_choice(None, STUDY))
    assert ex.check_budget_choice("kd", None).ok is None and "nothing to check against yet" in \
        ex.check_budget_choice("kd", None).message
    assert "no cell pair-2/custom" in ex.check_budget_choice("kd", STUDY, "pair-2/custom").message


def test_merged_map(nets):
    _, _, teachers, _, images = nets
    plan = task_plan(["a1", "b0"], LABELS)
    targets = torch.tensor([[1, 0], [0, 1], [1, 1]] * 8, dtype=torch.float32)
    truth = ex.merged_map(teachers, plan, images, targets)
    assert 0 < truth <= 100
    assert ex.check_merged_map(truth, teachers, plan, images, targets)
    _assert_refused_without_the_answer(ex.check_merged_map(truth - 5, teachers, plan, images, targets), truth)
    _assert_unanswered(ex.check_merged_map(None, teachers, plan, images, targets))
