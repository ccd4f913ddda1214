"""`python -m kalib`: help, pretrain/evaluate on the smoke preset, one-line errors with exit code 2. The help
test starts the real entry point; the others call its ``main`` in this process (what the command runs after
Python's own start, which would cost each test the import of torch again)."""

import json
import subprocess
import sys

import pytest
from test_errors import cli

from kalib.cli import main
from kalib.errors import KalibError
from kalib.models import build_backbone
from kalib.runs.checkpoints import save_model


def run(*args):
    return subprocess.run([sys.executable, "-m", "kalib", *args], capture_output=True, text=True, timeout=600)


def test_help_lists_the_commands_and_their_shared_options(capsys):
    out = run("--help")
    assert out.returncode == 0
    for command in ("pretrain", "amalgamate", "evaluate", "reproduce"):
        assert f"    {command}" in out.stdout
    shared = ["--preset", "--out", "--data-root", "--device", "--debug"]
    for command, extra in (("pretrain", ["--seed", "--restart", "--set"]),
                           ("amalgamate", ["--seed", "--restart", "--set", "--tasks"]),
                           ("evaluate", ["--tasks", "--set"]), ("reproduce", ["--seed", "--restart"])):
        with pytest.raises(SystemExit) as exit_:      # in-process: the same parser as `python -m kalib`
            main([command, "--help"])
        text = capsys.readouterr().out
        assert exit_.value.code == 0 and text.startswith(f"usage: kalib {command}")
        for option in shared + extra:
            assert f"{option} " in text or f"{option}\n" in text, (command, option)


