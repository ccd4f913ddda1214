"""benchmarks/side_run_order.py runs both start orders on the smoke preset, and they give the same results (on two
rows, one side amalgamation and one baseline, so that the orders differ; the full table is the benchmark's)."""
import json
import runpy
import shutil
from pathlib import Path

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "side_run_order.py"


def test_both_orders_run_every_job_and_agree(smoke_teachers, smoke_target, tmp_path):
    teachers = tmp_path / "teachers"
    shutil.copytree(smoke_teachers, teachers)
    out = tmp_path / "side_order.json"
    runpy.run_path(str(BENCHMARK))["main"](["--preset", "smoke", "--teachers", str(teachers),
                                            "--work", str(tmp_path / "work"), "--json", str(out),
                                            "--main", str(smoke_target[0]),
                                            "--rows", "Merge", "Target-3"])
    result = json.loads(out.read_text())
    before, now = result["orders"].values()
    assert before["started"] == ["Merge", "Target-3"]
    assert now["started"] == ["Target-3", "Merge"]
    for order in (before, now):
        assert set(order["ended_s"]) == set(order["started"])
        assert 0 < max(order["ended_s"].values()) <= order["wall_s"]
    assert result["same_results"] and before["test_mAP"] == now["test_mAP"]
    assert result["ratio"] == round(before["wall_s"] / now["wall_s"], 3)
