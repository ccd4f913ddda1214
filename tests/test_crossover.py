"""The crossover study, version 2 (kalib.runs.crossover, kalib.report.crossover) on the smoke preset: every arm
of every cell, equal images, matched compute, tuning on validation, the merge, Holm-adjusted words, the decision
table, a killed study that resumes to the same numbers, and the code path unchanged since the protocol commit. The
checks that read only a summary read the committed quick study's figures/crossover.json too, once it exists."""

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from kalib.errors import ConfigError, LockedError, NonFiniteLossError
from kalib.report import crossover as report
from kalib.runs.crossover import STUDIES, load_context, run_study
from kalib.runs.crossover.protocol import AMALGAMATION_ARMS, KD_ARMS, Cell
from kalib.runs.crossover.records import best, finished_or_run, grid_step, read_record, record_key

STUDY = STUDIES["smoke"]
GOLDEN = Path(__file__).parent / "data" / "crossover-smoke.json"
ROOT = Path(__file__).parents[1]


def start(out: Path, smoke_teachers) -> Path:
    """A study directory whose pair-1 teachers are the session's smoke teachers (pair-2 is pretrained)."""
    out.mkdir(parents=True)
    shutil.copytree(smoke_teachers, out / "teachers-pair-1")
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread_also_in_commands(one_thread):
    """The study on one thread, in this process (tests/conftest.py's ``one_thread``) and in the commands it starts,
    as tests/data/crossover_golden.py made it (a different number of threads sums in another order: a smoke
    training then ends a few tenths of a point elsewhere)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")
    yield
    mp.undo()


@pytest.fixture(scope="module")
def study(one_thread_also_in_commands, smoke_teachers, tmp_path_factory):
    """One uninterrupted smoke study: (its directory, its summary)."""
    out = start(tmp_path_factory.mktemp("study") / "s", smoke_teachers)
    return out, run_study(STUDY, out, out / "records", log=lambda *_: None)


COMMITTED = ROOT / "figures" / "crossover.json"
# the committed summary of the quick study joins the smoke study's checks once `make study` has written it
SUMMARIES = ["smoke"] + (["committed"] if COMMITTED.exists() else [])


@pytest.fixture(params=SUMMARIES)
def summary(request):
    """(a study's summary, its protocol, its markdown table): the smoke study of this module, then the committed
    ``figures/crossover.json`` where it exists, each read against its own protocol."""
    if request.param == "smoke":
        out, summary = request.getfixturevalue("study")
        return summary, STUDY, (out / "crossover.md").read_text()
    summary = json.loads(COMMITTED.read_text())
    return summary, STUDIES[summary["preset"]], COMMITTED.with_suffix(".md").read_text()


def golden_view(records: Path) -> dict:
    """What the code path decides of every record: the numbers, not the seconds or the commit."""
    out = {}
    for path in sorted(records.rglob("*.json")):
        r = json.loads(path.read_text())
        out[str(path.relative_to(records))] = {k: r.get(k) for k in ("val_map", "test_map", "params", "inference_macs",
                                                                     "train_macs", "images_seen", "branch_block")}
    return out


def test_the_code_path_gives_the_numbers_of_the_protocol_commit(study):
    """Every smoke record equals what the protocol commit's code gave (tests/data/crossover-smoke.json, made with
    ``python tests/data/crossover_golden.py``): a change to the study's code path fails here until CODE_PATH is
    raised, which makes every committed record again (docs/design.md §9)."""
    now, then = golden_view(study[0] / "records"), json.loads(GOLDEN.read_text())
    assert sorted(now) == sorted(then)
    for name, numbers in then.items():
        for key, value in numbers.items():
            if isinstance(value, float):
                assert now[name][key] == pytest.approx(value, abs=0.05), (name, key)
            else:
                assert now[name][key] == value, (name, key)


def test_the_study_writes_its_summary_and_figure(study):
    out, summary = study
    assert json.loads((out / "crossover.json").read_text()) == summary and (out / "crossover.png").stat().st_size > 0


def test_every_arm_of_every_cell_pool_and_seed_is_in_the_summary(summary):
    summary, spec, _ = summary
    assert summary["version"] == 2 and summary["protocol"] == json.loads(json.dumps(spec.protocol()))
    for cell in spec.cells:
        runs = [r for r in summary["runs"] if (r["teachers"], r["task_set"]) == (cell.teachers, cell.task_set)]
        for pool in cell.pools:
            for seed in cell.seeds:
                arms = {r["arm"] for r in runs if r["pool"] == pool and r["seed"] == seed}
                assert set(spec.arms) - {"kd-tol", "kd-eq9"} <= arms, (cell, pool, seed)
        assert all(len(r["teachers_id"].split(":")[1].split("+")) == 2 for r in runs)
    custom = next(c for c in summary["cells"] if c["task_set"] == "custom")
    assert custom["labels"] == ["pullover", "shirt", "t-shirt", "two"]
    kd_params = {task: {r["params"] for r in summary["runs"] if r["task_set"] == task and r["arm"] == "kd"}
                 for task in ("all", "custom")}
    assert max(kd_params["custom"]) < min(kd_params["all"])          # a head of 4 rows instead of 20


def test_every_arm_sees_exactly_its_n_images(summary):
    for r in summary[0]["runs"]:
        assert r["images_seen"] == (0 if r["arm"] == "teachers" else r["pool"]), r


def test_the_held_out_slice_comes_out_of_n_and_the_soft_targets_are_paid_once(study):
    out = study[0]
    records = out / "records" / "pair-1" / "all"
    for arm in ("amalgamation", "amalgamation-eq9", "amalgamation-b4"):
        record = json.loads(next(records.glob(f"{arm}-N64-s0-*.json")).read_text())
        assert STUDY.heldout(64) == 6 and record["macs"]["soft_targets"] > 0
        # soft targets on all N; held-out losses only where a rule reads them
        assert (record["macs"]["heldout"] == 0) == (arm == "amalgamation-b4")
    kd = json.loads(next(records.glob("kd-N64-s0-*.json")).read_text())
    per_image = kd["macs"]["soft_targets"] / 64
    b4 = json.loads(next(records.glob("amalgamation-b4-N64-s0-*.json")).read_text())
    assert b4["macs"]["soft_targets"] == pytest.approx(per_image * 64, rel=1e-6)       # the same N images, once


def test_kd_budgets_are_within_ten_percent_of_the_arm_each_is_paired_with(summary):
    summary, spec, _ = summary
    runs = summary["runs"]
    by = {(r["teachers"], r["task_set"], r["arm"], r["pool"], r["seed"]): r for r in runs}
    checked = 0
    for (teachers, task, arm, pool, seed), r in by.items():
        if arm in KD_ARMS or arm == "amalgamation-b4-2x":
            source, factor = KD_ARMS.get(arm, ("amalgamation-b4", 2.0))
            target = factor * by[teachers, task, source, pool, seed]["train_macs"]
            assert r["train_macs"] == pytest.approx(target, rel=0.1), (arm, pool, seed)
            checked += 1
        if arm in ("amalgamation", "amalgamation-eq9"):
            own = r["train_macs"] / by[teachers, task, "amalgamation-b4", pool, seed]["train_macs"]
            kd = "kd-tol" if arm == "amalgamation" else "kd-eq9"
            assert ((teachers, task, kd, pool, seed) in by) == (abs(own - 1) > spec.budget_tolerance)
    assert checked >= 3 * sum(len(c.pools) * len(c.seeds) for c in spec.cells)      # kd, kd-2x, b4-2x everywhere


def test_every_choice_is_the_validation_best_of_its_grid_and_applies_to_every_seed(summary):
    summary, spec, _ = summary
    assert summary["tuning"]
    for t in summary["tuning"]:
        ranked = [g for g in t["grid"] if g["val_map"] is not None]
        assert t["chosen"] in [g["setting"] for g in t["grid"]]
        chosen = next(g for g in t["grid"] if g["setting"] == t["chosen"])
        assert chosen["val_map"] == max(g["val_map"] for g in ranked)
        runs = [r for r in summary["runs"] if (r["teachers"], r["task_set"], r["arm"], r["pool"]) ==
                (t["teachers"], t["task_set"], t["arm"], t["pool"])]
        assert runs and all(r["setting"] == t["chosen"] for r in runs)
    kd = [t for t in summary["tuning"] if t["arm"] == "kd"]
    assert all({g["setting"]["start"] for g in t["grid"]} == {"teacher-mean", "merge", "random-head"} for t in kd)
    merge = [t for t in summary["tuning"] if t["arm"] == "merge"]
    assert all([g["setting"]["lam"] for g in t["grid"]] == list(spec.grids.merge_lambdas) for t in merge)
    untuned = [r for r in summary["runs"] if r["teachers"] == "pair-2" and r["arm"] != "teachers"]
    tuned = {(t["task_set"], t["arm"], t["pool"]): t["chosen"] for t in summary["tuning"]}
    for r in untuned:
        arm = "kd" if r["arm"] in ("kd-tol", "kd-eq9") else r["arm"]
        assert r["setting"] == tuned[r["task_set"], arm, r["pool"]], r


def test_the_pairs_recompute_from_the_runs_with_holm_adjusted_intervals(summary):
    summary, spec, _ = summary
    for cell in summary["cells"]:
        family = [e for e in summary["paired"] if (e["teachers"], e["task_set"]) == (cell["teachers"], cell["task_set"])]
        assert all(e["family_size"] == len(family) for e in family)
        assert len(family) == 10 * len(cell["pools"])        # 7 pairs the verdict reads, 3 decision pairs per pool
        runs = [r for r in summary["runs"] if (r["teachers"], r["task_set"]) == (cell["teachers"], cell["task_set"])]
        for e in family:
            again = report.pair(runs, e["a"], e["b"], e["pool"], e["kind"])
            assert again["diffs"] == e["diffs"] and again["mean"] == e["mean"]
        again = report.holm([report.pair(runs, e["a"], e["b"], e["pool"], e["kind"]) for e in family],
                            spec.alpha, spec.margin)
        assert json.dumps([a["adjusted_ci95"] for a in again]) == json.dumps([e["adjusted_ci95"] for e in family])
        assert [a["word"] for a in again] == [e["word"] for e in family]
        assert summary["verdict"][f"{cell['teachers']}/{cell['task_set']}"] == \
            report.cell_verdict(family, report.failures(runs), cell, spec.margin)


def test_holm_adjusts_each_interval_by_its_rank_and_words_follow_the_intervals():
    """Three pairs with hand-computed p-values: the smallest is tested at α/3, the next at α/2; once Holm keeps
    one, every later pair gets that level (here α/2)."""
    clear = {"diffs": [3.0, 3.1, 2.9, 3.05, 2.95]}      # far from 0
    small = {"diffs": [0.1, -0.1, 0.05, -0.05, 0.0]}    # around 0, tight
    wide = {"diffs": [1.0, -1.5, 2.0, -0.5, 0.2]}       # around 0, wide
    entries = [{**e, "p": report.p_value(e["diffs"])} for e in (wide, clear, small)]
    report.holm(entries, 0.05, 0.5)
    assert entries[1]["adjusted_level"] == pytest.approx(0.05 / 3) and entries[1]["word"] == "ahead"
    assert entries[0]["adjusted_level"] == pytest.approx(0.05 / 2)              # kept first, rank 2
    assert entries[2]["adjusted_level"] == pytest.approx(0.05 / 2)              # after the kept one
    assert entries[2]["word"] == "equivalent" and entries[0]["word"] == "inconclusive"
    _, ci = report.interval(clear["diffs"], 0.05 / 3)
    assert entries[1]["adjusted_ci95"] == pytest.approx(ci, abs=1e-3)
    assert report.word([-3.0, -1.0], 0.5) == "behind" and report.word([-0.4, 0.45], 0.5) == "equivalent"
    assert report.word([math.nan, math.nan], 0.5) == "inconclusive"
    assert report.p_value([1.0, 1.0]) == 0.0 and report.p_value([0.0, 0.0]) == 1.0 and report.p_value([2.0]) == 1.0


def test_the_verdict_sentence_groups_pools_by_word_and_names_kd_s_budget():
    entries = [{"a": "amalgamation", "b": "kd@amalgamation", "kind": "verdict", "pool": p, "mean": m,
                "adjusted_ci95": ci, "word": w, "seeds": [0, 1, 2], "b_arms": b}
               for p, m, ci, w, b in ((250, 3.0, [2.0, 4.0], "ahead", ["kd-tol"]),
                                      (500, 2.0, [1.0, 3.0], "ahead", ["kd-tol"]),
                                      (1000, -0.1, [-0.3, 0.2], "equivalent", ["kd"]),
                                      (4000, -1.0, [-2.0, -0.4], "behind", ["kd"]))]
    text = report.pair_sentence(entries)
    assert text == ("ahead at 250 and 500 (largest +3.0 mAP [+2.0, +4.0] at 250); behind at 4,000 (-1.0 mAP "
                    "[-2.0, -0.4] at 4,000); equivalent at 1,000 (-0.1 mAP [-0.3, +0.2] at 1,000)")
    cell = {"teachers": "pair-1", "task_set": "all", "labels": ["x"] * 20}
    verdict = report.cell_verdict(entries, [{"arm": "kd", "pool": 250, "seed": 2}], cell, 0.5)
    assert "Holm-adjusted for the 4 pairs of pair-1 on 20 labels (all)" in verdict
    assert "Amalgamation (tolerance rule) against KD at its MACs (budget: kd, kd-tol): ahead at 250 and 500" in verdict
    assert verdict.endswith("Diverged at the chosen setting, counted with the mAP of its start: KD, b4's MACs at "
                            "250, seed 2.")


def test_the_answer_in_brief_groups_every_cell_and_pool_by_its_word():
    entries = [{"teachers": t, "task_set": c, "pool": n, "word": w}
               for t, c, n, w in (("pair-1", "all", 250, "inconclusive"), ("pair-1", "all", 500, "behind"),
                                  ("pair-1", "all", 1000, "behind"), ("pair-2", "all", 250, "behind"),
                                  ("pair-1", "custom", 250, "equivalent"))]
    assert report._words(entries) == ("ahead nowhere; behind in 3 of 5 (pair-1/all N = 500, 1,000; pair-2/all N = "
                                      "250); equivalent in 1 (pair-1/custom N = 250); inconclusive in 1 (pair-1/all "
                                      "N = 250)")
    entries[0]["word"] = "ahead"
    assert report._words(entries).startswith("ahead in 1 of 5 (pair-1/all N = 250); behind in 3 (")


def test_runs_far_below_their_arms_median_are_named_with_their_setting():
    runs = [{"teachers": "pair-1", "task_set": "custom", "arm": "amalgamation-b4-2x", "pool": 1000, "seed": seed,
             "test_map": value, "setting": {"lr": 0.05}}
            for seed, value in enumerate((72.0, 71.0, 73.0, 40.0, 61.5))]
    assert report.far_below({"runs": runs}) == (
        "Runs more than 10 mAP below their arm's median at the chosen setting, their loss finite, so they count in "
        "the pairs as they are and widen their intervals: `amalgamation-b4-2x` in pair-1/custom at N = 1,000: seed 3 "
        "40.0 (median 71.0; lr 0.05).")
    runs[3]["test_map"] = None                       # diverged: the verdict names it
    assert report.far_below({"runs": runs}) == ""


def test_the_answer_in_brief_says_what_the_pairs_say(summary):
    """Each sentence of the answer counts the words of its pairs as the summary gives them, and it says that
    amalgamation wins nowhere exactly when neither the same-size pair nor the pair at twice the MACs is ahead
    anywhere; the study's markdown and the README quote carry it."""
    summary, _, md = summary
    lines = report.answer(summary)
    verdict = [e for e in summary["paired"] if e["kind"] == "verdict"]
    for line, (a, b) in zip(lines[:2], report.COMPARISONS[:2]):
        mine = [e for e in verdict if (e["a"], e["b"]) == (a, b)]
        counts = {w: sum(e["word"] == w for e in mine) for w in ("ahead", "behind", "equivalent", "inconclusive")}
        assert ("ahead nowhere" in line) == (counts["ahead"] == 0)
        assert all(f"{w} in {n}" in line for w, n in counts.items() if n), line
    none_ahead = not any(e["word"] == "ahead" for e in verdict if (e["a"], e["b"]) in report.COMPARISONS[:2])
    assert ("block-wise amalgamation wins nowhere" in lines[-1]) == none_ahead
    assert all(f"- {line}" in md for line in lines)
    assert report.readme_quote(summary).startswith("\n".join(f"- {line}" for line in lines))


