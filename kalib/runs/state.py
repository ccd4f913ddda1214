"""The files of an amalgamation run (:mod:`kalib.runs.amalgamation`): the teacher checkpoints it reads and checks, and
the per-block state in ``OUT/blocks`` that lets an interrupted run resume after its last finished block.

Under torchrun (:mod:`kalib.distributed`) rank 0 alone writes these files and decides from what is on disk
(a finished block, a cached tensor); the other processes wait for it and read what it wrote."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from ..distributed import on_writer
from ..errors import CheckpointError, ConfigMismatchError, MissingFileError
from ..files import atomic_write, file_sha
from ..method.blockwise import Amalgamation, BlockHooks, soft_targets
from ..method.student import freeze
from .checkpoints import EpochFile, load_model, load_state
from .config import changed_keys, digest, file_digest, weights_key
from .records import DAMAGED, read_record, verify
from .teachers import teacher_paths


def teacher_files(preset, teachers_dir: str | Path, teacher_set: str = "2") -> tuple[str, list[Path], Path]:
    """(arch, teacher checkpoint paths, generic checkpoint path) of a teacher set in ``teachers_dir``
    (:func:`kalib.runs.teachers.teacher_paths`: old checkpoint names are found too)."""
    groups, arch, _ = preset.teacher_set(teacher_set)
    d = Path(teachers_dir)
    if d.exists() and not d.is_dir():
        raise MissingFileError(f"--teachers {d} is a file; give the folder `kalib pretrain --out DIR` wrote")
    paths = teacher_paths(d, arch, len(groups))
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise MissingFileError(f"no teacher checkpoints {', '.join(missing)} in {d}; run "
                                f"`python -m kalib pretrain --preset {preset.name} --out {d} "
                                f"--teacher-sets {teacher_set}` first")
    return arch, paths, d / f"generic-{arch}.pt"


def load_teachers(paths: Sequence[Path], device=None) -> tuple[list, list[list[str]]]:
    """The teachers at ``paths``, frozen (and on ``device``), and the labels each of them knows."""
    loaded = [load_model(p) for p in paths]
    return freeze([m for m, _ in loaded], device), [meta["labels"] for _, meta in loaded]


FOREIGN = ("pretrain teachers with this run's --preset and --set values, or amalgamate with the --preset and "
           "--set values the teachers were trained with")


def check_teachers(paths: Sequence[Path], metas: Sequence[dict], arch: str, label_names: Sequence[str] | None,
                   generic_path: Path | None = None, generic_meta: dict | None = None, *,
                   data_key: str | None = None, arch_kwargs: dict | None = None) -> None:
    """Refuse teachers that cannot be amalgamated together, or not in this run, with a one-line reason: a
    checkpoint that is not a teacher, another architecture than the teacher set's (or than each other's),
    another architecture config (``arch_kwargs``, e.g. a width), other data than the run's (``data_key``,
    recorded by pretrain), labels the dataset does not have, or a generic backbone of another architecture."""
    for path, meta in zip(paths, metas):
        role = meta.get("role", "teacher")
        if role != "teacher":
            raise CheckpointError(f"{path} is a {role} checkpoint, not a teacher")
        config = meta.get("config", {})
        if config.get("arch") != arch:
            raise CheckpointError(f"teachers of different architectures: {path} is {config.get('arch')}, the teacher "
                                  f"set needs {arch} (amalgamation needs teachers of one architecture); rerun pretrain")
        wanted = json.loads(json.dumps(arch_kwargs or {}))        # as the checkpoint's JSON holds it: tuples as lists
        changed = {k: (config.get(k), v) for k, v in wanted.items() if config.get(k) != v}
        if changed:
            raise CheckpointError(f"{path} is a {arch} of another architecture config ("
                                  + ", ".join(f"{k} {got}, this run's {want}" for k, (got, want) in changed.items())
                                  + f"); {FOREIGN}")
        if data_key is not None and meta.get("data") not in (None, data_key):
            raise CheckpointError(f"{path} was trained on other data (data key {meta['data']}, this run's is "
                                  f"{data_key}); {FOREIGN}")
        unknown = [n for n in meta.get("labels", []) if label_names is not None and n not in label_names]
        if unknown:
            raise CheckpointError(f"{path} is a teacher for labels {unknown} that the dataset does not have; "
                                  "use teachers pretrained on this preset's data")
    if generic_meta is not None and generic_meta.get("config", {}).get("arch") != arch:
        raise CheckpointError(f"{generic_path} is a {generic_meta.get('config', {}).get('arch')} network, "
                              f"not the {arch} the teachers started from; rerun pretrain or use --init random")


class BlockStore:
    """Per-block student + filter state in ``DIR/blocks/``, so a rerun resumes after the last finished
    block. A block counts only when its JSON (written after its weights) carries this run's fingerprint.
    ``blocks/config.json`` holds the fingerprint and the settings behind it; ``blockKK.partial.pt`` and
    ``finetune-*.partial.pt`` the per-epoch state of the unit in progress."""

    def __init__(self, out_dir: Path, fingerprint: str, legacy: str | None = None):
        self.dir = Path(out_dir) / "blocks"
        self.fingerprint = fingerprint
        self.legacy = legacy      # the fingerprint as kalib computed it before it keyed teachers by their weights

    def prepare(self, settings: dict, restart: bool = False, log: Callable[[str], None] | None = None) -> None:
        """Check that the saved state belongs to ``settings`` (:class:`ConfigMismatchError` naming the
        changed settings otherwise) and record them; ``restart`` first deletes this directory, and only
        it (teachers and other runs are never touched). State saved under the ``legacy`` fingerprint is taken
        as it is: the store keeps that fingerprint (and the run its key). A damaged ``config.json`` is written
        again: every block and epoch file carries the fingerprint it belongs to. Under torchrun rank 0 decides
        and every rank keeps its choice of fingerprint."""
        self.fingerprint = on_writer(lambda: self._prepare(settings, restart, log))

    def _prepare(self, settings: dict, restart: bool, log: Callable[[str], None] | None) -> str:
        config = self.dir / "config.json"
        if restart and self.dir.exists():
            shutil.rmtree(self.dir)
            if log:
                log(f"--restart: removed {self.dir}")
        old = read_record(config) if config.is_file() else None
        if config.is_file() and old is None and log:
            log(f"{config} is damaged; written again (each finished block is still checked against its own JSON)")
        if old is not None:
            if self.legacy is not None and old.get("fingerprint") == self.legacy:
                self.fingerprint = self.legacy       # a directory of an older kalib keeps its key and its blocks
            if old.get("fingerprint") != self.fingerprint:
                changed = changed_keys(old.get("settings", {}), json.loads(json.dumps(settings)))
                raise ConfigMismatchError(
                    f"{self.dir} holds the block states of another configuration (changed: "
                    f"{', '.join(changed) or 'unknown'}); rerun with --restart to discard them and start "
                    "over, or choose another --out directory")
        else:
            info = {"fingerprint": self.fingerprint, "settings": settings}
            atomic_write(config, lambda p: p.write_text(json.dumps(info, indent=1, default=str)))
        for stale in self.dir.glob(".*.tmp*"):     # temporary files of a killed run
            stale.unlink(missing_ok=True)
        return self.fingerprint

    def hooks(self, done: int, names: Sequence[str], log: Callable[[str], None] | None = None) -> BlockHooks:
        """The hooks of block-wise training (:class:`kalib.method.blockwise.BlockHooks`): block k's epochs in
        ``blockKK.partial.pt`` (resumed from where one is left), every finished block kept (:meth:`save`) and
        its epoch file removed. Epoch files of the ``done`` blocks already finished are removed first (left
        by a kill right after the block was saved)."""
        for k in range(1, done + 1):
            self._partial(k).remove()

        def epoch_store(k: int) -> EpochFile:
            partial = self._partial(k)
            if partial.exists() and log:
                log(f"block {names[k - 1]} ({k}/{len(names)}): resuming from {partial}")
            return partial

        def on_block_end(k: int, result: Amalgamation) -> None:
            def keep() -> None:           # one step of the one writer under torchrun: no epoch file outlives its block
                self.save(k, result)
                self._partial(k).remove()
            on_writer(keep)
        return BlockHooks(epoch_store=epoch_store, on_block_end=on_block_end, log=log)

    def _partial(self, k: int) -> EpochFile:
        return EpochFile(self.dir / f"block{k:02d}.partial.pt", f"{self.fingerprint}:block{k}")

    def _json(self, k: int) -> Path:
        return self.dir / f"block{k:02d}.json"

    def save(self, k: int, result: Amalgamation) -> None:
        on_writer(lambda: self._save(k, result))

    def _save(self, k: int, result: Amalgamation) -> None:
        state = {"student": result.student.state_dict(), "filters": result.filters.state_dict()}
        atomic_write(self._pt(k), lambda p: torch.save(state, p))
        info = {"fingerprint": self.fingerprint, "block": k, "losses": result.losses[:k].tolist(),
                "train_loss": result.train_loss[:k], "seconds": result.seconds[:k], "sha256": file_sha(self._pt(k))}
        atomic_write(self._json(k), lambda p: p.write_text(json.dumps(info)))

    def _pt(self, k: int) -> Path:
        return self.dir / f"block{k:02d}.pt"

    def last_finished(self, num_blocks: int, log: Callable[[str], None] | None = None) -> int:
        """The number of leading blocks that are finished (:func:`kalib.runs.records.verify`): JSON of this
        fingerprint, weights that still match the digest in it (or, saved without one, still load). A
        damaged block is trained again, and so are the blocks after it."""
        return on_writer(lambda: self._last_finished(num_blocks, log))

    def _last_finished(self, num_blocks: int, log: Callable[[str], None] | None) -> int:
        done = 0
        for k in range(1, num_blocks + 1):
            info = read_record(self._json(k))
            if info is None:
                break
            verdict = verify(info.get("fingerprint"), self.fingerprint, {self._pt(k): info.get("sha256")},
                             load=load_state)
            if verdict.status == DAMAGED and log:
                log(f"{self._pt(k)} is missing, corrupt or truncated; training again from block {k}")
            if not verdict.valid:
                break
            done = k
        return done

    def load(self, k: int, result: Amalgamation) -> Amalgamation:
        state = load_state(self._pt(k))
        result.student.load_state_dict(state["student"])
        result.filters.load_state_dict(state["filters"])
        info = json.loads(self._json(k).read_text())
        result.losses[:k] = np.asarray(info["losses"])
        result.train_loss, result.seconds = info["train_loss"], info["seconds"]
        return result


def cached_tensor(path: Path, compute: Callable[[], torch.Tensor], legacy: Path | None = None) -> torch.Tensor:
    """The tensor saved at ``path`` (or, where there is none, at ``legacy``: its name under an older key), or
    ``compute()`` saved at ``path`` (atomically) when the file is missing or unreadable. The file's name is its
    key (the caller's digest of what the tensor depends on) and no digest of its bytes is kept, so
    :func:`kalib.runs.records.verify` checks it by loading it. Under torchrun rank 0 reads (and hands to the
    others) or writes the file; every process computes it (``compute`` may share the work)."""
    def saved() -> torch.Tensor | None:
        for file in (path, legacy):
            if file is not None and file.is_file():
                verdict = verify(file.stem, file.stem, {file: None}, load=load_state)
                if verdict.valid:
                    return verdict.loaded[file]
        return None
    value = on_writer(saved)
    if value is not None:
        return value
    value = compute()
    on_writer(lambda: atomic_write(path, lambda p: torch.save(value, p)))
    return value


def pool_soft_targets(teachers, plan, paths, bench, pool: torch.Tensor, teachers_dir: Path,
                      device=None) -> torch.Tensor:
    """Every teacher's logits for all its labels on ``pool`` (``plan`` is C = A), computed once per teacher
    set, data and pool size and cached in ``teachers_dir/soft-targets`` (shared with the amalgamation runs)."""
    key = digest([bench.spec.key(), len(pool), [weights_key(p) for p in paths]])
    legacy = digest([bench.spec.key(), len(pool), [file_digest(p) for p in paths]])
    return cached_tensor(Path(teachers_dir) / "soft-targets" / f"{key}.pt",
                         lambda: soft_targets(teachers, pool, plan, device=device),
                         legacy=Path(teachers_dir) / "soft-targets" / f"{legacy}.pt")
