"""Writes tests/data/crossover-smoke.json: the numbers of every record of the smoke crossover study, made the way
tests/test_crossover.py makes them (the session's smoke teachers as pair-1; one thread throughout). Run it
only at a commit whose study code path is the one the committed records were made with (CODE_PATH), e.g. from a
worktree of that commit: ``PYTHONPATH=<worktree> python tests/data/crossover_golden.py``."""

import json
import os
import sys
import tempfile
from pathlib import Path

import torch

work = Path(tempfile.mkdtemp(prefix="kalib-golden-"))
os.environ["KALIB_CACHE"] = str(work / "cache")

from kalib.data import load_benchmark                  # noqa: E402  (after KALIB_CACHE)
from kalib.runs.crossover import STUDIES, run_study     # noqa: E402
from kalib.runs.presets import get_preset              # noqa: E402
from kalib.runs.teachers import pretrain               # noqa: E402

sys.path.insert(0, str(Path(__file__).parents[1]))
from test_crossover import golden_view                 # noqa: E402

preset = get_preset("smoke")
bench = load_benchmark(preset.data)
torch.set_num_threads(1)
pretrain(bench, preset.labels.groups, preset.nets.arch, preset.nets.arch_kwargs, preset.pretraining.generic,
         preset.pretraining.teacher, work / "s" / "teachers-pair-1", seed=preset.seed, log=lambda *_: None)
run_study(STUDIES["smoke"], work / "s", work / "s" / "records", log=print)
(Path(__file__).parent / "crossover-smoke.json").write_text(json.dumps(golden_view(work / "s" / "records"), indent=1) + "\n")
print(f"written from {work}")
