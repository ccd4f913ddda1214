"""The crossover study's protocol (docs/design.md §9), as the code runs it: teachers, task sets, cells (pools and
seeds), arms, grids, the held-out share, the equivalence margin and how budgets are matched. Fixed at
:data:`PROTOCOL_COMMIT` before the first run of version 2; a record is re-used only under the same
:data:`CODE_PATH` (raise it when the numbers of the study's code path change: tests/test_crossover.py compares a
smoke study with the numbers the protocol commit's code gave)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ...errors import ConfigError

PROTOCOL_COMMIT = "e3a94b519cb6"     # docs/design.md §9, version 2, committed before its first run
CODE_PATH = 1                        # the version of the code path that makes a record's numbers
VERSION = 2                          # of the study (version 1: e71a9c8 and before)

AMALGAMATION_ARMS = ("amalgamation-b4", "amalgamation", "amalgamation-eq9")
KD_ARMS = {"kd": ("amalgamation-b4", 1.0), "kd-tol": ("amalgamation", 1.0), "kd-eq9": ("amalgamation-eq9", 1.0),
           "kd-2x": ("amalgamation-b4", 2.0)}           # arm -> (the arm whose training MACs set its budget, factor)
ARMS = ("teachers", "merge", *AMALGAMATION_ARMS, *KD_ARMS, "amalgamation-b4-2x")
KD_STARTS = ("teacher-mean", "merge", "random-head")
CUSTOM = ("pullover", "shirt", "t-shirt", "two")     # Fig. 3's two pairs: two labels from each teacher
DEPENDS = {"kd": ("amalgamation-b4", "merge"), "kd-tol": ("amalgamation", "kd"), "kd-eq9": ("amalgamation-eq9", "kd"),
           "kd-2x": ("amalgamation-b4", "kd"), "amalgamation-b4-2x": ("amalgamation-b4",)}


@dataclass(frozen=True)
class Cell:
    """Teachers and task set, with the pool sizes and seeds run on them. A cell that is not ``tuned`` uses the
    settings chosen on the tuned cell of the same task set (its pools must be among that cell's)."""
    teachers: str
    task_set: str
    pools: tuple[int, ...]
    seeds: tuple[int, ...]
    tuned: bool = True

    @property
    def name(self) -> str:
        return f"{self.teachers}/{self.task_set}"


@dataclass(frozen=True)
class Grids:
    """First grids of the settings tuned on the validation split (seed: a tuned cell's first). Learning-rate
    grids grow by halving or doubling while their best point is at an edge, up to ``max_grid`` points; the
    merge's λ grid is fixed."""
    finetune_lrs: tuple[float, ...] = (0.02, 0.05, 0.1)
    kd_lrs: tuple[float, ...] = (0.1, 0.2, 0.4)
    extension_lrs: tuple[float, ...] = (0.02, 0.05, 0.1)
    merge_lambdas: tuple[float, ...] = (0.3, 0.4, 0.5, 0.7, 1.0)
    max_grid: int = 6


@dataclass(frozen=True)
class Study:
    """One crossover study: the preset whose teachers, data and schedules it uses, its cells, the seed each
    teacher pair is pretrained with, the task sets (None: C = A), arms, grids, the share of N held out for
    L_i^k, the equivalence margin (mAP), the relative MAC difference beyond which an amalgamation arm gets KD
    at its own budget, and the level of the intervals."""
    preset: str
    cells: tuple[Cell, ...]
    teacher_seeds: tuple[tuple[str, int], ...] = (("pair-1", 0), ("pair-2", 1))
    task_sets: tuple[tuple[str, tuple[str, ...] | None], ...] = (("all", None), ("custom", CUSTOM))
    arms: tuple[str, ...] = ARMS
    grids: Grids = field(default_factory=Grids)
    heldout_share: float = 0.1
    margin: float = 0.5
    budget_tolerance: float = 0.1
    alpha: float = 0.05

    def __post_init__(self):
        problems = []
        teachers, task_sets = dict(self.teacher_seeds), dict(self.task_sets)
        for cell in self.cells:
            if cell.teachers not in teachers or cell.task_set not in task_sets:
                problems.append(f"cell {cell.name}: unknown teachers or task set")
            if not cell.pools or any(n < 1 for n in cell.pools) or len(set(cell.pools)) != len(cell.pools):
                problems.append(f"cell {cell.name}: pool sizes must be distinct and >= 1, got {list(cell.pools)}")
            if not cell.seeds or len(set(cell.seeds)) != len(cell.seeds):
                problems.append(f"cell {cell.name}: seeds must be distinct, got {list(cell.seeds)}")
            if not cell.tuned:
                tuning = self.tuning_cell(cell)
                if tuning is None or not set(cell.pools) <= set(tuning.pools):
                    problems.append(f"cell {cell.name} is not tuned, so a tuned cell of task set {cell.task_set} "
                                    "must have its pools")
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or len(set(self.arms)) != len(self.arms) or not self.arms:
            problems.append(f"arms must be distinct names from {', '.join(ARMS)}, got {list(self.arms)}")
        if not 0 < self.heldout_share < 1:
            problems.append(f"heldout_share must be between 0 and 1, got {self.heldout_share}")
        if problems:
            raise ConfigError(f"invalid crossover study: {'; '.join(problems)}")

    def tuning_cell(self, cell: Cell) -> Cell | None:
        """The cell whose first seed chose ``cell``'s settings: itself if tuned, else the first tuned cell of its
        task set."""
        if cell.tuned:
            return cell
        return next((c for c in self.cells if c.tuned and c.task_set == cell.task_set), None)

    def labels(self, task_set: str) -> tuple[str, ...] | None:
        return dict(self.task_sets)[task_set]

    def heldout(self, pool: int) -> int:
        """The held-out slice of the amalgamation arms at pool size N: the last ``heldout_share`` of the N images
        (at least 1)."""
        return max(1, round(self.heldout_share * pool))

    def protocol(self) -> dict:
        """The protocol as the JSON states it: every field, the commit that fixed it and the code path."""
        return {"commit": PROTOCOL_COMMIT, "code_path": CODE_PATH, "version": VERSION,
                **json_ready(dataclasses.asdict(self)), "changes": list(CHANGES)}


def json_ready(value):
    """Tuples as lists, recursively (so that a protocol compares equal with its JSON)."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


# What changed in the protocol after a test number of version 2 was seen (named in the study's markdown and the
# README's quote of it).
CHANGES: tuple[str, ...] = (
    "the decision table ranks only the arms run at every seed of a cell and pool: kd-tol had run at one seed of "
    "pair-1/custom at N = 1,000 (the only seed where the tolerance net's budget differed from amalgamation-b4's by "
    "more than a tenth), and that seed's mAP was ranked against means over five seeds (the runs and the pairs of the "
    "verdict are unchanged)",)

QUICK_POOLS = (250, 500, 1000, 4000)
STUDIES = {
    "quick": Study("quick", cells=(Cell("pair-1", "all", QUICK_POOLS, (0, 1, 2, 3, 4)),
                                   Cell("pair-1", "custom", QUICK_POOLS, (0, 1, 2, 3, 4)),
                                   Cell("pair-2", "all", (250, 4000), (0, 1, 2, 3, 4), tuned=False))),
    # the tests' study: every arm, cell kind and stage in about a minute on one core; numbers at chance (one pool:
    # a second, 128, took 40 % of its CPU time in make test; tests/test_crossover.py reads several pools on its own)
    "smoke": Study("smoke", cells=(Cell("pair-1", "all", (64,), (0, 1)), Cell("pair-1", "custom", (64,), (0, 1)),
                                   Cell("pair-2", "all", (64,), (0, 1), tuned=False)),
                   grids=Grids(finetune_lrs=(0.02, 0.05), kd_lrs=(0.1, 0.2), extension_lrs=(0.02, 0.05),
                               merge_lambdas=(0.5, 1.0), max_grid=2)),
}