def test_the_decision_table_picks_the_best_candidate_of_each_question(summary):
    """Among the arms run at every seed of the cell (a one-seed mean is not ranked against five-seed means)."""
    summary, _, markdown = summary
    for row in summary["decision"]:
        runs = [r for r in summary["runs"] if (r["teachers"], r["task_set"], r["pool"]) ==
                (row["teachers"], row["task_set"], row["pool"])]
        seeds = set(next(c["seeds"] for c in summary["cells"]
                         if (c["teachers"], c["task_set"]) == (row["teachers"], row["task_set"])))
        every_seed = {a for a in {r["arm"] for r in runs} if {r["seed"] for r in runs if r["arm"] == a} >= seeds}
        table = {a: v for a, v in report.means(runs, row["pool"]).items() if a in every_seed}   # kd-tol may not be
        allowed = report.candidates(table, row["criterion"])
        assert row["choice"] == allowed[0] and table[row["choice"]]["test_map"] == max(table[a]["test_map"] for a in allowed)
        if row["criterion"] == "no-training":
            assert set(allowed) <= {"teachers", "merge"}
        if row["criterion"] == "size":
            assert "teachers" not in allowed and "kd" in allowed and "merge" in allowed
    assert {r["criterion"] for r in summary["decision"]} == {"accuracy", "size", "no-training"}
    assert "| the network must be the KD student's size |" in markdown


