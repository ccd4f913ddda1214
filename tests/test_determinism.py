"""Determinism (issue 7): the same seed on the CPU gives identical results twice on the smoke preset —
dataset arrays, teacher weights, converged losses, chosen blocks, TargetNet weights and mAP. (What is and
is not deterministic on a GPU: README, "Determinism".)"""

import numpy as np
import pytest
import torch

from kalib.data.embedded import generate, labels_from_objects
from kalib.runs.amalgamation import run
from kalib.runs.checkpoints import load_state
from kalib.runs.presets import get_preset
from kalib.runs.teachers import pretrain

pytestmark = pytest.mark.usefixtures("one_thread")


def test_same_seed_same_results_twice_on_the_cpu(smoke_bench, smoke_teachers, smoke_target, tmp_path):
    preset = get_preset("smoke")
    arrays = generate(preset.data)                       # the session's benchmark was generated once already
    for split in ("train", "pool", "test", "generic"):
        assert np.array_equal(arrays[f"{split}_images"], getattr(smoke_bench, f"{split}_images").numpy()), split
    assert np.array_equal(labels_from_objects(arrays["train_objects"]), smoke_bench.train_labels.numpy())
    assert np.array_equal(labels_from_objects(arrays["test_objects"]), smoke_bench.test_labels.numpy())

    paths = pretrain(smoke_bench, preset.labels.groups, preset.nets.arch, preset.nets.arch_kwargs, preset.pretraining.generic, preset.pretraining.teacher,
                     tmp_path / "teachers", seed=preset.seed, log=lambda *_: None)
    for path in [tmp_path / "teachers" / "generic-resnet18_narrow.pt", *paths]:
        a, b = load_state(path), load_state(smoke_teachers / path.name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), path.name

    ref_dir, reference = smoke_target
    record = run(smoke_bench, preset, tmp_path / "teachers", tmp_path / "run", log=lambda *_: None)
    for key in ("converged_loss", "chosen_block", "branch_ap", "teacher_ap", "target_ap", "finetune_loss"):
        assert record[key] == reference[key], key
    a, b = load_state(tmp_path / "run" / "targetnet.pt"), load_state(ref_dir / "targetnet.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
