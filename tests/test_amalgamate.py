"""Entangled block-wise training (paper Eq. 6–8, Alg. 1) on tiny width-8 networks at 32 px."""
import dataclasses
import json

import numpy as np
import pytest
import torch

from kalib.data import Benchmark, BenchmarkSpec
from kalib.method.blockwise import (
    BlockHooks,
    amalgamate,
    branch_logits,
    entangled_predictions,
    filtered_loss,
    soft_targets,
    task_losses,
)
from kalib.method.filters import task_plan
from kalib.method.pool import block_subset, epochs_per_block, split_pool
from kalib.method.student import init_student, make_filters
from kalib.models import build_backbone
from kalib.runs.amalgamation import run
from kalib.runs.checkpoints import save_model
from kalib.runs.presets import get_preset
from kalib.train import Schedule, to_input

LABELS = [("a", "b", "c"), ("d", "e")]
TINY = Schedule(epochs=1, lr=0.05, batch_size=8, weight_decay=5e-4)


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_nets(seed=0):
    """A generic backbone and two teachers started from it, then perturbed (as if trained apart)."""
    torch.manual_seed(seed)
    generic = build_backbone("resnet18_narrow", 6, width=8).eval()
    teachers = []
    for n, labels in enumerate(LABELS):
        t = generic.with_new_head(len(labels))
        with torch.no_grad():
            for name, p in t.named_parameters():
                p.add_(0.1 * torch.randn_like(p))
            for m in t.modules():                     # non-trivial running statistics
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
        teachers.append(t.eval())
    return generic, teachers