def test_a_diverged_run_keeps_its_budget_and_counts_with_its_start_s_map(study, tmp_path):
    out, summary = study
    ctx = load_context(STUDY, STUDY.cells[0], out, tmp_path / "records", log=lambda *_: None)
    start_net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(len(ctx.plan.tasks)))
    start_net(torch.zeros(1, 3, 64, 64))

    def train(partial, known):
        known.values.update({"params": 7, "train_macs": 123})
        known.start = start_net
        raise NonFiniteLossError("finetune: loss became nan at epoch 1, step 3; lower the learning rate")
    record = finished_or_run(ctx, "amalgamation", 64, 1, {"lr": 0.5}, train)
    assert record["val_map"] is None and "loss became nan" in record["diverged"]
    assert (record["train_macs"], record["params"]) == (123, 7) and record["start_test_map"] is not None
    runs = [dict(r) for r in summary["runs"]]
    victim = next(r for r in runs if (r["teachers"], r["task_set"], r["arm"], r["pool"], r["seed"]) ==
                  ("pair-1", "all", "amalgamation-b4", 64, 1))
    victim.update(test_map=None, start_test_map=1.0)
    entry = report.pair([r for r in runs if (r["teachers"], r["task_set"]) == ("pair-1", "all")], "amalgamation-b4",
                        "kd", 64)                                      # one cell's runs, as report.analyse passes them
    assert entry["failed"] == [1] and entry["seeds"] == [0, 1]
    assert entry["diffs"][1] == pytest.approx(1.0 - next(r["test_map"] for r in runs if (r["teachers"], r["task_set"],
                                              r["arm"], r["pool"], r["seed"]) == ("pair-1", "all", "kd", 64, 1)), abs=1e-3)
    analysis = report.analyse(runs, summary["cells"], STUDY.margin, STUDY.alpha)
    assert analysis["failures"] == [{"teachers": "pair-1", "task_set": "all", "arm": "amalgamation-b4", "pool": 64,
                                     "seed": 1, "setting": victim["setting"]}]
    assert "Diverged at the chosen setting" in analysis["verdict"]["pair-1/all"]


