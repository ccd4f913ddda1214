"""The parts a preset is made of (docs/design.md §4), each a small frozen dataclass that checks its own
fields when it is built, so that a value that cannot run (``--set loss_slice=0``, ``block.lr=inf``) is
refused with a :class:`~kalib.errors.ConfigError` before any work:

* :class:`Networks`: the backbones and the shared start of teachers and student (docs/design.md §1);
* :class:`Labels`: the label groups A_n of the teachers and the Fig. 3 pairs;
* :class:`Pretraining`: the generic stage and the teachers (Eq. 2);
* :class:`Student`: block-wise amalgamation (Alg. 1, Eq. 6–8), branch-out (Eq. 9) and fine-tuning;
* :class:`Baselines`: the KD baseline (beyond the paper);
* :class:`SideRuns`: what the side runs (Target-3, TargetDenseNet, Table 2) change.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from ..method.student import INITS
from ..models import ARCHS, build_backbone
from ..train import Schedule

SHARED_STARTS = ("generic", "imagenet", "random")   # random: a seeded random start (paper presets, no weights)
CACHE_DTYPES = ("float32", "bfloat16", "float16")
MAX_SEED = 2 ** 31 - 1     # seeds are scaled and offset on the way to torch's and numpy's generators (64 bits)


def refuse(part: str, problems: list[str]) -> None:
    """Raise one :class:`ConfigError` listing every problem of a config part (nothing when there is none)."""
    if problems:
        raise ConfigError(f"invalid {part} settings: {'; '.join(problems)}")


def non_negative(obj, *names: str) -> list[str]:
    return [f"{n} must be >= 0, got {getattr(obj, n)}" for n in names if not getattr(obj, n) >= 0]


@dataclass(frozen=True)
class Networks:
    """Backbones: ``arch`` for the ResNet teacher sets and the student, ``dense_arch`` for TargetDenseNet,
    their keyword arguments, and the shared start (``init``: the embedded presets' ``generic`` stage, or
    torchvision's ``imagenet`` weights, looked up in ``weights_paths[arch]`` or the torch hub cache)."""
    arch: str = "resnet18_narrow"
    arch_kwargs: dict = field(default_factory=dict)
    dense_arch: str = "densenet_small"
    dense_kwargs: dict = field(default_factory=dict)
    init: str = "generic"
    weights_paths: dict = field(default_factory=dict)

    def __post_init__(self):
        refuse("network", [f"{name} must be one of {', '.join(ARCHS)}, got {getattr(self, name)!r}"
                           for name in ("arch", "dense_arch") if getattr(self, name) not in ARCHS]
               + ([] if self.init in SHARED_STARTS else
                  [f"init must be one of {', '.join(SHARED_STARTS)}, got {self.init!r}"])
               + ([] if all(isinstance(v, str) for v in self.weights_paths.values()) else
                  [f"weights_paths must map an arch to a file name, got {self.weights_paths!r}"]))

    def check_buildable(self) -> None:
        """Refuse ``arch_kwargs``/``dense_kwargs`` the networks cannot be built with (an unknown keyword, a
        width too small), by building both on the meta device (no memory, no computation): called where a
        command starts, since building costs a moment."""
        for arch, kwargs, name in ((self.arch, self.arch_kwargs, "arch_kwargs"),
                                   (self.dense_arch, self.dense_kwargs, "dense_kwargs")):
            try:
                with torch.device("meta"):
                    build_backbone(arch, 2, **kwargs)
            except (TypeError, ValueError, RuntimeError) as err:
                raise ConfigError(f"{name} {kwargs} do not build a {arch}: {str(err).splitlines()[0]}") from None


@dataclass(frozen=True)
class Labels:
    """The label groups A_n: ``groups`` for the two-teacher set (Table 1), ``groups3`` for the three-teacher
    set (Target-3); ``pairs``: Fig. 3's pairs, name -> (task of teacher 1, task of teacher 2)."""
    groups: tuple[tuple[str, ...], ...]
    groups3: tuple[tuple[str, ...], ...]
    pairs: dict = field(default_factory=dict)

    def __post_init__(self):
        problems = []
        for name in ("groups", "groups3"):
            groups = getattr(self, name)
            flat = [t for g in groups for t in g] if all(isinstance(g, (list, tuple)) for g in groups) else [None]
            if len(set(flat)) != len(flat) or not all(groups) or not all(isinstance(t, str) for t in flat):
                problems.append(f"{name} must be non-empty groups of label names that share no label")
            elif len(groups) < 2:
                problems.append(f"{name} must have two or more groups (one teacher each), got {len(groups)}")
        if not isinstance(self.pairs, dict) or not all(
                isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(t, str) for t in p)
                for p in self.pairs.values()):
            problems.append(f"pairs must map names to two labels, e.g. {{\"unrelated\": [\"bus\", \"dog\"]}}, got "
                            f"{self.pairs!r}")
        refuse("label", problems)

    def check_pairs(self) -> None:
        """Refuse Fig. 3 pairs that are not one label of teacher 1 and one of teacher 2 (the two-teacher
        ``groups``): checked where Fig. 3 is drawn (``reproduce``), not where the groups are only trained
        (``pretrain``, ``amalgamate``), so that new groups need new pairs only there."""
        bad = [f"{name} {list(pair)}" for name, pair in self.pairs.items()
               if len(self.groups) != 2 or pair[0] not in self.groups[0] or pair[1] not in self.groups[1]]
        if bad:
            raise ConfigError(f"Fig. 3 pairs {', '.join(bad)} are not one label of teacher 1 and one of teacher 2 "
                              f"(groups {[list(g) for g in self.groups]}); give pairs of these groups with --set "
                              "'pairs={\"unrelated\": [\"A\", \"B\"]}'")


