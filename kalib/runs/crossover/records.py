"""What every run of a crossover cell reads (:class:`Context`), and its records: one small JSON file per
finished run, named by arm, pool, seed and setting, keyed by everything its numbers depend on (data, teachers
by their weights, task set, arm settings, pool, seed, setting, held-out share, code path), written atomically,
re-used by a rerun on any machine; and the choice of a setting on the validation split."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ... import distributed
from ...device import resolve_precision
from ...errors import ConfigError, NonFiniteLossError
from ...files import atomic_write, file_sha
from ...macs import SAMPLE, forward_macs_per_image
from ...method.filters import task_plan
from ...metrics import mean_ap
from ...train import predict, to_input
from .. import experiments
from ..checkpoints import EpochFile, load_model
from ..config import digest
from ..presets import Preset, get_preset
from ..state import load_teachers, pool_soft_targets, teacher_files
from ..teachers import pretrain_set
from .protocol import CODE_PATH, Cell, Study

RECORD_FIELDS = ("arm", "pool", "seed", "setting", "val_map", "test_map", "params", "inference_macs", "train_macs",
                 "images_seen", "cpu_s", "key", "commit")


@dataclass
class Context:
    """One cell of a study: the preset, its data, the frozen teachers and their shared start θ₀, the task plan
    of the cell's C, the teachers' logits on the whole pool in C's order, where records and caches go."""
    study: Study
    cell: Cell
    preset: Preset
    bench: object
    teachers: list
    start: object                 # θ₀, the generic backbone the teachers were fine-tuned from
    plan: object
    soft: torch.Tensor
    teacher_key: list[str]        # SHA-256 of each teacher's weights: retrained alike, still equal
    records: Path
    cache: Path
    commit: str
    per_image: dict = dataclasses.field(default_factory=dict, repr=False)     # MAC counts, see counted()

    def eval_split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        labels = getattr(self.bench, f"{split}_labels")[:, self.bench.label_indices(self.plan.tasks)]
        return getattr(self.bench, f"{split}_images"), labels

    def pool_subset(self, pool: int, seed: int) -> torch.Tensor:
        """The ``pool`` images of a seed (sorted pool indices): the first ``pool`` of a seeded permutation of the
        whole pool, so a seed's smaller pools are parts of its larger ones; the same in every cell."""
        order = torch.randperm(len(self.bench.pool_images), generator=torch.Generator().manual_seed(10_007 + seed))
        return order[:pool].sort().values

    def counted(self, what, count: Callable[[], object]):
        """``count()``'s per-image MACs, counted the first time ``what`` is asked for in this process: they
        depend on the architectures and the image size only, which every run of the cell shares
        (:func:`kalib.runs.budget.alg1_costs`)."""
        if what not in self.per_image:
            self.per_image[what] = count()
        return self.per_image[what]

    @property
    def precision(self) -> str:
        """The training precision of every arm: the preset's, resolved for the CPU (fp32 or bf16)."""
        return resolve_precision(self.preset.precision, torch.device("cpu"))


def teachers_dir(out_dir: Path, teachers: str, given: Path | None = None) -> Path:
    """Where a teacher pair lives: ``given`` (``--teachers``) for pair-1, else ``OUT/teachers-<pair>``."""
    if given is not None and teachers == "pair-1":
        return Path(given)
    return Path(out_dir) / f"teachers-{teachers}"


def load_context(study: Study, cell: Cell, out_dir: Path, records: Path, pair1_dir: Path | None = None,
                 log: Callable[[str], None] = print) -> Context:
    """The cell's teachers (pretrained with their pair's seed where missing; finished ones re-used), their shared
    start, the task plan of its C, the teachers' logits on the pool (cached beside them) and where it writes."""
    preset = get_preset(study.preset)
    bench = experiments.load_variant(preset, "table1")
    tdir = teachers_dir(out_dir, cell.teachers, pair1_dir)
    pretrain_set(preset, bench, "2", tdir, dict(study.teacher_seeds)[cell.teachers], log=log)
    _, paths, generic = teacher_files(preset, tdir, "2")
    teachers, labels = load_teachers(paths)
    all_tasks = task_plan(None, labels)
    soft = pool_soft_targets(teachers, all_tasks, paths, bench, bench.pool_images, tdir)
    plan = task_plan(study.labels(cell.task_set), labels)
    columns = [all_tasks.tasks.index(t) for t in plan.tasks]
    start, _ = load_model(generic)
    return Context(study, cell, preset, bench, teachers, start.eval(), plan, soft[:, columns],
                   [file_sha(p) for p in paths], Path(records) / cell.teachers / cell.task_set,
                   Path(out_dir) / "cache" / cell.teachers / cell.task_set, code_version())