def resume_when_unlocked(resume, seconds: float = 10.0):
    """``resume()``, retried while it finds the study's lock held: right after the kill, the lock was seen held
    for a moment when no process had its file open any more (about one run in two at pool 64). Waiting instead
    until no live process of the killed group was left did not suffice: a fresh clone met the lock held after it."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return resume()
        except LockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_killed_study_resumes_to_the_same_numbers(study, smoke_teachers, tmp_path):
    """One amalgamation job, killed with SIGKILL inside its block-wise training, resumes after its finished blocks
    to records equal to the uninterrupted study's."""
    out = start(tmp_path / "killed", smoke_teachers)
    shutil.copytree(study[0] / "teachers-pair-2", out / "teachers-pair-2")
    part = ["--pools", "64", "--seeds", "0", "--arms", "amalgamation-b4"]
    proc = subprocess.Popen([sys.executable, "-m", "kalib", "study", "crossover", "--preset", "smoke", "--out", str(out),
                             *part], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    blocks = out / "cache" / "pair-1" / "all" / "blocks" / "N64-s0" / "blocks"
    deadline = time.monotonic() + 300
    while len(list(blocks.glob("block*.json"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= len(list(blocks.glob("block*.json"))) < 8, "killed too late to test a resume"
    resume_when_unlocked(lambda: run_study(STUDY, out, out / "records", pools=[64], seeds=[0], arms=["amalgamation-b4"],
                                           log=lambda *_: None))
    resumed = sorted((out / "records" / "pair-1" / "all").glob("*.json"))
    assert [p.name for p in resumed] == [f"amalgamation-b4-N64-s0-lr{lr:g}.json" for lr in (0.02, 0.05)]
    varying = ("wall_s", "cpu_s", "blocks_cpu_s", "commit")
    for path in resumed:
        mine, theirs = (json.loads(p.read_text()) for p in (path, study[0] / "records" / "pair-1" / "all" / path.name))
        assert {k: v for k, v in mine.items() if k not in varying} == {k: v for k, v in theirs.items() if k not in varying}


def test_a_resumed_study_estimates_the_time_left_from_the_jobs_it_trains(study, tmp_path):
    """A study that finds most of its records re-reads those jobs in a moment; its progress lines say the time left
    is not known until a job of its own has trained (they said "about 0 min left" half-way through)."""
    out = tmp_path / "resumed"
    shutil.copytree(study[0], out)
    for path in (out / "records" / "pair-1" / "custom").glob("kd*-N64-s1-*.json"):
        path.unlink()
    lines = []
    run_study(STUDY, out, out / "records", pools=[64], seeds=[1], arms=list(STUDY.arms), log=lines.append)
    progress = [line for line in lines if "% of the work done" in line]
    fresh = next(i for i, line in enumerate(progress) if "pair-1/custom kd N=64 seed 1" in line)
    assert all(line.endswith("time left not known yet (every job so far found its records)") for line in progress[:fresh])
    assert all(line.endswith(" min left") or line.endswith("100% of the work done, nothing left")
               for line in progress[fresh:])
    assert progress[-1].endswith("100% of the work done, nothing left")


def test_one_study_at_a_time_writes_a_directory(study, tmp_path):
    from kalib.runs.locks import run_lock
    out = tmp_path / "locked"
    with run_lock(out, "study", what="another study"):
        with pytest.raises(Exception, match="another study|in use|running"):
            run_study(STUDY, out, out / "records", log=lambda *_: None)


def test_a_damaged_record_is_named_with_its_fix(tmp_path):
    path = tmp_path / "kd-N64-s0-lr0.1-start-merge.json"
    path.write_text(json.dumps({"key": "abc", "arm": "kd"}))
    with pytest.raises(ConfigError, match=f"{path} is not a complete crossover record .*val_map.*delete it"):
        read_record(path, "abc")
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        read_record(path, "abc")
    assert read_record(tmp_path / "missing.json", "abc") is None


@pytest.mark.parametrize("argv, message", [
    (["--pools", "64,999"], "--pools 999: not part of the smoke study; choose from 64"),
    (["--pools", ","], "names no value"),
    (["--pools", "64,64"], "repeats a value"),
    (["--arms", "kd,nothing"], "--arms nothing: not part of the smoke study"),
])
def test_the_command_refuses_what_the_study_does_not_have(capsys, tmp_path, argv, message):
    from kalib.cli import main
    try:
        code = main(["study", "crossover", "--preset", "smoke", "--out", str(tmp_path / "o"), *argv])
    except SystemExit as exit_:             # argparse refuses a malformed value itself
        code = exit_.code
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) <= 2


def test_an_arm_whose_dependencies_have_no_records_is_refused_before_any_work(study, tmp_path):
    out = start(tmp_path / "deps", study[0] / "teachers-pair-1")
    shutil.copytree(study[0] / "teachers-pair-2", out / "teachers-pair-2")
    with pytest.raises(ConfigError, match="--arms kd needs the records of amalgamation-b4"):
        run_study(STUDY, out, out / "records", arms=["kd"], log=lambda *_: None)
    assert not (out / "records").exists() or not list((out / "records").rglob("*.json"))
    # a fresh directory: refused before any teacher is pretrained
    with pytest.raises(ConfigError, match="--arms kd needs the records of amalgamation-b4"):
        run_study(STUDY, tmp_path / "fresh", tmp_path / "fresh" / "records", arms=["kd"],
                  log=lambda line: pytest.fail(f"worked before refusing: {line}"))
    assert not list((tmp_path / "fresh").rglob("*.pt"))
    # records that are there by name but of other settings (their key) do not count either
    other = tmp_path / "other-records"
    for path in (study[0] / "records").rglob("*.json"):
        if path.name.startswith(("amalgamation-b4-", "merge-")):
            record = json.loads(path.read_text())
            (other / path.parent.relative_to(study[0] / "records")).mkdir(parents=True, exist_ok=True)
            (other / path.relative_to(study[0] / "records")).write_text(json.dumps({**record, "key": "other"}))
    with pytest.raises(ConfigError, match="--arms kd needs the records of amalgamation-b4"):
        run_study(STUDY, out, other, arms=["kd"], log=lambda *_: None)


def test_a_grid_grows_until_its_best_is_inside_and_ties_go_to_the_smaller_setting():
    assert grid_step({0.02: 1.0, 0.05: 2.0, 0.1: 3.0}, 6) == 0.2
    assert grid_step({0.02: 3.0, 0.05: 2.0, 0.1: 1.0}, 6) == 0.01
    assert grid_step({0.02: 1.0, 0.05: 3.0, 0.1: 2.0}, 6) is None
    assert grid_step({0.02: 1.0, 0.05: 2.0, 0.1: None}, 6) is None
    records = [{"setting": {"lam": 0.7}, "val_map": 5.0}, {"setting": {"lam": 0.5}, "val_map": 5.0},
               {"setting": {"lam": 1.0}, "val_map": None}]
    assert best(records)["setting"] == {"lam": 0.5}


def test_the_protocol_refuses_an_untuned_cell_without_a_tuned_one():
    from kalib.runs.crossover import Study
    with pytest.raises(ConfigError, match="is not tuned"):
        Study("smoke", cells=(Cell("pair-2", "all", (64,), (0,), tuned=False),))
    assert set(STUDY.arms) == {"teachers", "merge", *AMALGAMATION_ARMS, *KD_ARMS, "amalgamation-b4-2x"}


def test_under_torchrun_rank_0_writes_one_record_that_every_rank_returns(study, tmp_path):
    """Two forked gloo ranks run the same merge: one record, rank 0's, whose key names the two processes (their
    numbers are not one process's), returned on both ranks; a second call re-uses it on both."""
    from test_distributed import on_two_ranks
    ctx = load_context(STUDY, STUDY.cells[0], study[0], tmp_path / "records", log=lambda *_: None)

    def run():
        from kalib import distributed

        def train(partial, known):
            return {"val_map": float(distributed.rank()), "test_map": 1.0, "params": 1, "inference_macs": 1,
                    "train_macs": 1, "images_seen": 64}
        first = finished_or_run(ctx, "merge", 64, 0, {"lam": 0.5}, train)
        again = finished_or_run(ctx, "merge", 64, 0, {"lam": 0.5}, lambda p, k: pytest.fail("trained again"))
        return first, again
    (first0, again0), (first1, again1) = on_two_ranks(run, tmp_path)
    assert first0 == first1 == again0 == again1 and first0["val_map"] == 0.0
    assert [p.name for p in (tmp_path / "records").rglob("*.json")] == ["merge-N64-s0-lam0.5.json"]
    assert first0["key"] != record_key(ctx, "merge", 64, 0, {"lam": 0.5})     # one process's key: no "processes"