@dataclass(frozen=True)
class Pretraining:
    """The schedules of the generic stage (the shared start, docs/design.md §1) and of the teachers (Eq. 2)."""
    generic: Schedule
    teacher: Schedule


@dataclass(frozen=True)
class Student:
    """Block-wise amalgamation, branch-out and fine-tuning (Alg. 1).

    Blocks train with ``block`` (SGD + poly) over a seeded subset of ``block_images`` of the first
    ``pool_images`` pool images (0: all), ``block_epochs`` epochs each (a depth profile,
    :func:`kalib.method.pool.epochs_per_block`; () = ``block.epochs`` for every block). The last
    ``loss_slice`` images of that pool are held out for the converged losses L_i^k. The student starts as
    ``student_init`` (:func:`kalib.method.student.init_student`; ``generic`` is the paper's start).
    ``branch_tolerance`` 0 is Eq. 9; > 0 (beyond the paper) takes the deepest block within that many nats of
    the minimum. The TargetNet is fine-tuned with ``finetune`` over ``finetune_images`` pool images, keeping
    the BatchNorm statistics where ``finetune_freeze_bn``. ``filter_reduction``: Eq. 4's hidden width is
    channels / reduction. ``eq9_finetune_lr``: the learning rate of the Eq. 9 TargetNet's fine-tuning where a
    preset shows it beside another rule's (0: ``finetune.lr``). ``amalgamation_cache``: dtype of the cached F_u^{k-1}. ``pair_block_images``:
    images per block of the two-task Fig. 3 students (0: ``block_images``)."""
    block: Schedule = Schedule(epochs=1, lr=0.1, batch_size=32, weight_decay=5e-4)
    pool_images: int = 0
    block_images: int = 0
    block_epochs: tuple[int, ...] = ()
    student_init: str = "generic"
    loss_slice: int = 500
    finetune: Schedule = Schedule(epochs=1, lr=0.01, batch_size=32, weight_decay=5e-4)
    finetune_images: int = 0
    finetune_freeze_bn: bool = True
    eq9_finetune_lr: float = 0.0
    filter_reduction: int = 4
    branch_tolerance: float = 0.0
    amalgamation_cache: str = "float32"
    pair_block_images: int = 0

    def __post_init__(self):
        problems = non_negative(self, "pool_images", "block_images", "finetune_images", "pair_block_images",
                                "eq9_finetune_lr")
        if not self.loss_slice >= 1:
            problems.append(f"loss_slice must be >= 1 (held-out pool images), got {self.loss_slice}")
        if any(not e >= 0 for e in self.block_epochs):
            problems.append(f"block_epochs must be non-negative, got {list(self.block_epochs)}")
        if self.student_init not in INITS:
            problems.append(f"student_init must be one of {', '.join(INITS)}, got {self.student_init!r}")
        if not self.filter_reduction >= 1:
            problems.append(f"filter_reduction must be >= 1, got {self.filter_reduction}")
        if not 0 <= self.branch_tolerance < math.inf:
            problems.append(f"branch_tolerance must be >= 0 and finite, got {self.branch_tolerance}")
        if self.amalgamation_cache not in CACHE_DTYPES:
            problems.append(f"amalgamation_cache must be one of {', '.join(CACHE_DTYPES)}, "
                            f"got {self.amalgamation_cache!r}")
        refuse("student", problems)


@dataclass(frozen=True)
class Baselines:
    """The KD baseline (beyond the paper): its batch size, learning rate and optimiser. It trains for the image
    passes that give it the training MACs of its table's main TargetNet (:func:`kalib.runs.baselines.kd_run`),
    so ``kd.epochs`` is not read."""
    kd: Schedule = Schedule(epochs=0, lr=0.1, batch_size=64, weight_decay=5e-4)


@dataclass(frozen=True)
class SideRuns:
    """What the side runs (Target-3, TargetDenseNet and every run of Table 2) change: a cheaper teacher
    schedule (``teacher``, None = the main one), a smaller amalgamation pool of ``pool_images`` training
    images plus the held-out slice, on which every block and the fine-tuning use all images (None = the main
    run's pool), and their own branch-out rule (``branch_tolerance``; 0 is Eq. 9)."""
    teacher: Schedule | None = None
    pool_images: int | None = None
    branch_tolerance: float = 0.0

    def __post_init__(self):
        problems = [] if self.pool_images is None else non_negative(self, "pool_images")
        if not 0 <= self.branch_tolerance < math.inf:
            problems.append(f"branch_tolerance must be >= 0 and finite, got {self.branch_tolerance}")
        refuse("side-run", problems)
