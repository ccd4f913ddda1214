"""Baselines (KD, Supervised, Ensemble), the efficiency counts, and the seeds' claims."""

import json
import re

import pytest
import torch
from torch import nn

from kalib.method.baselines import TeacherEnsemble, kd_student
from kalib.method.filters import task_plan
from kalib.method.student import freeze, init_student
from kalib.report import claims
from kalib.report.efficiency import count_macs, efficiency
from kalib.runs import baselines as baseline_runs
from kalib.runs import seeds
from kalib.runs.budget import run_macs
from kalib.runs.checkpoints import load_model
from kalib.runs.presets import get_preset
from kalib.runs.state import teacher_files

pytestmark = pytest.mark.usefixtures("one_thread")


class Guarded:
    """A benchmark whose listed attributes raise when read: proves a baseline never touches them."""

    def __init__(self, bench, forbidden):
        self._bench, self._forbidden = bench, set(forbidden)

    def __getattr__(self, name):
        if name in self._forbidden:
            raise AssertionError(f"the baseline read bench.{name}")
        return getattr(self._bench, name)


def test_kd_trains_at_the_main_targetnet_s_training_macs_and_reads_no_labels(smoke_bench, smoke_teachers,
                                                                              smoke_target, tmp_path):
    preset = get_preset("smoke")
    bench = Guarded(smoke_bench, ["train_labels", "pool_labels", "train_images"])
    logs = []
    main = smoke_target[1]
    record = baseline_runs.kd_run(preset, bench, smoke_teachers, tmp_path, seed=0, log=logs.append, main_record=main)
    assert record["row"] == "KD" and record["head"] == "teachers" and len(record["loss"]) == 1
    assert record["images"] == len(smoke_bench.pool_images) - preset.student.loss_slice
    assert abs(record["train_macs"] / record["budget_macs"] - 1) <= 0.10        # equal compute
    assert record["image_passes"] % preset.baselines.kd.batch_size == 0
    assert set(record["test_ap"]) == set(smoke_bench.label_names) | {"mAP"}
    teachers, plan, _, _ = baseline_runs._teachers(preset, smoke_teachers)
    macs = run_macs(preset, teachers, plan, [main["branch_block"][t] for t in plan.tasks], smoke_bench.pool_images[:8],
                    train_images=record["images"])
    assert record["budget_macs"] == macs["total"]                 # the budget is the main run's training MACs
    weights = (tmp_path / "KD.pt").read_bytes()
    again = baseline_runs.kd_run(preset, bench, smoke_teachers, tmp_path, seed=0, log=logs.append, main_record=main)
    assert again == record and any("re-using" in line for line in logs)
    assert (tmp_path / "KD.pt").read_bytes() == weights
    (tmp_path / "KD.pt").write_bytes(weights[:100])                     # truncated: trained again
    redone = baseline_runs.kd_run(preset, bench, smoke_teachers, tmp_path, seed=0, log=logs.append, main_record=main)
    assert redone["test_ap"] == record["test_ap"]                      # deterministic
    load_model(tmp_path / "KD.pt")


def test_the_kd_student_starts_with_the_teachers_head_rows(smoke_teachers):
    preset = get_preset("smoke")
    teachers, plan, _, _ = baseline_runs._teachers(preset, smoke_teachers)
    student = kd_student(init_student("teacher-mean", teachers), teachers, plan)
    for i, (n, j) in enumerate(zip(plan.teacher, plan.local)):
        assert torch.equal(student.head.fc.weight[i], teachers[n].head.fc.weight[j])
    torch.manual_seed(0)
    assert not torch.equal(kd_student(init_student("teacher-mean", teachers), teachers, plan, "random").head.fc.weight,
                           student.head.fc.weight)


def test_supervised_reads_only_the_train_split(smoke_bench, smoke_teachers, tmp_path):
    preset = get_preset("smoke")
    bench = Guarded(smoke_bench, ["pool_images", "pool_labels"])
    record = baseline_runs.supervised_run(preset, bench, smoke_teachers, tmp_path, seed=0, log=lambda *_: None)
    assert record["images"] == len(smoke_bench.train_images)
    assert record["schedule"]["epochs"] == preset.pretraining.teacher.epochs * 2     # as long as both teachers together
    net, meta = load_model(tmp_path / "Supervised.pt")
    assert net.num_classes == len(smoke_bench.label_names) and meta["record"]["seconds"] == record["seconds"]
    assert record["peak_rss_mb"] > 100                                   # its own peak resident memory, MiB


