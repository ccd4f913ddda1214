"""Safe loading (issue 7): a checkpoint carrying a pickle payload is refused by every kalib loader —
finished checkpoints, TargetNets, epoch checkpoints, block states, ``kalib evaluate`` — and the payload
never runs. A control shows that the payload does run under a plain unsafe ``torch.load``, so the test
would catch a loader that executed it."""

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

from kalib.cli import main
from kalib.errors import CheckpointError
from kalib.method.blockwise import Amalgamation
from kalib.method.filters import task_plan
from kalib.method.targetnet import assemble
from kalib.models import build_backbone
from kalib.runs.checkpoints import EpochFile, load_model, load_state, load_target, save_model, save_target
from kalib.runs.state import BlockStore
from kalib.train import Schedule, optimise


def payload(marker: Path):
    """An object whose unpickling runs ``touch marker`` through os.system."""
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))
    return Payload()


def poison(path: Path, marker: Path) -> Path:
    """Overwrite the weights file ``path`` with a state dict that also carries the payload."""
    torch.save({"weight": torch.zeros(2), "evil": payload(marker)}, path)
    return path


def test_the_payload_is_real(tmp_path):
    """Control: an unsafe load does execute it (so a missing marker below means it was not executed)."""
    marker = tmp_path / "executed"
    path = poison(tmp_path / "control.pt", marker)
    torch.load(path, weights_only=False)
    assert marker.exists()


def test_finished_checkpoints_and_targetnets_refuse_the_payload(tmp_path):
    marker = tmp_path / "executed"
    net = build_backbone("resnet18_narrow", 3, width=8)
    path = poison(save_model(tmp_path / "teacher.pt", net, labels=["a", "b", "c"]), marker)
    with pytest.raises(CheckpointError, match="corrupt or truncated .its bytes do not match the digest"):
        load_model(path)
    with pytest.raises(CheckpointError, match="corrupt or truncated, or not a kalib checkpoint"):
        load_state(path)
    meta = json.loads(path.with_suffix(".json").read_text())     # a checkpoint of a kalib without digests
    del meta["weights_sha256"]
    path.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="corrupt or truncated, or not a kalib checkpoint"):
        load_model(path)

    teachers = [build_backbone("resnet18_narrow", 2, width=8).eval() for _ in range(2)]
    student = build_backbone("resnet18_narrow", 2, width=8).eval()
    from kalib.method.student import make_filters
    filters = make_filters(student, teachers)
    target = assemble(student, filters, teachers, task_plan(None, [["a", "b"], ["c", "d"]]), [2, 2, 3, 3])
    tpath = poison(save_target(tmp_path / "targetnet.pt", target, role="targetnet"), marker)
    with pytest.raises(CheckpointError):
        load_target(tpath)
    assert not marker.exists()


def test_epoch_checkpoints_and_block_states_refuse_the_payload(tmp_path, capsys):
    """A block state is refused; an epoch checkpoint, like any damaged one (issue 36), is said, removed and its
    unit trained from its first epoch: in both cases the payload never runs."""
    marker = tmp_path / "executed"
    model = nn.Linear(3, 1)
    ckpt = poison(tmp_path / "epoch.pt", marker)
    x = torch.randn(8, 3)
    history = optimise(model.parameters(), 8, lambda idx: model(x[idx]).pow(2).mean(),
                       Schedule(epochs=1, batch_size=4), module=model, store=EpochFile(ckpt))
    assert len(history) == 1 and f"{ckpt} is damaged" in capsys.readouterr().err
    assert load_state(ckpt)["format"] == "kalib-epoch-checkpoint"          # its first epoch, saved anew

    store = BlockStore(tmp_path / "run", "fp")
    store.dir.mkdir(parents=True)
    poison(store.dir / "block01.pt", marker)
    student = build_backbone("resnet18_narrow", 2, width=8)
    with pytest.raises(CheckpointError):
        store.load(1, Amalgamation(student, nn.ModuleList(), None, None))
    assert not marker.exists()


def test_kalib_evaluate_refuses_the_payload(tmp_path, capsys):
    marker = tmp_path / "executed"
    path = poison(save_model(tmp_path / "t.pt", build_backbone("resnet18_narrow", 2, width=8),
                             labels=["coat", "bag"]), marker)
    code = main(["evaluate", str(path), "--preset", "smoke"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "corrupt or truncated" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert not marker.exists()