def pool(n=40, seed=1):
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def state(module):
    return {k: v.clone() for k, v in module.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------------------------- Eq. 7–8

def test_loss_is_mean_over_selected_tasks_of_soft_bce():
    """Eq. 7/8: Σ_n Σ_{i∈C_n} ℓ_i / |C|, ℓ = batch-mean BCE against the teacher's sigmoid probability."""
    torch.manual_seed(0)
    pred, target = torch.randn(6, 5), torch.randn(6, 5)
    loss, per_task = filtered_loss(pred, target)
    p, q = torch.sigmoid(target), torch.sigmoid(pred)
    manual = [-(p[:, i] * q[:, i].log() + (1 - p[:, i]) * (1 - q[:, i]).log()).mean() for i in range(5)]
    assert torch.allclose(per_task, torch.stack(manual), atol=1e-6)
    assert torch.allclose(loss, torch.stack(manual).sum() / 5, atol=1e-6)
    assert torch.allclose(task_losses(pred, target), per_task)


def test_loss_is_minimal_at_the_teacher_prediction():
    target = torch.randn(4, 3)
    pred = target.clone().requires_grad_(True)
    filtered_loss(pred, target)[0].backward()
    assert pred.grad.abs().max() < 1e-7


# ---------------------------------------------------------------------------------------------- Eq. 6

def test_entangled_forward_with_teacher_as_student_reproduces_teacher():
    """Eq. 6 with identity filters and the student = teacher n gives teacher n's own outputs at every k,
    selected (g) and ordered as in C."""
    _, teachers = tiny_nets()
    plan = task_plan("e,a,c", LABELS)
    filters = make_filters(teachers[0], teachers)
    x = to_input(pool(4))
    with torch.no_grad():
        own = [t(x) for t in teachers]
        for k in range(1, 9):
            out = entangled_predictions(teachers[0].prefix(x, k), k, filters[k - 1], teachers, plan)
            assert torch.allclose(out[:, 1:], own[0][:, [0, 2]], atol=1e-5)           # a, c from teacher 1
            feats = teachers[1].prefix(x, k)
            out = entangled_predictions(feats, k, filters[k - 1], teachers, plan)
            assert torch.allclose(out[:, 0], own[1][:, 1], atol=1e-5)                 # e from teacher 2


def test_soft_targets_are_teacher_outputs_in_task_order():
    _, teachers = tiny_nets()
    plan = task_plan("d,b", LABELS)
    images = pool(6)
    with torch.no_grad():
        expected = torch.stack([teachers[1](to_input(images))[:, 0], teachers[0](to_input(images))[:, 1]], 1)
    assert torch.allclose(soft_targets(teachers, images, plan), expected, atol=1e-5)


# ---------------------------------------------------------------------------------------------- Alg. 1

def test_blockwise_training_invariants():
    """Teachers bit-identical; at block k only student block k (and f^k) change; blocks < k stay frozen;
    the converged losses cover every (block, task); the held-out slice is never trained on."""
    generic, teachers = tiny_nets()
    for t in teachers:
        t.train()                                     # as load_model returns them: amalgamate must freeze
    before = [state(t) for t in teachers]
    plan = task_plan(None, LABELS)
    student = init_student("generic", teachers, generic)
    snapshots = []
    result = amalgamate(student, teachers, plan, pool(), TINY, images_per_block=24, heldout=8,
                        hooks=BlockHooks(on_block_end=lambda k, r: snapshots.append((state(r.student.blocks),
                                                                                      state(r.filters)))))
    for t, b in zip(teachers, before):
        assert same(state(t), b), "a teacher's weights or buffers changed"
        assert not t.training and not any(p.requires_grad for p in t.parameters())
    assert result.losses.shape == (8, 5) and np.isfinite(result.losses).all()
    init_blocks = state(generic.blocks)
    prev_blocks = init_blocks
    for k, (blocks, filt) in enumerate(snapshots, start=1):
        for name, v in blocks.items():
            j = int(name.split(".")[0]) + 1
            if j < k or j > k:
                assert torch.equal(v, prev_blocks[name]), f"block {j} changed while training block {k}"
        changed = [name for name, v in blocks.items() if int(name.split(".")[0]) + 1 == k
                   and not torch.equal(v, prev_blocks[name])]
        assert changed, f"block {k} did not train"
        assert any(not torch.equal(v, torch.zeros_like(v)) for n_, v in filt.items()
                   if n_.startswith(f"{k - 1}.") and "fc2" in n_), f"filters of block {k} did not train"
        prev_blocks = blocks
    train_idx, held_idx = split_pool(40, 8)
    assert set(train_idx.tolist()).isdisjoint(held_idx.tolist())
    for k in range(1, 9):
        assert set(block_subset(train_idx, k, 24, 0).tolist()) <= set(train_idx.tolist())


def test_single_task_single_teacher_and_partial_C():
    """N = 1 with one task; also C with tasks of only one of two teachers (the other gets no filters
    trained and no forward passes)."""
    generic, teachers = tiny_nets()
    one = task_plan("b", [LABELS[0]])
    r = amalgamate(init_student("generic", teachers[:1], generic), teachers[:1], one, pool(24), TINY,
                   heldout=8)
    assert r.losses.shape == (8, 1)
    partial = task_plan("d", LABELS)
    r = amalgamate(init_student("teacher1", teachers), teachers, partial, pool(24), TINY, heldout=8)
    assert r.losses.shape == (8, 1)
    for k in range(8):
        assert torch.equal(r.filters[k][0].fc2.weight, torch.zeros_like(r.filters[k][0].fc2.weight))


def test_student_inits():
    generic, teachers = tiny_nets()
    assert same(state(init_student("generic", teachers, generic).blocks), state(generic.blocks))
    assert same(state(init_student("teacher1", teachers).blocks), state(teachers[0].blocks))
    mean = state(init_student("teacher-mean", teachers).blocks)
    for name, value in mean.items():
        parts = [state(t.blocks)[name] for t in teachers]
        if value.is_floating_point():
            assert torch.allclose(value.double(), (parts[0].double() + parts[1].double()) / 2), name
        else:
            assert torch.equal(value, parts[0]), name
    rnd = init_student("random", teachers, seed=3)
    assert not same(state(rnd.blocks), state(generic.blocks))
    with pytest.raises(ValueError, match="valid"):
        init_student("imagenet", teachers)


def test_branch_logits_rows_are_entangled_forward():
    generic, teachers = tiny_nets()
    plan = task_plan(None, LABELS)
    filters = make_filters(generic, teachers)
    images = pool(5)
    curves = branch_logits(generic, filters, teachers, plan, images)
    with torch.no_grad():
        x = to_input(images)
        for k in (1, 4, 8):
            assert torch.allclose(curves[k - 1], entangled_predictions(generic.prefix(x, k), k, filters[k - 1],
                                                                       teachers, plan), atol=1e-5)


# ---------------------------------------------------------------------------------------------- the run

class Untouchable:
    """Stands in for every label tensor: any use raises, so a passing run proves no label was read."""

    def __getattr__(self, name):
        raise AssertionError(f"labels were read (.{name})")

    def __getitem__(self, item):
        raise AssertionError("labels were read (indexing)")

    def __len__(self):
        raise AssertionError("labels were read (len)")

    def __iter__(self):
        raise AssertionError("labels were read (iteration)")

    def __array__(self, *args, **kwargs):
        raise AssertionError("labels were read (numpy)")

    @classmethod
    def __torch_function__(cls, *args, **kwargs):
        raise AssertionError("labels were read (torch)")


def write_teachers(directory, generic, teachers):
    save_model(directory / "generic-resnet18_narrow.pt", generic, role="generic")
    for n, (t, labels) in enumerate(zip(teachers, LABELS), start=1):
        save_model(directory / f"set2-teacher{n}-resnet18_narrow.pt", t, role="teacher", labels=list(labels))


def tiny_preset():
    return get_preset("smoke").replace(name="tiny", arch_kwargs={"width": 8}, block=TINY, block_images=16,
                                       loss_slice=8, finetune=TINY, finetune_images=16)


def test_run_never_reads_labels_and_resumes(tmp_path):
    generic, teachers = tiny_nets()
    write_teachers(tmp_path / "t", generic, teachers)
    poison = Untouchable()
    bench = Benchmark(spec=BenchmarkSpec(), train_images=Untouchable(), train_labels=poison,
                      pool_images=pool(32), test_images=Untouchable(), test_labels=poison,
                      generic_images=Untouchable(), generic_labels=poison, label_names=("a", "b", "c", "d", "e"))
    before = [state(t) for t in teachers]
    logs = []
    record = run(bench, tiny_preset(), tmp_path / "t", tmp_path / "out", evaluate=False, log=logs.append)
    assert set(record["chosen_block"]) == {"a", "b", "c", "d", "e"}
    assert record["params"]["targetnet"] > 0 and (tmp_path / "out" / "targetnet.pt").is_file()
    saved = json.loads((tmp_path / "out" / "run.json").read_text())
    assert saved["converged_loss"]["a"].keys() == set(generic.block_names)
    for n, b in enumerate(before, start=1):     # the checkpoints on disk are what run() loaded
        assert same(b, state(teachers[n - 1]))
    assert sum("held-out loss" in line for line in logs) == 8
    # the poison is effective: evaluation (which needs test labels) trips it, checked before any training
    logs.clear()
    with pytest.raises(AssertionError, match="labels were read"):
        run(bench, tiny_preset(), tmp_path / "t", tmp_path / "out", evaluate=True, log=logs.append)
    assert not logs
    run(bench, tiny_preset(), tmp_path / "t", tmp_path / "out", evaluate=False, log=logs.append)
    assert logs == [f"re-using the finished run in {tmp_path / 'out'}"]


def test_run_resumes_after_last_finished_block(tmp_path):
    generic, teachers = tiny_nets()
    write_teachers(tmp_path / "t", generic, teachers)
    test_labels = (torch.rand(12, 5, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    test_labels[0], test_labels[1] = 1, 0                           # every task has positives and negatives
    bench = Benchmark(spec=BenchmarkSpec(), train_images=None, train_labels=None, pool_images=pool(32),
                      test_images=pool(12, seed=3), test_labels=test_labels, generic_images=None,
                      generic_labels=None, label_names=("a", "b", "c", "d", "e"))
    preset = tiny_preset()
    first = run(bench, preset, tmp_path / "t", tmp_path / "out", evaluate=False, log=lambda s: None)
    for k in range(4, 9):                            # as if killed during block 4
        (tmp_path / "out" / "blocks" / f"block{k:02d}.json").unlink()
    logs = []
    second = run(bench, preset, tmp_path / "t", tmp_path / "out", evaluate=True, branch_at="b2", log=logs.append)
    assert "resuming after block b2_1 (3/8 finished)" in logs[0]
    assert sum("block " in line and "held-out loss" in line for line in logs) == 5
    assert second["converged_loss"] == first["converged_loss"]       # deterministic continuation
    # the evaluation part of run.json: Fig. 3 curves, both block choices, APs, forced branch-out
    assert set(second["branch_ap"]["a"]) == set(second["blocks"])
    assert set(second["ap_best_block"]) == set(second["chosen_block"]) == {"a", "b", "c", "d", "e"}
    assert set(second["branch_block"].values()) == {"b2_2"}          # stage b2 ends at block 4
    for key in ("teacher_ap", "target_ap", "target_ap_before_finetune"):
        assert set(second[key]) == {"a", "b", "c", "d", "e", "mAP"}
    assert {"teacher_targets", "blocks", "finetune", "branch_curves", "evaluation"} <= set(second["seconds"])


def test_an_unknown_branch_block_is_refused_before_any_training(tmp_path):
    generic, teachers = tiny_nets()
    write_teachers(tmp_path / "t", generic, teachers)
    bench = Benchmark(spec=BenchmarkSpec(), train_images=None, train_labels=None, pool_images=pool(32),
                      test_images=None, test_labels=None, generic_images=None, generic_labels=None,
                      label_names=("a", "b", "c", "d", "e"))
    with pytest.raises(ValueError, match="unknown branch block 'b9'.*valid"):
        run(bench, tiny_preset(), tmp_path / "t", tmp_path / "out", branch_at="b9", evaluate=False,
            log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_block_epochs_give_each_block_its_own_schedule():
    generic, teachers = tiny_nets()
    plan = task_plan(None, LABELS)
    result = amalgamate(init_student("generic", teachers, generic), teachers, plan, pool(24), TINY, heldout=8,
                        block_epochs=(1, 1, 1, 1, 2, 2, 3, 3))
    assert [len(h) for h in result.train_loss] == [1, 1, 1, 1, 2, 2, 3, 3]
    assert epochs_per_block((1, 1, 2, 2, 4, 4, 8, 8), 4) == [1, 2, 4, 8]      # a 4-block DenseNet
    assert epochs_per_block((1, 3), 8) == [1, 1, 1, 1, 3, 3, 3, 3]
    assert epochs_per_block((2, 5, 9), 3) == [2, 5, 9]
    with pytest.raises(ValueError, match="non-negative"):
        epochs_per_block((1, -2), 8)


def test_a_branch_tolerance_builds_a_deeper_targetnet_and_keeps_the_eq9_one(tmp_path):
    """The preset's tolerance rule gives the record's TargetNet; Eq. 9's own is fine-tuned and evaluated
    beside it (``eq9``). Evaluation on the validation split reads val labels, never test's."""
    generic, teachers = tiny_nets()
    write_teachers(tmp_path / "t", generic, teachers)
    val_labels = (torch.rand(12, 5, generator=torch.Generator().manual_seed(2)) < 0.5).float()
    val_labels[0], val_labels[1] = 1, 0
    bench = Benchmark(spec=BenchmarkSpec(), train_images=None, train_labels=None, pool_images=pool(32),
                      test_images=Untouchable(), test_labels=Untouchable(), generic_images=None,
                      generic_labels=None, label_names=("a", "b", "c", "d", "e"),
                      val_images=pool(12, seed=3), val_labels=val_labels)
    preset = tiny_preset().replace(branch_tolerance=10.0)      # every task at the last block
    record = run(bench, preset, tmp_path / "t", tmp_path / "out", eval_split="val", log=lambda s: None)
    assert set(record["branch_block"].values()) == {"b4_2"} and record["evaluated_on"] == "val"
    for task, losses in record["converged_loss"].items():                 # Eq. 9 is still recorded
        assert losses[record["chosen_block"][task]] == min(losses.values())
    assert record["eq9"]["branch_block"] == record["chosen_block"]
    assert record["eq9"]["params"]["targetnet"] > record["params"]["targetnet"]
    for entry in (record, record["eq9"]):
        assert set(entry["target_ap"]) == {"a", "b", "c", "d", "e", "mAP"}
    assert not list((tmp_path / "out" / "blocks").glob("finetune-*.partial.pt"))
    with pytest.raises(ValueError, match="no 'val' split"):
        run(dataclasses.replace(bench, val_images=None), preset, tmp_path / "t", tmp_path / "out2",
            eval_split="val", log=lambda s: None)
