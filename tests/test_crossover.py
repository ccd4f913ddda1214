"""The crossover study (kalib.runs.crossover) on the smoke preset: its JSON, equal compute, tuning on
validation, paired statistics, and a killed study that resumes to the same numbers."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from test_amalgamate import LABELS, pool, tiny_nets
from torch.utils.flop_counter import FlopCounterMode

from kalib.method.blockwise import amalgamate
from kalib.method.filters import task_plan
from kalib.method.finetune import finetune
from kalib.method.student import init_student, make_filters
from kalib.method.targetnet import assemble
from kalib.report import crossover as report
from kalib.runs.budget import amalgamation_macs
from kalib.errors import NonFiniteLossError
from kalib.files import file_sha
from kalib.runs.crossover import STUDIES, amalgamation_budget, finished_or_run, grid_step, load_context, run_study, tuned
from kalib.train import Schedule

STUDY = STUDIES["smoke"]
REQUIRED = {"pool_sizes", "seeds", "teachers_test_map", "runs", "tuning", "paired", "verdict"}


def start(out: Path, smoke_teachers) -> Path:
    out.mkdir(parents=True)
    shutil.copytree(smoke_teachers, out / "teachers")
    return out


def run(out: Path) -> dict:
    return run_study(STUDY, out, out / "records", log=lambda *_: None)


@pytest.fixture(scope="module")
def study(smoke_teachers, tmp_path_factory):
    """One uninterrupted smoke study: (its directory, its summary)."""
    out = start(tmp_path_factory.mktemp("study") / "s", smoke_teachers)
    return out, run(out)


def test_the_json_has_every_key_and_one_run_per_arm_pool_and_seed(study):
    out, summary = study
    assert REQUIRED <= set(summary) and json.loads((out / "crossover.json").read_text()) == summary
    assert (out / "crossover.png").stat().st_size > 0 and summary["verdict"] in (out / "crossover.md").read_text()
    assert summary["pool_sizes"] == list(STUDY.pools) and summary["seeds"] == list(STUDY.seeds)
    keys = [(r["arm"], r["pool"], r["seed"]) for r in summary["runs"]]
    assert sorted(keys) == sorted((a, p, s) for a in STUDY.arms for p in STUDY.pools for s in STUDY.seeds)
    for r in summary["runs"]:
        assert {"val_map", "test_map", "train_macs", "params", "wall_s", "setting"} <= set(r) and "lr" in r["setting"]
        assert 0 <= r["test_map"] <= 100 and r["train_macs"] > 0 and r["params"] > 0
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    blocks = {(r["pool"], r["seed"]): r["blocks_wall_s"] for r in records if "blocks_wall_s" in r}
    assert summary["cost"]["records"] == len(records) > len(summary["runs"])          # the tuning grids too
    assert summary["cost"]["core_s"] == round(sum(r["cpu_s"] for r in records) + sum(blocks.values()))
    assert len(summary["tuning"]) == len(STUDY.arms) * len(STUDY.pools)


def test_kd_gets_the_amalgamation_s_compute_and_kd_2x_twice_that(study):
    runs = {(r["arm"], r["pool"], r["seed"]): r for r in study[1]["runs"]}
    for n in STUDY.pools:
        for seed in STUDY.seeds:
            budget = runs["amalgamation", n, seed]["train_macs"]
            assert abs(runs["kd", n, seed]["train_macs"] / budget - 1) <= 0.10
            assert 1.8 <= runs["kd-2x", n, seed]["train_macs"] / budget <= 2.2


def test_every_choice_is_the_validation_best_of_its_grid_and_applies_to_every_seed(study):
    summary = study[1]
    for t in summary["tuning"]:
        best = max(t["grid"], key=lambda g: g["val_map"])
        assert t["chosen"] == best["setting"]
        assert t["at_edge"] == (best in (t["grid"][0], t["grid"][-1]))
        chosen = [r for r in summary["runs"] if r["arm"] == t["arm"] and r["pool"] == t["pool"]]
        assert all(r["setting"] == t["chosen"] for r in chosen)


def test_paired_means_and_intervals_recompute_from_the_runs(study):
    summary = study[1]
    by = {(r["arm"], r["pool"], r["seed"]): r["test_map"] for r in summary["runs"]}
    assert {(e["pool"], e["a"], e["b"]) for e in summary["paired"]} >= {
        (p, "amalgamation", b) for p in STUDY.pools for b in ("kd", "kd-2x", "amalgamation-eq9")}
    for e in summary["paired"]:
        diffs = [by[e["a"], e["pool"], s] - by[e["b"], e["pool"], s] for s in STUDY.seeds]
        assert e["diffs"] == pytest.approx(diffs, abs=1e-3)
        half = stats.t.ppf(0.975, len(diffs) - 1) * np.std(diffs, ddof=1) / math.sqrt(len(diffs))
        assert e["mean"] == pytest.approx(np.mean(diffs), abs=1e-3)
        assert e["ci95"] == pytest.approx([np.mean(diffs) - half, np.mean(diffs) + half], abs=2e-3)
    assert summary["verdict"] == report.study_verdict(summary["paired"], report.failures(summary["runs"]))


def test_a_killed_study_resumes_to_the_same_numbers(study, smoke_teachers, tmp_path):
    """The amalgamation job of one pool and seed, killed with SIGKILL inside its block-wise training, resumes
    (after its finished blocks) to records equal to the uninterrupted study's; with the rest of that study's
    records beside them, the summary is the uninterrupted one."""
    out = start(tmp_path / "killed", smoke_teachers)
    part = ["--pools", "192", "--seeds", "0", "--arms", "amalgamation,amalgamation-eq9"]
    proc = subprocess.Popen([sys.executable, "-m", "kalib", "study", "crossover", "--preset", "smoke", "--out", str(out),
                             "--records", str(out / "records"), *part], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    blocks = out / "blocks" / "N192-s0" / "blocks"
    deadline = time.monotonic() + 300
    while len(list(blocks.glob("block*.json"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list(blocks.glob("block*.json")))
    assert 3 <= finished < 8 and not list((out / "records").glob("*.json")), "killed too late to test a resume"
    logs = []
    run_study(STUDY, out, out / "records", pools=[192], seeds=[0], arms=["amalgamation", "amalgamation-eq9"],
              log=logs.append)
    varying = ("wall_s", "cpu_s", "blocks_wall_s", "commit")
    strip = lambda r: {k: v for k, v in r.items() if k not in varying}
    resumed = sorted((out / "records").glob("*.json"))
    assert len(resumed) == 4                                      # 2 rules x 2 learning rates
    block_seconds = sum(json.loads(sorted(blocks.glob("block*.json"))[-1].read_text())["seconds"])
    for path in resumed:
        assert strip(json.loads(path.read_text())) == strip(json.loads((study[0] / "records" / path.name).read_text()))
        assert json.loads(path.read_text())["blocks_wall_s"] == pytest.approx(block_seconds, abs=0.1)  # killed ones too
    for path in (study[0] / "records").glob("*.json"):            # the rest of the study, as it was
        if not (out / "records" / path.name).exists():
            shutil.copyfile(path, out / "records" / path.name)
    summary = run(out)
    assert json.dumps({**summary, "runs": [strip(r) for r in summary["runs"]], "commits": None, "cost": None},
                      sort_keys=True) == \
        json.dumps({**study[1], "runs": [strip(r) for r in study[1]["runs"]], "commits": None, "cost": None},
                   sort_keys=True)


def test_a_run_that_diverges_keeps_its_budget_and_is_reported_as_a_failure(study, tmp_path):
    """A run whose loss diverges keeps what it knew before training (the KD arms' budget needs its MACs);
    at a chosen setting it is a failure of its arm: named in the verdict and the table, out of its pairs."""
    out, summary = study
    ctx = load_context(STUDY, out, tmp_path / "records", log=lambda *_: None)

    def train(partial, known):
        known.update({"params": 7, "train_macs": 123})
        raise NonFiniteLossError("finetune: loss became nan at epoch 1, step 3; lower the learning rate")
    record = finished_or_run(ctx, "amalgamation", 96, 1, 0.5, train)
    assert record["val_map"] is None and "loss became nan" in record["diverged"]
    assert (record["train_macs"], record["params"]) == (123, 7) and amalgamation_budget(ctx, 96, 1) == 123

    runs = [dict(r) for r in summary["runs"]]
    victim = next(r for r in runs if (r["arm"], r["pool"], r["seed"]) == ("amalgamation", 192, 1))
    victim.update(val_map=None, test_map=None)
    pairs = report.paired(runs)
    assert all(e["seeds"] == [0] for e in pairs if e["pool"] == 192 and "amalgamation" in (e["a"], e["b"]))
    assert all(e["seeds"] == [0, 1] for e in pairs if e["pool"] == 96)
    failed = report.failures(runs)
    assert failed == [{"arm": "amalgamation", "pool": 192, "seed": 1, "setting": victim["setting"]}]
    text = report.study_verdict(pairs, failed)
    assert text.endswith(f"1 run, amalgamation (tolerance rule) at 192 images, seed 1 (lr {victim['setting']['lr']:g}).")
    table = report.markdown({**summary, "runs": runs, "paired": pairs, "verdict": text})
    assert " (1 diverged) |" in table and text in table
    report.figure({**summary, "runs": runs}, tmp_path / "with-failure.png")
    assert (tmp_path / "with-failure.png").stat().st_size > 0


def test_a_grid_grows_until_its_best_is_inside():
    assert grid_step({0.02: 1.0, 0.05: 2.0, 0.1: 3.0}, 6) == 0.2
    assert grid_step({0.02: 3.0, 0.05: 2.0, 0.1: 1.0}, 6) == 0.01
    assert grid_step({0.02: 1.0, 0.05: 3.0, 0.1: 2.0}, 6) is None
    assert grid_step({0.02: 1.0, 0.05: 2.0, 0.1: 3.0}, 3) is None          # full: stays at the edge
    assert grid_step({0.02: 1.0, 0.05: 2.0, 0.1: None}, 6) is None         # 0.1 diverged: the best is inside
    assert grid_step({0.02: None, 0.05: 2.0, 0.1: 1.0}, 6) is None
    peak = 0.4
    runs = tuned(lambda lr: {"setting": {"lr": lr}, "val_map": -abs(math.log(lr / peak))}, [0.02, 0.05, 0.1], 6)
    assert [r["setting"]["lr"] for r in runs] == [0.02, 0.05, 0.1, 0.2, 0.4, 0.8]


def test_the_verdict_names_the_crossover_from_the_numbers():
    pairs = [{"pool": p, "a": "amalgamation", "b": "kd", "seeds": [0, 1, 2], "diffs": [], "mean": m, "ci95": ci}
             for p, m, ci in ((500, 2.0, [1.0, 3.0]), (2000, 0.2, [-0.5, 0.9]), (8000, -1.0, [-1.5, -0.5]))]
    text = report.verdict(pairs)
    assert "ahead of KD, same MACs on pools of 500 images (largest gap +2.0 mAP [+1.0, +3.0] at 500)" in text
    assert "behind KD, same MACs on pools of 8,000 images" in text and "level with" in text
    assert "crossover lies between 500 and 8,000 pool images: amalgamation (tolerance rule) pays below it" in text
    apart = report.verdict([{**e, "mean": 1.0, "ci95": [0.5, 1.5]} if e["pool"] == 2000 else e for e in pairs]
                           + [{**pairs[0], "pool": 250}])
    assert "ahead of KD, same MACs on pools of 250 to 2,000 images" in apart
    behind = report.verdict([{**e, "mean": -1.0, "ci95": [-2.0, -0.5]} if e["pool"] == 500 else e for e in pairs])
    assert "behind KD, same MACs on pools of 500 and 8,000 images" in behind   # 2,000 between them is level
    never = report.verdict([{**e, "mean": -1.0, "ci95": [-2.0, -0.5]} for e in pairs])
    assert "beats KD, same MACs at no pool size tried" in never
    eq9 = [{**e, "a": "amalgamation-eq9", "mean": -1.0, "ci95": [-2.0, -0.5]} for e in pairs]
    both = report.study_verdict(pairs + eq9)
    assert both.startswith(text + " Amalgamation (Eq. 9) is behind KD, same MACs on pools of 500 to 8,000 images")
    assert both.endswith("Amalgamation (Eq. 9) beats KD, same MACs at no pool size tried.")


def test_the_amalgamation_macs_match_the_counter_around_the_real_training():
    """kalib.runs.budget's count (per-image MACs times image passes) against FlopCounterMode wrapped around
    the real block-wise training and fine-tuning of tiny networks (soft targets given, so not counted)."""
    torch.manual_seed(0)
    generic, teachers = tiny_nets()
    plan = task_plan(None, LABELS)
    images = pool(24)
    student = init_student("generic", teachers, generic)
    filters = make_filters(student, teachers)
    soft = torch.randn(len(images), len(plan.tasks))
    epochs = [1, 1, 1, 1, 1, 1, 2, 2]
    with FlopCounterMode(display=False) as counter:
        amalgamate(student, teachers, plan, images, Schedule(epochs=1, batch_size=8), block_epochs=epochs,
                   heldout=8, soft=soft, filters=filters)
        target = assemble(student, filters, teachers, plan, [8] * len(plan.tasks))
        finetune(target, images[:16], soft[:16], Schedule(epochs=2, batch_size=8))
    counted = counter.get_total_flops() // 2
    macs = amalgamation_macs(student, filters, teachers, plan, images[:4], block_images=16, block_epochs=epochs,
                             block_batch=8, train_images=16, heldout=8,
                             target=assemble(student, filters, teachers, plan, [8] * len(plan.tasks)),
                             finetune_images=16, finetune_epochs=2, finetune_batch=8)
    assert macs["total"] - macs["soft_targets"] == pytest.approx(counted, rel=0.02)


def test_the_command_refuses_what_the_study_does_not_have(capsys, tmp_path):
    from kalib.cli import main
    assert main(["study", "crossover", "--preset", "smoke", "--out", str(tmp_path), "--pools", "96,999"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--pools 999: not part of the smoke study; choose from 96,192" in err


def test_a_record_s_key_ignores_the_preset_s_own_learning_rates():
    from types import SimpleNamespace

    from kalib.runs import crossover
    smoke = crossover.get_preset("smoke")
    retuned = smoke.replace(finetune=smoke.student.finetune.__class__(**{**smoke.student.finetune.__dict__, "lr": 0.3}),
                            eq9_finetune_lr=0.01, kd=smoke.baselines.kd.__class__(**{**smoke.baselines.kd.__dict__,
                                                                                      "lr": 0.7}))
    ctx = lambda p: SimpleNamespace(preset=p, bench=SimpleNamespace(spec=SimpleNamespace(key=lambda: "d")),
                                    teacher_key=["t"])
    for arm in ("amalgamation", "amalgamation-eq9", "kd", "kd-2x"):
        assert crossover.record_key(ctx(smoke), arm, 96, 0, 0.1) == crossover.record_key(ctx(retuned), arm, 96, 0, 0.1)
    assert crossover.record_key(ctx(smoke.replace(block_images=7)), "kd", 96, 0, 0.1) != \
        crossover.record_key(ctx(smoke), "kd", 96, 0, 0.1)


def test_teachers_retrained_to_the_same_weights_keep_the_records(study, tmp_path):
    """The records name the teachers by their weights (SHA-256 of each checkpoint), not by their metadata:
    teachers pretrained again on a new machine to the same weights, in other seconds, re-use every record."""
    before = load_context(STUDY, study[0], study[0] / "records", log=lambda *_: None).teacher_key
    again = start(tmp_path / "again", study[0] / "teachers")
    for meta in (again / "teachers").glob("set2-*.json"):
        meta.write_text(json.dumps({**json.loads(meta.read_text()), "seconds": 12345.6}))
    assert load_context(STUDY, again, again / "records", log=lambda *_: None).teacher_key == before
    assert before == [file_sha(p) for p in sorted((again / "teachers").glob("set2-*.pt"))]


def test_the_committed_study_is_compute_matched_tuned_inside_its_grids_and_recomputes():
    """figures/crossover.json, as committed: KD within ±10 % of the amalgamation arm's training MACs and
    KD-2x within 1.8–2.2× at every pool and seed; every chosen learning rate the validation best of its grid
    and inside it, and used by every seed; the paired means, intervals and the verdict recomputed from the
    runs."""
    summary = json.loads((Path(__file__).resolve().parents[1] / "figures" / "crossover.json").read_text())
    assert REQUIRED <= set(summary)
    runs = {(r["arm"], r["pool"], r["seed"]): r for r in summary["runs"]}
    assert len(runs) == len(summary["arms"]) * len(summary["pool_sizes"]) * len(summary["seeds"])
    for (arm, pool, seed), r in runs.items():
        low, high = {"kd": (0.9, 1.1), "kd-2x": (1.8, 2.2)}.get(arm, (0, math.inf))
        assert low <= r["train_macs"] / runs["amalgamation", pool, seed]["train_macs"] <= high, (arm, pool, seed)
    for t in summary["tuning"]:
        scored = [(g["val_map"] if g["val_map"] is not None else -math.inf, -g["setting"]["lr"]) for g in t["grid"]]
        best = t["grid"][scored.index(max(scored))]
        assert t["chosen"] == best["setting"] and not t["at_edge"] and best not in (t["grid"][0], t["grid"][-1])
        assert all(runs[t["arm"], t["pool"], s]["setting"] == t["chosen"] for s in summary["seeds"])
    failed = report.failures(summary["runs"])
    assert summary["paired"] == report.paired(summary["runs"]) and summary.get("failures", []) == failed
    for e in summary["paired"]:
        diffs = [runs[e["a"], e["pool"], s]["test_map"] - runs[e["b"], e["pool"], s]["test_map"] for s in e["seeds"]]
        half = stats.t.ppf(0.975, len(diffs) - 1) * np.std(diffs, ddof=1) / math.sqrt(len(diffs))
        assert e["mean"] == pytest.approx(np.mean(diffs), abs=2e-3)
        assert e["ci95"] == pytest.approx([np.mean(diffs) - half, np.mean(diffs) + half], abs=3e-3)
    assert summary["verdict"] == report.study_verdict(summary["paired"], failed)