def test_reproduce_passes_its_options_to_the_pipeline(tmp_path, monkeypatch, capsys):
    import kalib.runs.pipeline
    seen = {}
    monkeypatch.setattr(kalib.runs.pipeline, "reproduce", lambda **kwargs: seen.update(kwargs))
    code = main(["reproduce", "--preset", "smoke", "--out", str(tmp_path), "--seed", "3", "--device", "cpu",
                 "--data-root", str(tmp_path / "data"), "--restart", "--set", "block_images=64",
                 "--figures", str(tmp_path / "figs")])
    assert code == 0 and seen == {"preset": "smoke", "out_dir": tmp_path, "seed": 3, "data_root": tmp_path / "data",
                                  "device": "cpu", "restart": True, "overrides": ["block_images=64"],
                                  "figures": tmp_path / "figs"}
    assert main(["reproduce", "--preset", "smoke", "--set", "block_imagez=1"]) == 2
    assert "unknown field 'block_imagez'" in capsys.readouterr().err

    def fail(**kwargs):
        raise kalib.errors.NotebookError("02_filters, cell 4: ValueError: boom (executed notebook: x.ipynb)")
    monkeypatch.setattr(kalib.runs.pipeline, "reproduce", fail)
    code = main(["reproduce", "--preset", "smoke", "--out", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == "kalib reproduce: error: 02_filters, cell 4: ValueError: boom (executed notebook: x.ipynb)"


def test_evaluate_prints_per_label_ap_of_a_targetnet(smoke_target, tmp_path, capsys, one_thread):
    out_dir, record = smoke_target
    code = main(["evaluate", str(out_dir / "targetnet.pt"), "--json", "--device", "cpu",
                 "--out", str(tmp_path / "ap.json")])
    ap = json.loads(capsys.readouterr().out)
    assert code == 0 and set(ap) == set(record["tasks"]) | {"mAP"}
    assert all(abs(ap[k] - v) < 0.006 for k, v in record["target_ap"].items())
    saved = json.loads((tmp_path / "ap.json").read_text())
    assert saved["kind"] == "TargetNet" and saved["preset"] == "smoke" and saved["ap"] == ap
    code = main(["evaluate", str(out_dir / "targetnet.pt"), "--tasks", "shirt,coat"])
    text = capsys.readouterr().out
    assert code == 0 and "TargetNet" in text and "11-point VOC2007 AP" in text
    lines = text.splitlines()
    assert [line.split()[0] for line in lines[1:-1]] == ["shirt", "coat", "mAP"]
    assert "at chance level (random scores give" in lines[-1]     # smoke's numbers are said to mean nothing


def test_pretrain_then_evaluate_on_the_smoke_preset(tmp_path, smoke_bench, capsys, one_thread):
    code, out, err = cli(capsys, "pretrain", "--preset", "smoke", "--out", tmp_path)
    assert code == 0, err
    assert "at chance level" in out.splitlines()[-1]
    teacher = tmp_path / "set2-teacher1-resnet18_narrow.pt"
    assert teacher.is_file() and (tmp_path / "generic-resnet18_narrow.pt").is_file()
    code, out, err = cli(capsys, "evaluate", teacher, "--preset", "smoke", "--json")
    assert code == 0, err
    ap = json.loads(out)
    labels = json.loads(teacher.with_suffix(".json").read_text())["labels"]
    assert set(ap) == set(labels) | {"mAP"} and 0 <= ap["mAP"] <= 100


def test_corrupt_checkpoint_is_one_line_and_exit_2(tmp_path, smoke_bench, capsys):
    path = save_model(tmp_path / "t.pt", build_backbone("resnet18_narrow", 2, width=8), labels=["coat", "bag"])
    path.write_bytes(b"not a zip")
    code, _, err = cli(capsys, "evaluate", path, "--preset", "smoke")
    assert code == 2
    assert err.strip().count("\n") == 0 and "corrupt" in err and "Traceback" not in err
    assert path.is_file()   # nothing is deleted


@pytest.fixture
def no_fashion_mnist(tmp_path, monkeypatch):
    monkeypatch.setenv("KALIB_FASHION_MNIST_DIR", str(tmp_path))
    monkeypatch.setenv("KALIB_CACHE", str(tmp_path / "cache"))


def test_missing_data_source_is_one_line_and_exit_2(tmp_path, no_fashion_mnist, capsys):
    code, _, err = cli(capsys, "pretrain", "--preset", "smoke", "--out", tmp_path / "t")
    assert code == 2
    assert "apt-get install dataset-fashion-mnist" in err and "Traceback" not in err


def test_debug_raises_the_error_itself(tmp_path, no_fashion_mnist):
    """--debug: the exception leaves main (Python prints its traceback), instead of the one line."""
    with pytest.raises(KalibError, match="dataset-fashion-mnist"):
        main(["--debug", "pretrain", "--preset", "smoke", "--out", str(tmp_path / "t")])


@pytest.mark.parametrize("args", [["pretrain", "--preset", "huge", "--out", "x"], ["nothing"]])
def test_bad_options_exit_2(args, capsys):
    assert cli(capsys, *args)[0] == 2


def test_the_readme_and_the_cli_agree_on_commands_and_options():
    """Every `python -m kalib` line of the README parses, and every README sentence that says which
    commands take --seed or --restart names only commands that do ("every command" means all four)."""
    import contextlib
    import io
    import re
    import shlex
    from pathlib import Path

    from kalib.cli import build_parser
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    parser = build_parser()
    lines = [line.split("#")[0].strip() for line in readme.replace("\\\n", " ").splitlines()
             if line.strip().startswith("python -m kalib ")]
    assert len(lines) >= 5
    for line in lines:
        parser.parse_args(shlex.split(line)[3:])          # exits (failing the test) on an unknown option
    commands = ("pretrain", "amalgamate", "evaluate", "reproduce")
    options = {}
    for command in commands:
        shown = io.StringIO()
        with contextlib.redirect_stdout(shown), pytest.raises(SystemExit):
            parser.parse_args([command, "--help"])
        options[command] = re.findall(r"(--[a-z-]+)", shown.getvalue())
    text = " ".join(readme.split())
    for sentence in re.split(r"(?<=[.;])\s", text):
        for option in ("--seed", "--restart"):
            if f"`{option}`" not in sentence or re.search(r"\btake[s]?\b", sentence) is None:
                continue
            named = commands if "every command" in sentence.lower() else \
                [c for c in commands if f"`{c}`" in sentence.split(" take")[0]]
            assert all(option in options[c] for c in named), sentence
