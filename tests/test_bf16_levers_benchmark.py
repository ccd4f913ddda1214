"""benchmarks/bf16_levers.py runs end to end in its smoke size: every variant of every asked block, the profile."""
import json
import runpy
from pathlib import Path

import pytest
import torch

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "bf16_levers.py"

pytestmark = pytest.mark.usefixtures("one_thread")


def test_smoke_run_times_every_variant_and_leaves_the_filters_as_they_were(tmp_path):
    ns = runpy.run_path(str(BENCHMARK))
    from kalib.method.filters import TeacherFilter
    kept = TeacherFilter.channel_weights
    out = tmp_path / "levers.json"
    ns["main"](["--smoke", "--threads", "1", "--blocks", "b4_2", "--profile", "b4_2", "--json", str(out)])
    result = json.loads(out.read_text())
    assert list(result["blocks"]) == ["b4_2"]
    for row in result["blocks"].values():
        assert set(row) == set(ns["VARIANTS"]) and all(v > 0 for v in row.values())
    assert any("convolution" in op for op in result["profile"]["bf16"])
    assert TeacherFilter.channel_weights is kept


def test_the_levers_change_dtypes_as_named():
    ns = runpy.run_path(str(BENCHMARK))
    head = torch.nn.Sequential(torch.nn.Linear(4, 2))
    teacher = torch.nn.Module()
    teacher.head, teacher.body = head, torch.nn.Linear(4, 4)
    bf16, = ns["teacher_copies"]([teacher], True, True)
    assert bf16.body.weight.dtype == torch.bfloat16 and head[0].weight.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bf16.head(torch.randn(3, 4, dtype=torch.bfloat16)).dtype == torch.float32
    assert ns["teacher_copies"]([teacher], False, False)[0] is teacher