def code_version() -> str:
    """The commit of the code that runs (``+changes`` when kalib's files differ from it), or ``unknown``."""
    root = Path(__file__).resolve().parents[3]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "kalib"], capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


# ------------------------------------------------------------------------------------------------ records

def setting_name(setting: dict) -> str:
    """A setting as a file-name part: ``{"lr": 0.05, "start": "merge"}`` -> ``lr0.05-start-merge``."""
    parts = [f"{k}{v:g}" if isinstance(v, (int, float)) else f"{k}-{v}" for k, v in sorted(setting.items())]
    return "-".join(parts) or "as-is"


def record_path(ctx: Context, arm: str, pool: int, seed: int, setting: dict) -> Path:
    return ctx.records / f"{arm}-N{pool}-s{seed}-{setting_name(setting)}.json"


def record_key(ctx: Context, arm: str, pool: int, seed: int, setting: dict) -> str:
    """What a record's numbers depend on: data, teachers (their weights), the task set, the arm and the preset's
    settings of student, fine-tuning and KD (less the learning rates a run sets itself), pool, seed, setting,
    the held-out share, the training precision where it is not fp32, the number of processes where a run is
    data-parallel (torchrun: the numbers differ, docs/design.md §10), and the code path's version."""
    student = dataclasses.asdict(ctx.preset.student)
    student.pop("eq9_finetune_lr")
    student["finetune"].pop("lr")
    kd = {k: v for k, v in dataclasses.asdict(ctx.preset.baselines.kd).items() if k != "lr"}
    return digest({"code_path": CODE_PATH, "data": ctx.bench.spec.key(), "teachers": ctx.teacher_key,
                   "tasks": list(ctx.plan.tasks), "arm": arm, "pool": pool, "seed": seed, "setting": setting,
                   "student": student, "kd": kd, "heldout_share": ctx.study.heldout_share,
                   "budget_tolerance": ctx.study.budget_tolerance,
                   **({"precision": ctx.precision} if ctx.precision != "fp32" else {}),
                   **({"processes": distributed.size()} if distributed.size() > 1 else {})})


def checked(path: Path, record: object) -> dict:
    """``record`` as read from ``path`` if it has every field a record has; a :class:`ConfigError` naming the
    file and what to do otherwise."""
    missing = [f for f in RECORD_FIELDS if not isinstance(record, dict) or f not in record]
    if missing:
        raise ConfigError(f"{path} is not a complete crossover record (no {', '.join(missing)}): delete it and "
                          "rerun the study to make it again")
    return record


def read_record(path: Path, key: str) -> dict | None:
    """The finished record at ``path`` if its key is ``key``; None where there is none or it is of other
    settings or code; :class:`ConfigError` for a damaged one (:func:`checked`)."""
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path} is not readable JSON ({err}): delete it and rerun the study to make it "
                          "again") from None
    if not isinstance(record, dict) or record.get("key") != key:
        return None
    return checked(path, record)


def finished(ctx: Context, arm: str, pool: int, seed: int, setting: dict) -> dict | None:
    """The finished record of this run or None, as the one writer reads it (under torchrun every process gets
    rank 0's answer, :func:`kalib.distributed.on_writer`)."""
    return distributed.on_writer(lambda: read_record(record_path(ctx, arm, pool, seed, setting),
                                                     record_key(ctx, arm, pool, seed, setting)))


def records_of(ctx: Context, arm: str, pool: int, seed: int) -> list[dict]:
    """The finished records of ``arm`` at ``pool`` and ``seed``, every setting, in file order (as the one writer
    reads them)."""
    return distributed.on_writer(lambda: _records_of(ctx, arm, pool, seed))