def test_ensemble_is_the_teachers_side_by_side(smoke_bench, smoke_teachers, smoke_target):
    preset = get_preset("smoke")
    _, paths, _ = teacher_files(preset, smoke_teachers, "2")
    loaded = [load_model(p) for p in paths]
    teachers = freeze([m for m, _ in loaded])
    plan = task_plan(None, [meta["labels"] for _, meta in loaded])
    x = torch.randn(4, 3, 64, 64)
    out = TeacherEnsemble(teachers, plan)(x)
    by_hand = torch.cat([teachers[0](x), teachers[1](x)], dim=1)     # C = A: teacher 1's labels, then 2's
    torch.testing.assert_close(out, by_hand)
    record = baseline_runs.ensemble_run(preset, smoke_bench, smoke_teachers)
    assert record["test_ap"] == pytest.approx(smoke_target[1]["teacher_ap"], abs=1e-3)


def test_mac_count_matches_a_hand_count():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5))
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    # conv: 8*8 outputs x 4 channels x (3*3*3) weights; linear: 256 x 5
    assert count_macs(net, image) == 8 * 8 * 4 * 27 + 256 * 5
    rows = efficiency({"a": net, "b": nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))},
                      image[None].repeat(4, 1, 1, 1), repeats=2)
    assert rows["a"]["params"] == 4 * 27 + 4 + 256 * 5 + 5 and rows["b"]["macs"] == 192 * 2
    assert all(r["latency_ms"] > 0 and r["ms_per_image"] > 0 for r in rows.values())


def _summary(target, teacher, kd, b4, t3, matching, unrelated, related, regret=0.5):
    return {"rows": {"Teacher": teacher, "Target (Eq. 9)": target, "KD": kd, "Target b4": b4, "Target-3 (Eq. 9)": t3},
            "eq9_ap_best": {"tasks": 20, "matching": matching}, "eq9_ap_regret": regret,
            "fig3_shared_blocks": {"unrelated": unrelated, "related": related}}


def test_claims_and_spread_on_hand_made_seeds(tmp_path):
    per_seed = {0: _summary(87.0, 86.0, 87.5, 85.0, 88.0, 20, 3, 1),
                1: _summary(85.0, 86.0, 84.0, 86.5, 84.0, 17, 1, 2),
                2: _summary(86.0, 86.0, 85.0, 85.0, 86.0, 20, 2, 2)}
    data = seeds.spread(per_seed)
    assert data["rows"]["Target (Eq. 9)"] == {"values": [87.0, 85.0, 86.0], "mean": 86.0, "std": 1.0}
    checked = {c["claim"].split(":")[0]: c["per_seed"] for c in claims.claims(data)}
    regret = checked.pop("AP regret of Eq. 9's choice")
    assert {s: v["value"] for s, v in regret.items()} == {"0": 0.5, "1": 0.5, "2": 0.5}
    holds = {name: [v["holds"] for v in verdicts.values()] for name, verdicts in checked.items()}
    assert holds["Target (Eq. 9) ≥ Teacher (mAP)"] == [True, False, True]         # 86.0 ≥ 86.0 holds
    assert holds["Target b4 ≥ Teacher"] == [False, True, False]
    assert holds["Eq. 9 sends every task to the block where its AP is best"] == [True, False, True]
    assert holds["The unrelated Fig. 3 pair shares more blocks than the related pair (Eq. 9)"] == [True, False, False]
    assert holds["Target-3 (Eq. 9) ≥ Target (Eq. 9)"] == [True, False, True]
    assert holds["Target (Eq. 9) ≥ KD"] == [False, True, True]
    assert checked["Eq. 9 sends every task to the block where its AP is best"]["1"]["numbers"] == "17 of 20 tasks"
    paths = claims.write_seed_files(data, tmp_path, "smoke")
    text = paths[2].read_text()
    assert "**does not hold** (85.0 vs 86.0)" in text and "| 2 of 3 |" in text
    assert json.loads(paths[0].read_text())["rows"]["KD"]["mean"] == pytest.approx(85.5)
    assert "| Target (Eq. 9) | 87.0 | 85.0 | 86.0 | 86.0 ± 1.0 |" in paths[1].read_text()
    assert "| 0.50 AP | 0.50 AP | 0.50 AP | mean 0.50 |" in text


