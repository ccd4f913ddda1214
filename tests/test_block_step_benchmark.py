"""benchmarks/block_step.py runs end to end in its smoke size (at the width it is given) and reports every
block it was asked for."""
import json
import runpy
from pathlib import Path

import pytest

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "block_step.py"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_smoke_run_reports_floor_step_and_naive_per_block(tmp_path):
    main = runpy.run_path(str(BENCHMARK))["main"]
    out = tmp_path / "block_step.json"
    main(["--smoke", "--width", "12", "--threads", "1", "--blocks", "b1_1,b4_2", "--json", str(out)])
    result = json.loads(out.read_text())
    assert result["arch_kwargs"]["width"] == 12                     # --width sets the base width
    assert list(result["blocks"]) == ["b1_1", "b4_2"]
    for block in result["blocks"].values():
        for part in ("floor", "step", "naive"):
            assert block[part]["images_per_s"] > 0
        for ratio in ("step_over_floor", "naive_over_step", "naive_over_step_with_cache"):
            assert block[ratio] > 0
    assert result["teacher"]["flop_ratio"] > 0
    assert all(f["images_per_s"] > 0 for f in result["finetune"].values())