def _records_of(ctx: Context, arm: str, pool: int, seed: int) -> list[dict]:
    found = []
    for path in sorted(ctx.records.glob(f"{arm}-N{pool}-s{seed}-*.json")):
        try:
            record = json.loads(path.read_text())
            key = record_key(ctx, arm, pool, seed, record["setting"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if record.get("key") == key:
            found.append(checked(path, record))
    return found


def write_record(ctx: Context, record: dict) -> dict:
    key = record_key(ctx, record["arm"], record["pool"], record["seed"], record["setting"])
    record = {**record, "key": key, "commit": ctx.commit, "threads": torch.get_num_threads(),
              **({"precision": ctx.precision} if ctx.precision != "fp32" else {})}
    path = record_path(ctx, record["arm"], record["pool"], record["seed"], record["setting"])

    def write() -> dict:
        atomic_write(path, lambda p: p.write_text(json.dumps(record, indent=1) + "\n"))
        return record
    return distributed.on_writer(write)             # under torchrun: rank 0's record, on every rank


def scores(ctx: Context, net: torch.nn.Module) -> dict[str, float]:
    """Validation and test mAP (VOC 2007 11-point AP, mean over the labels of C) of a network with C's outputs."""
    out = {}
    for split in ("val", "test"):
        images, labels = ctx.eval_split(split)
        out[f"{split}_map"] = round(float(mean_ap(predict(net, images).numpy(), labels.numpy())), 3)
    return out


def size(ctx: Context, net: torch.nn.Module) -> dict[str, int]:
    """Parameters, and inference MACs per image counted by FlopCounterMode while ``net`` runs on test images."""
    x = to_input(ctx.bench.test_images[:SAMPLE])
    return {"params": sum(p.numel() for p in net.parameters()),
            "inference_macs": int(round(forward_macs_per_image(net, x)))}


@dataclass
class Known:
    """What a run knows before it trains (size, MACs, branch points, ...) and the network it starts that training
    from: a run whose loss diverges keeps the first and is scored with the second (a failure counts against
    its arm, docs/design.md §9)."""
    values: dict = dataclasses.field(default_factory=dict)
    start: torch.nn.Module | None = None


def finished_or_run(ctx: Context, arm: str, pool: int, seed: int, setting: dict,
                    train: Callable[[EpochFile, Known], dict]) -> dict:
    """The record of this run: the finished one, or ``train(partial, known)`` timed and written as a record (its
    epochs kept in ``partial`` meanwhile, so a killed run resumes inside its training)."""
    if (record := finished(ctx, arm, pool, seed, setting)) is not None:
        return record
    path = record_path(ctx, arm, pool, seed, setting)
    partial = EpochFile(ctx.cache / "partial" / path.with_suffix(".pt").name, record_key(ctx, arm, pool, seed, setting))
    wall, cpu, known = time.perf_counter(), time.process_time(), Known()
    try:
        out = train(partial, known)
    except NonFiniteLossError as err:        # this setting diverges: ranked lowest in a grid, a failure if chosen
        start = scores(ctx, known.start) if known.start is not None else {"val_map": None, "test_map": None}
        out = {**known.values, "diverged": str(err), "val_map": None, "test_map": None,
               "start_val_map": start["val_map"], "start_test_map": start["test_map"]}
    record = write_record(ctx, {"arm": arm, "pool": pool, "seed": seed, "setting": setting, **out,
                                "wall_s": round(time.perf_counter() - wall, 1),
                                "cpu_s": round(time.process_time() - cpu, 1)})
    partial.remove()
    return record


# --------------------------------------------------------------------------------------------- settings

def rank(val_map: float | None) -> float:
    """A run's validation mAP for choosing: a run whose loss diverged (None) ranks below every other."""
    return -math.inf if val_map is None else val_map


def best(records: Sequence[dict]) -> dict:
    """The validation-best record (ties: the smaller learning rate or λ, then file order)."""
    return max(records, key=lambda r: (rank(r["val_map"]), -min((v for v in r["setting"].values()
                                                                   if isinstance(v, (int, float))), default=0)))


def grid_step(results: dict[float, float | None], max_grid: int) -> float | None:
    """The next learning rate to try, or None: halve below the lowest or double above the highest while the
    best validation mAP sits at that edge and the grid has fewer than ``max_grid`` points."""
    lrs = sorted(results)
    top = max(lrs, key=lambda lr: (rank(results[lr]), -lr))
    if len(lrs) >= max_grid or lrs[0] < top < lrs[-1] or len(lrs) < 2:
        return None
    return round(top / 2, 6) if top == lrs[0] else round(top * 2, 6)


def tuned(run_one: Callable[[float], dict], grid: Sequence[float], max_grid: int) -> list[dict]:
    """``run_one(lr)`` over ``grid``, extended by :func:`grid_step` until the best is inside (or the grid is
    full); the records in the order run."""
    records = [run_one(lr) for lr in grid]
    while (lr := grid_step({r["setting"]["lr"]: r["val_map"] for r in records}, max_grid)) is not None:
        records.append(run_one(lr))
    return records


def tuning_context(ctx: Context, contexts: dict) -> Context:
    """The context of the cell whose first seed chose ``ctx``'s settings (itself where the cell is tuned)."""
    return contexts[ctx.study.tuning_cell(ctx.cell).name]


def chosen(ctx: Context, arm: str, pool: int, select: Callable[[dict], bool] = lambda r: True) -> dict:
    """The setting of ``arm`` at ``pool`` chosen on the validation split with the first seed of ``ctx``'s cell
    (a tuned cell's context): the validation-best of its records that ``select`` keeps."""
    seed = ctx.cell.seeds[0]
    grid = [r for r in records_of(ctx, arm, pool, seed) if select(r)]
    if not grid:
        raise ConfigError(f"{arm} at N = {pool} has no tuning records for seed {seed} in {ctx.records}; run the "
                          "study with that seed first")
    return best(grid)["setting"]
