"""Training precision (issue 28) in the runs: an amalgamation in bf16 and in fp32 (fp32's fingerprint
without a precision, as before; bf16 its own; the recorded APs those of float32 scores), the crossover
study's keys, and ``--precision`` of the commands that train."""

import dataclasses
import json
import shutil
from types import SimpleNamespace

import pytest
import torch

from kalib.cli import _overrides, _preset, build_parser, main
from kalib.errors import ConfigMismatchError
from kalib.metrics import ap_dict
from kalib.runs.checkpoints import load_target
from kalib.runs.config import digest, override
from kalib.runs.presets import get_preset
from kalib.train import predict

pytestmark = pytest.mark.usefixtures("one_thread")


def test_amalgamation_fingerprints_records_and_evaluation_by_precision(smoke_bench, smoke_teachers, smoke_target,
                                                                       tmp_path):
    from kalib.runs.amalgamation import run
    fp32_dir, fp32 = smoke_target                         # the smoke preset: fp32
    teachers = tmp_path / "teachers"
    shutil.copytree(smoke_teachers, teachers)
    preset = override(get_preset("smoke"), ["precision=bf16"])
    bf16 = run(smoke_bench, preset, teachers, tmp_path / "bf16", log=lambda *_: None)
    assert fp32["precision"] == "fp32" and bf16["precision"] == "bf16"
    assert bf16["finetune_loss"] != fp32["finetune_loss"]
    assert bf16["block_train_loss"] != fp32["block_train_loss"]
    # fp32: the settings behind the fingerprint have no precision (the fingerprint of before); bf16: they do
    configs = {name: json.loads((d / "blocks" / "config.json").read_text())
               for name, d in (("fp32", fp32_dir), ("bf16", tmp_path / "bf16"))}
    assert "precision" not in configs["fp32"]["settings"] and configs["bf16"]["settings"]["precision"] == "bf16"
    for config in configs.values():
        assert config["fingerprint"] == digest(config["settings"])
    assert {k: v for k, v in configs["bf16"]["settings"].items() if k != "precision"} == configs["fp32"]["settings"]
    assert configs["bf16"]["fingerprint"] != configs["fp32"]["fingerprint"]
    # the fp32 blocks are not resumed by a bf16 run and vice versa
    with pytest.raises(ConfigMismatchError):
        run(smoke_bench, preset, teachers, fp32_dir, log=lambda *_: None)
    # the recorded APs are those of float32 scores of the saved weights, in both runs
    tasks = fp32["tasks"]
    y = smoke_bench.test_labels[:, smoke_bench.label_indices(tasks)]
    for directory, record in ((fp32_dir, fp32), (tmp_path / "bf16", bf16)):
        scores = predict(load_target(directory / "targetnet.pt")[0], smoke_bench.test_images)
        assert scores.dtype == torch.float32
        assert ap_dict(tasks, scores.numpy(), y.numpy(), digits=3) == record["target_ap"]


def test_crossover_keys_of_fp32_name_no_precision_and_bf16_changes_them():
    from kalib.runs.crossover import CODE_PATH, STUDIES
    from kalib.runs.crossover.records import record_key
    smoke = get_preset("smoke")

    def ctx(precision):
        return SimpleNamespace(preset=smoke, bench=SimpleNamespace(spec=SimpleNamespace(key=lambda: "data")),
                               teacher_key=["t1", "t2"], plan=SimpleNamespace(tasks=("a", "b")),
                               study=STUDIES["smoke"], precision=precision)
    student = dataclasses.asdict(smoke.student)             # less the learning rates a run sets itself
    student.pop("eq9_finetune_lr")
    student["finetune"].pop("lr")
    kd = {k: v for k, v in dataclasses.asdict(smoke.baselines.kd).items() if k != "lr"}
    fp32 = digest({"code_path": CODE_PATH, "data": "data", "teachers": ["t1", "t2"], "tasks": ["a", "b"], "arm": "kd",
                   "pool": 64, "seed": 0, "setting": {"lr": 0.1}, "student": student, "kd": kd,
                   "heldout_share": 0.1, "budget_tolerance": 0.1})
    assert record_key(ctx("fp32"), "kd", 64, 0, {"lr": 0.1}) == fp32
    assert record_key(ctx("bf16"), "kd", 64, 0, {"lr": 0.1}) != fp32


def test_the_precision_option_of_the_commands_that_train():
    parser = build_parser()
    for command in (["pretrain", "--out", "o"], ["amalgamate", "--teachers", "t", "--out", "o"], ["reproduce"]):
        args = parser.parse_args([*command, "--preset", "smoke", "--precision", "bf16", "--set", "precision=fp32"])
        assert _preset(args).precision == "bf16", "--precision wins over --set"
        assert _overrides(args) == ["precision=fp32", "precision=bf16"]
        assert _preset(parser.parse_args([*command, "--preset", "smoke"])).precision == "fp32"
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["pretrain", "--out", "o", "--precision", "fp16"])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "x.pt", "--precision", "bf16"])     # evaluation has no precision


def test_reproduce_passes_precision_to_the_pipeline_and_says_it(tmp_path, monkeypatch, capsys):
    import kalib.runs.pipeline
    seen = {}
    monkeypatch.setattr(kalib.runs.pipeline, "reproduce", lambda **kwargs: seen.update(kwargs))
    assert main(["reproduce", "--preset", "smoke", "--out", str(tmp_path), "--device", "cpu",
                 "--precision", "bf16"]) == 0
    assert seen["overrides"] == ["precision=bf16"]
    assert "smoke: training on cpu, precision bf16" in capsys.readouterr().out