def test_a_seed_changes_canvases_and_training_but_not_the_label_split():
    quick = get_preset("quick")
    assert seeds.seed_preset(quick, quick.seed) is quick
    other = seeds.seed_preset(quick, 1)
    assert other.seed == 1 and other.data.seed == 1 and other.data.key() != quick.data.key()
    assert other.labels == quick.labels
    assert seeds.seed_dir("OUT", quick, 0).as_posix() == "OUT"
    assert seeds.seed_dir("OUT", quick, 2).as_posix() == "OUT/seeds/seed-2"


def test_every_row_network_is_measured_and_the_compact_rows_are_smaller(smoke_bench, smoke_teachers, smoke_target,
                                                                        tmp_path):
    from kalib.report import results
    from kalib.runs import experiments
    preset = get_preset("smoke")
    (tmp_path / "table1").mkdir()
    (tmp_path / "table1" / "teachers").symlink_to(smoke_teachers)
    (tmp_path / "table1" / "amalgamation-2").symlink_to(smoke_target[0])
    nets = experiments.row_networks(preset, tmp_path)
    assert {"Teacher 1", "Teacher 2", "Ensemble", "Target b1", "Target b4", "Target (tolerance 0.02)"} <= set(nets)
    assert "Target" not in nets                              # every TargetNet is named by its rule
    assert "KD" not in nets                                  # no baseline run in this directory
    eff = efficiency(nets, smoke_bench.test_images[:8], repeats=1)
    assert eff["Ensemble"]["params"] == eff["Teacher 1"]["params"] + eff["Teacher 2"]["params"]
    assert eff["Ensemble"]["macs"] == eff["Teacher 1"]["macs"] + eff["Teacher 2"]["macs"]
    assert eff["Target b4"]["params"] < eff["Target b1"]["params"] <= eff["Ensemble"]["params"] * 1.01
    assert eff["Target b4"]["macs"] < eff["Ensemble"]["macs"]
    frame = results.efficiency_frame(eff, {"Target b4": {"mAP": 50.0}})
    assert frame.loc["Ensemble", "x Ensemble params"] == 1.0 and frame.loc["Target b4", "mAP"] == 50.0
    _, md = results.write_table(frame, tmp_path / "efficiency", "Efficiency", decimals=False)
    assert re.search(rf"\| Ensemble +\| +\| +{eff['Ensemble']['params']} +\| +1 +\|", md.read_text())


def test_reproduce_seeds_writes_the_spread_and_the_claims_before_the_notebooks(tmp_path, monkeypatch):
    from kalib import cli
    from kalib.runs import pipeline
    per_seed = {0: _summary(87.0, 86.0, 87.5, 85.0, 88.0, 20, 3, 1), 1: _summary(85.0, 86.0, 84.0, 86.5, 84.0, 17, 1, 2)}
    calls = []
    monkeypatch.setattr(seeds, "run_seed", lambda preset, seed, out, log=print, device=None: per_seed[seed])
    monkeypatch.setattr(pipeline, "reproduce", lambda **kw: calls.append(sorted(p.name for p in (tmp_path / "figures").iterdir())))
    assert cli.main(["reproduce", "--preset", "smoke", "--out", str(tmp_path), "--seeds", "0,1"]) == 0
    assert calls == [["claims.md", "seeds.json", "seeds.md"]]
    assert "| Target (Eq. 9) | 87.0 | 85.0 | 86.0 ± 1.4 |" in (tmp_path / "figures" / "seeds.md").read_text()
    with pytest.raises(SystemExit) as refused:
        cli.main(["reproduce", "--preset", "smoke", "--out", str(tmp_path), "--seeds", "0,0"])
    assert refused.value.code == 2
