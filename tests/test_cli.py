"""`python -m kalib`: help, pretrain/evaluate on the smoke preset, one-line errors with exit code 2."""

import json
import os
import subprocess
import sys

import pytest

from kalib.checkpoints import save_model
from kalib.models import build_backbone


def run(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "kalib", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd, timeout=600)


def test_help_lists_the_commands():
    out = run("--help")
    assert out.returncode == 0
    for command in ("pretrain", "evaluate"):
        assert command in out.stdout
    assert "--out" in run("pretrain", "--help").stdout


def test_pretrain_then_evaluate_on_the_smoke_preset(tmp_path, smoke_bench):
    out = run("pretrain", "--preset", "smoke", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    teacher = tmp_path / "teacher2-resnet18_narrow-1.pt"
    assert teacher.is_file() and (tmp_path / "generic-resnet18_narrow.pt").is_file()
    ev = run("evaluate", str(teacher), "--preset", "smoke", "--json")
    assert ev.returncode == 0, ev.stderr
    ap = json.loads(ev.stdout)
    labels = json.loads(teacher.with_suffix(".json").read_text())["labels"]
    assert set(ap) == set(labels) | {"mAP"} and 0 <= ap["mAP"] <= 100


def test_corrupt_checkpoint_is_one_line_and_exit_2(tmp_path, smoke_bench):
    path = save_model(tmp_path / "t.pt", build_backbone("resnet18_narrow", 2, width=8), labels=["coat", "bag"])
    path.write_bytes(b"not a zip")
    out = run("evaluate", str(path), "--preset", "smoke")
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "corrupt" in out.stderr and "Traceback" not in out.stderr
    assert path.is_file()   # nothing is deleted


def test_missing_data_source_is_one_line_and_exit_2(tmp_path):
    out = run("pretrain", "--preset", "smoke", "--out", str(tmp_path / "t"),
              env={"KALIB_FASHION_MNIST_DIR": str(tmp_path), "KALIB_CACHE": str(tmp_path / "cache")})
    assert out.returncode == 2
    assert "apt-get install dataset-fashion-mnist" in out.stderr and "Traceback" not in out.stderr


def test_debug_shows_the_traceback(tmp_path):
    out = run("--debug", "pretrain", "--preset", "smoke", "--out", str(tmp_path / "t"),
              env={"KALIB_FASHION_MNIST_DIR": str(tmp_path), "KALIB_CACHE": str(tmp_path / "cache")})
    assert out.returncode != 0 and "Traceback" in out.stderr


@pytest.mark.parametrize("args", [["pretrain", "--preset", "huge", "--out", "x"], ["nothing"]])
def test_bad_options_exit_2(args):
    assert run(*args).returncode == 2
