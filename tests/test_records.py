"""The one rule for "is this saved result still valid" (kalib.runs.records): the stored key equals the
expected key and every file it names still has its recorded digest; files without a digest (records of older
kalib versions) are checked by loading them."""

import json

import pytest

from kalib.files import file_sha
from kalib.runs.records import DAMAGED, OTHER, VALID, read_record, verify


@pytest.fixture
def saved(tmp_path):
    """Two files of a saved result and their digests."""
    a, b = tmp_path / "a.pt", tmp_path / "b.json"
    a.write_bytes(b"weights" * 100)
    b.write_text('{"x": 1}')
    return {a: file_sha(a), b: file_sha(b)}


def test_valid_when_the_key_matches_and_every_file_has_its_digest(saved):
    verdict = verify("k1", "k1", saved)
    assert verdict.valid and verdict.status == VALID and verdict.damaged == () and verdict.loaded == {}
    assert verify("k1", "k1").valid                    # a result that names no file: its key only


def test_another_key_is_another_configuration_and_its_files_are_not_looked_at(saved):
    for path in saved:
        path.unlink()
    verdict = verify("k2", "k1", saved)
    assert verdict.status == OTHER and not verdict.valid and verdict.damaged == ()
    assert verify(None, "k1", saved).status == OTHER   # no key stored: not this configuration ...
    assert verify(None, "k1", {}, keyless_is_old=True).valid      # ... unless keyless results predate keys


def test_a_missing_changed_or_truncated_file_is_damaged_in_the_order_the_record_names_them(saved):
    a, b = list(saved)
    a.write_bytes(a.read_bytes()[:50])                 # truncated
    verdict = verify("k", "k", saved)
    assert verdict.status == DAMAGED and verdict.damaged == (a,)
    b.unlink()                                         # missing
    assert verify("k", "k", saved).damaged == (a, b)
    a.write_bytes(b"weights" * 100)                    # restored: only b is damaged
    assert verify("k", "k", saved).damaged == (b,)


def test_files_without_a_digest_are_checked_by_loading(tmp_path):
    good, bad, gone = tmp_path / "good.pt", tmp_path / "bad.pt", tmp_path / "gone.pt"
    good.write_text("1.5")
    bad.write_text("not a number")

    def load(path):
        return float(path.read_text())
    verdict = verify("k", "k", {good: None}, load=load)
    assert verdict.valid and verdict.loaded == {good: 1.5}         # what was loaded is handed back
    verdict = verify("k", "k", {good: None, bad: None, gone: None}, load=load)
    assert verdict.status == DAMAGED and verdict.damaged == (bad, gone)
    assert verify("k", "k", {good: None}).valid and verify("k", "k", {gone: None}).damaged == (gone,)   # no loader


def test_a_record_without_digests_for_some_files_mixes_both_checks(tmp_path, saved):
    a, _ = list(saved)
    old = tmp_path / "old.pt"
    old.write_text("2")
    assert verify("k", "k", {a: saved[a], old: None}, load=lambda p: int(p.read_text())).valid
    old.write_text("two")
    assert verify("k", "k", {a: saved[a], old: None}, load=lambda p: int(p.read_text())).damaged == (old,)


def test_read_record_is_none_for_a_missing_cut_off_or_foreign_file(tmp_path):
    path = tmp_path / "run.json"
    assert read_record(path) is None
    path.write_text(json.dumps({"run_key": "k", "files": {}}))
    assert read_record(path) == {"run_key": "k", "files": {}}
    path.write_text('{"run_key": "k", "fi')
    assert read_record(path) is None
    path.write_text("[1, 2]")
    assert read_record(path) is None
    path.write_bytes(b"\xff\xfe\x00")
    assert read_record(path) is None


# ------------------------------------------------------------------------- the call sites keep their messages

def test_a_teacher_of_an_older_kalib_without_a_digest_is_checked_by_loading(tmp_path):
    from kalib.models import build_backbone
    from kalib.runs.checkpoints import save_model
    from kalib.runs.teachers import _finished
    path = save_model(tmp_path / "set2-teacher1-resnet18_narrow.pt", build_backbone("resnet18_narrow", 2, width=8),
                      role="teacher", labels=["a", "b"], config_hash="h")
    logs = []
    assert _finished(path, "h", False, logs.append) and not logs
    meta = json.loads(path.with_suffix(".json").read_text())
    del meta["weights_sha256"], meta["config_hash"]                  # as an older kalib wrote it
    path.with_suffix(".json").write_text(json.dumps(meta))
    assert _finished(path, "h", False, logs.append)                  # no key, no digest: it loads, re-used
    path.write_bytes(path.read_bytes()[:3000])
    assert not _finished(path, "h", False, logs.append)
    assert logs == [f"{path} is corrupt or truncated (it does not load); training it again"]


def test_block_states_and_cached_tensors_follow_the_rule(tmp_path):
    import numpy as np
    import torch

    from kalib.method.blockwise import Amalgamation
    from kalib.runs.state import BlockStore, cached_tensor
    store = BlockStore(tmp_path, "fp")
    net = torch.nn.Linear(2, 2)
    result = Amalgamation(net, torch.nn.ModuleList(), None, np.zeros((2, 1)))
    result.train_loss, result.seconds = [[0.5], [0.4]], [1.0, 1.0]
    store.save(1, result)
    store.save(2, result)
    logs = []
    assert store.last_finished(2, logs.append) == 2 and not logs
    info = json.loads(store._json(2).read_text())
    del info["sha256"]                                                # a block state of an older kalib
    store._json(2).write_text(json.dumps(info))
    assert store.last_finished(2, logs.append) == 2                   # it loads
    store._pt(2).write_bytes(b"\0" * 10)
    assert store.last_finished(2, logs.append) == 1
    assert logs == [f"{store._pt(2)} is missing, corrupt or truncated; training again from block 2"]
    assert BlockStore(tmp_path, "other").last_finished(2, logs.append) == 0 and len(logs) == 1   # silent

    path = tmp_path / "soft" / "key.pt"
    assert torch.equal(cached_tensor(path, lambda: torch.ones(3)), torch.ones(3))
    assert torch.equal(cached_tensor(path, lambda: pytest.fail("recomputed")), torch.ones(3))
    path.write_bytes(b"cut")
    assert torch.equal(cached_tensor(path, lambda: torch.zeros(3)), torch.zeros(3))
