"""Teacher pretraining (Eq. 2), the shared generic stage, the poly schedule and checkpoints."""

import json

import pytest
import torch
import torch.nn.functional as F

from kalib.errors import CheckpointError, NonFiniteLossError
from kalib.method.teachers import evaluate, teacher_loss, train_generic, train_teacher
from kalib.models import build_backbone
from kalib.runs.checkpoints import load_model, save_model
from kalib.runs.teachers import pretrain
from kalib.train import Schedule, batches, fit, to_input

TINY_NET = {"width": 8}
ONE_EPOCH = Schedule(epochs=1, lr=0.05, batch_size=64, weight_decay=5e-4)


def test_teacher_loss_is_eq2_mean_over_tasks():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    targets = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    per_task = [F.binary_cross_entropy_with_logits(logits[:, i], targets[:, i]) for i in range(3)]
    assert torch.allclose(teacher_loss(logits, targets), sum(per_task) / 3)


def test_poly_schedule_reaches_zero_and_training_lowers_the_loss(smoke_bench):
    model = build_backbone("resnet18_narrow", 20, **TINY_NET)
    images, labels = smoke_bench.generic_images, smoke_bench.generic_labels
    seen_lr = []
    history = fit(model, images, labels, F.cross_entropy, Schedule(epochs=3, lr=0.05, batch_size=64,
                                                                   weight_decay=0), seed=0)
    assert history[-1] < history[0]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.PolynomialLR(opt, total_iters=4, power=0.9)
    for _ in range(4):
        seen_lr.append(opt.param_groups[0]["lr"]); opt.step(); sched.step()
    assert seen_lr[0] == 1.0 and opt.param_groups[0]["lr"] == 0.0


def test_fit_stops_on_a_non_finite_loss(smoke_bench):
    model = build_backbone("resnet18_narrow", 20, **TINY_NET)
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1"):
        fit(model, smoke_bench.generic_images[:64], smoke_bench.generic_labels[:64],
            lambda out, y: out.sum() * float("nan"), ONE_EPOCH)


def test_batches_cover_every_index_once():
    idx = torch.cat(list(batches(10, 3, torch.Generator().manual_seed(0))))
    assert sorted(idx.tolist()) == list(range(10))
    assert [len(b) for b in batches(10, 3, drop_last=True)] == [3, 3, 3]


def test_to_input_maps_uint8_to_a_centred_range():
    x = to_input(torch.tensor([0, 255], dtype=torch.uint8).view(1, 2, 1, 1))
    assert x.flatten().tolist() == [-2.0, 2.0]


def test_teacher_starts_from_the_generic_backbone_and_keeps_it_unchanged(smoke_bench):
    generic = train_generic(smoke_bench.generic_images, smoke_bench.generic_labels, 20, "resnet18_narrow", TINY_NET,
                            ONE_EPOCH)
    before = {k: v.clone() for k, v in generic.state_dict().items()}
    targets = smoke_bench.train_labels[:, smoke_bench.label_indices(("coat", "bag", "seven"))]
    start = train_teacher(generic, smoke_bench.train_images, targets, Schedule(epochs=0))
    for (k, v), (k2, v2) in zip(generic.blocks.state_dict().items(), start.blocks.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    teacher = train_teacher(generic, smoke_bench.train_images, targets, ONE_EPOCH)
    assert teacher.num_classes == 3
    assert any(not torch.equal(a, b) for a, b in zip(teacher.blocks.parameters(), generic.blocks.parameters()))
    assert all(torch.equal(v, before[k]) for k, v in generic.state_dict().items())


def test_evaluate_reports_per_label_ap_and_mean(smoke_bench):
    model = build_backbone("resnet18_narrow", 2, **TINY_NET)
    ap = evaluate(model, smoke_bench.test_images, smoke_bench.test_labels[:, [4, 15]], ["coat", "five"])
    assert set(ap) == {"coat", "five", "mAP"}
    assert 0 <= ap["coat"] <= 100 and ap["mAP"] == pytest.approx((ap["coat"] + ap["five"]) / 2)


def test_pretrain_writes_checkpoints_and_reuses_them(smoke_bench, tmp_path):
    groups = (("coat", "bag"), ("seven",))
    paths = pretrain(smoke_bench, groups, "resnet18_narrow", TINY_NET, ONE_EPOCH, ONE_EPOCH, tmp_path,
                     log=lambda *_: None)
    meta = json.loads(paths[1].with_suffix(".json").read_text())
    assert meta["labels"] == ["seven"] and meta["config"]["arch"] == "resnet18_narrow"
    assert 0 <= meta["test_ap"]["mAP"] <= 100
    stamps = [p.stat().st_mtime_ns for p in paths]
    again = pretrain(smoke_bench, groups, "resnet18_narrow", TINY_NET, ONE_EPOCH, ONE_EPOCH, tmp_path,
                     log=lambda *_: None)
    assert [p.stat().st_mtime_ns for p in again] == stamps
    with pytest.raises(FileExistsError, match="teacher for other labels"):
        pretrain(smoke_bench, (("coat",), ("bag",)), "resnet18_narrow", TINY_NET, ONE_EPOCH, ONE_EPOCH,
                 tmp_path, log=lambda *_: None)
    with pytest.raises(ValueError, match=r"is a teacher for \['seven'\], not for \['coat', 'bag'\]; warm_start"):
        pretrain(smoke_bench, groups, "resnet18_narrow", TINY_NET, ONE_EPOCH, ONE_EPOCH, tmp_path,
                 log=lambda *_: None, warm_start=paths[::-1])   # Table 2's warm start, groups swapped


def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path):
    model = build_backbone("resnet18_narrow", 3, **TINY_NET).eval()
    path = save_model(tmp_path / "t.pt", model, labels=["a", "b", "c"])
    loaded, meta = load_model(path)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model(x), loaded.eval()(x)) and meta["labels"] == ["a", "b", "c"]


def test_corrupt_truncated_or_foreign_checkpoints_give_clear_errors(tmp_path):
    path = save_model(tmp_path / "t.pt", build_backbone("resnet18_narrow", 3, **TINY_NET))
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(path)
    path.with_suffix(".json").write_text('{"hello": 1}')
    with pytest.raises(CheckpointError, match="not a kalib checkpoint"):
        load_model(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "missing.pt")


def test_a_pickle_payload_in_a_checkpoint_is_not_executed(tmp_path):

    marker = tmp_path / "executed"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = save_model(tmp_path / "t.pt", build_backbone("resnet18_narrow", 3, **TINY_NET))
    torch.save({"evil": Payload()}, path)
    with pytest.raises(CheckpointError):
        load_model(path)
    assert not marker.exists()


def test_weights_of_another_architecture_are_refused(tmp_path):
    path = save_model(tmp_path / "t.pt", build_backbone("resnet18_narrow", 3, **TINY_NET))
    meta = json.loads(path.with_suffix(".json").read_text())
    meta["config"]["width"] = 16
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not match its architecture"):
        load_model(path)
