"""Presets (docs/design.md §4) as plain dataclasses: data, backbones, label groups and schedules.

* ``smoke``: a few hundred canvases, a width-8 network; every step takes seconds, and the numbers are at
  chance level (the unit tests).
* ``lesson``: the learner's preset: small canvases and short schedules, all five notebooks in minutes with
  numbers far above chance (the notebooks' default, nbval).
* ``quick``: the full embedded benchmark on a laptop CPU in minutes (``make reproduce``).
* ``paper-voc07``, ``paper-voc12``, ``paper-coco``: the paper's experiments (Tables 1–3, Fig. 3) on PASCAL
  VOC 2007 / 2012 and MS-COCO 2014 (``--data-root``), ResNet-50 and DenseNet-121 from ImageNet weights,
  the paper's optimiser settings (§4.1); for a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..data.coco import COCO_CLASSES
from ..data.embedded import LABEL_NAMES, BenchmarkSpec
from ..data.groups import fig3_pairs, seeded_split
from ..data.paper import PaperSpec
from ..data.voc import VOC_CLASSES
from ..train import Schedule

SPLIT_SEED = 0   # the seeded 10/10 and 7/7/6 label splits, fixed like the paper's random VOC split
GROUPS_2 = seeded_split(LABEL_NAMES, (10, 10), SPLIT_SEED)
GROUPS_3 = seeded_split(LABEL_NAMES, (7, 7, 6), SPLIT_SEED)


@dataclass(frozen=True)
class Preset:
    name: str
    data: BenchmarkSpec | PaperSpec         # Table 1's benchmark: embedded canvases or VOC/COCO (load_dataset)
    generic: Schedule                       # the shared "ImageNet" stage (docs/design.md §1)
    teacher: Schedule                       # Eq. 2 pretraining
    arch: str = "resnet18_narrow"
    arch_kwargs: dict = field(default_factory=dict)
    dense_arch: str = "densenet_small"      # TargetDenseNet row of Table 1
    dense_kwargs: dict = field(default_factory=dict)
    groups: tuple[tuple[str, ...], ...] = GROUPS_2      # two teachers, 10/10 (Table 1)
    groups3: tuple[tuple[str, ...], ...] = GROUPS_3     # three teachers, 7/7/6 (Target-3)
    pairs: dict = field(default_factory=lambda: fig3_pairs(GROUPS_2))   # Fig. 3
    seed: int = 0
    # amalgamation (Eq. 6–8, Alg. 1): per-block schedule over a seeded subset of the pool, held-out slice
    # at the end of the pool for the converged losses L_i^k (Eq. 9), and the fine-tuning of the TargetNet
    block: Schedule = Schedule(epochs=1, lr=0.1, batch_size=32, weight_decay=5e-4)
    pool_images: int = 0                    # the first N pool canvases form the amalgamation pool (0 = all)
    block_images: int = 0                   # pool images per block (0 = the whole training part)
    block_epochs: tuple[int, ...] = ()      # epochs of each block k (overrides block.epochs; () = block.epochs)
    # the student's start (kalib.method.student.init_student): "generic" is the paper's (the weights the teachers
    # started from); "teacher-mean" (beyond the paper) averages the teachers' weights
    student_init: str = "generic"
    loss_slice: int = 500                   # held-out pool images for L_i^k (never trained on)
    finetune: Schedule = Schedule(epochs=1, lr=0.01, batch_size=32, weight_decay=5e-4)
    finetune_images: int = 0                # pool images for fine-tuning (0 = the whole training part)
    finetune_freeze_bn: bool = True         # keep BatchNorm statistics (the teachers') while fine-tuning
    # the KD baseline (kalib.method.baselines): the student trained end to end against the teachers' soft targets;
    # epochs 0 = as many image passes as block-wise training and fine-tuning together (kd_epochs)
    kd: Schedule = Schedule(epochs=0, lr=0.1, batch_size=64, weight_decay=5e-4)
    filter_reduction: int = 4               # Eq. 4 filter: hidden width = channels / reduction
    # branch-out: 0 is Eq. 9 (argmin of L_i^k); > 0 (beyond the paper) takes the deepest block whose loss is
    # within this many nats of the minimum (kalib.method.branch.tolerant_branch_points), and Table 1 then shows
    # the Eq. 9 TargetNet as a row of its own
    branch_tolerance: float = 0.0
    amalgamation_cache: str = "float32"     # dtype of the cached frozen-prefix features F_u^{k-1}
    # Table 2 (the paper's VOC 2012) on a harder variant: more objects per canvas, unlabeled clutter,
    # other canvases (another seed); None where the preset has no second table
    hard_data: BenchmarkSpec | None = None
    # the side runs (Target-3, TargetDenseNet and all of Table 2): a cheaper teacher schedule and a smaller
    # amalgamation pool (every block and the fine-tuning use all of its training part) keep the whole
    # pipeline within its CPU budget; None = as the main run
    side_teacher: Schedule | None = None
    side_pool_images: int | None = None
    pair_block_images: int = 0              # pool images per block of the two-task Fig. 3 students (0 = block_images)
    # shared initialisation of teachers and student (docs/design.md §1): "generic" trains the generic stage on
    # the embedded single-glyph canvases; "imagenet" takes torchvision's ImageNet weights
    # (kalib.models.pretrained.prepare_generic), looked up in weights_paths[arch] or the torch hub cache
    init: str = "generic"
    # random resized crops and flips while training teachers, blocks and the TargetNet (kalib.augment;
    # teacher and student see the same augmented image); the paper presets
    augment: bool = False
    weights_paths: dict = field(default_factory=dict)

    def teacher_set(self, name: str) -> tuple[tuple, str, dict]:
        """(label groups, architecture, architecture kwargs) of a teacher set: ``2`` (10/10, Table 1's
        Teacher and Target rows), ``3`` (7/7/6, Target-3) or ``dense`` (DenseNet 10/10, TargetDenseNet)."""
        sets = {"2": (self.groups, self.arch, self.arch_kwargs), "3": (self.groups3, self.arch, self.arch_kwargs),
                "dense": (self.groups, self.dense_arch, self.dense_kwargs)}
        if name not in sets:
            raise ValueError(f"unknown teacher set '{name}'; valid: {', '.join(TEACHER_SETS)}")
        return sets[name]

    @property
    def dataset(self) -> str:
        """"embedded", "voc07", "voc12" or "coco"."""
        return self.data.dataset if isinstance(self.data, PaperSpec) else "embedded"


TEACHER_SETS = ("2", "3", "dense")


PRESETS = {
    "smoke": Preset(
        name="smoke",
        data=BenchmarkSpec(seed=0, n_train=512, n_pool=512, n_test=256, n_val=256, n_generic=512),
        hard_data=BenchmarkSpec(seed=1, glyph_seed=0, n_train=256, n_pool=256, n_test=128, n_val=128, n_generic=0, objects=(2, 5),
                                clutter=6),
        generic=Schedule(epochs=1, lr=0.05, batch_size=64, weight_decay=5e-4),
        teacher=Schedule(epochs=1, lr=0.05, batch_size=64, weight_decay=5e-4),
        arch_kwargs={"width": 8},
        loss_slice=64,
        side_pool_images=128,
        student_init="teacher-mean",        # as quick, so the tests take the same paths
        branch_tolerance=0.02,
        dense_kwargs={"block_config": (2, 2, 2, 2), "growth_rate": 6, "num_init_features": 12},
    ),
    "quick": Preset(
        name="quick",
        # non-overlapping objects: teacher 1 reached 79.1 mAP on the validation slice (76.7 with 25 % overlap);
        # 24,000 generic canvases of 32 px cost what 8,000 of 64 px did (110 s for 4 epochs) and gave teacher 1
        # 77.0 validation mAP instead of 74.1 (issue #3 note); 20,000 kept `make reproduce` near 30 minutes before the baselines
        data=BenchmarkSpec(seed=0, max_overlap=0.0, n_generic=20000),
        # Table 2's variant: its generic backbone and the starting points of its teachers are Table 1's
        # (kalib.runs.experiments.ensure_teachers), so it renders no generic canvases of its own and keeps Table 1's
        # glyph split (no glyph those networks trained on is in its test canvases); other canvases (seed 1)
        hard_data=BenchmarkSpec(seed=1, glyph_seed=0, n_train=1500, n_pool=1500, n_test=1000, n_val=500, n_generic=0,
                                objects=(2, 5), clutter=6, max_overlap=0.0),
        # side runs: 2 epochs at lr 0.1 (a 3-epoch DenseNet teacher reached 68.3 validation mAP at lr 0.1,
        # 61.6 at lr 0.05) over a pool of 1,000 canvases
        side_teacher=Schedule(epochs=2, lr=0.1, batch_size=64, weight_decay=5e-4),
        side_pool_images=1000,
        # Teachers: 5 epochs from the generic stage. Teacher 1 on the validation split (benchmarks/levers.py
        # --teacher-lrs): 78.3 mAP at lr 0.1, 83.4 at 0.2, 85.2 at 0.3. The preset keeps 0.2, chosen before the
        # validation split existed (on held-out pool canvases, where 7 epochs at 0.2 also cost t-shirt 2.1 AP at
        # its Eq. 9 block): a faster teacher drifts further from the shared start that Eq. 4's filters rely on
        # (docs/design.md §1), and what lr 0.3 does to the deep trunk is not measured yet.
        generic=Schedule(epochs=4, lr=0.1, batch_size=64, weight_decay=5e-4),
        teacher=Schedule(epochs=5, lr=0.2, batch_size=64, weight_decay=5e-4),
        arch_kwargs={"width": 16},
        # a DenseNet of 4 stages of 2 layers: about 2x the training throughput of the 4x4 default on the CPU
        dense_kwargs={"block_config": (2, 2, 2, 2), "growth_rate": 16, "num_init_features": 16},
        # The compact student (docs/levers.md, validation split, teachers 88.0 mAP together). Blocks train at
        # lr 0.1 over a random 7k of the pool, with epochs growing with depth: Target b4 (every task on the whole
        # trunk) 85.9 with 1,1,2,2,4,4,8,8 epochs from the generic start, 86.5 with 2,2,3,3,6,6,10,10, and 87.2
        # with 1,1,2,2,4,4,8,8 from the mean of the teachers' weights (student_init, beyond the paper). Eq. 9
        # still puts all 20 tasks at b1_1 (the held-out loss rises by about 0.01 nats from b1_1 to b4_2), so
        # the preset branches out by a tolerance of 0.02 nats: every task at b4_2, half the teachers'
        # parameters (0.005-0.01 scatter the tasks and copy each teacher from its earliest block: 1.4-1.5x).
        # Fine-tuning the whole TargetNet 3 epochs at lr 0.05 over 7k: 87.2 -> 88.0 (lr 0.01: +0.3).
        block_images=7000,
        block_epochs=(1, 1, 2, 2, 4, 4, 8, 8),
        student_init="teacher-mean",
        branch_tolerance=0.02,
        finetune=Schedule(epochs=3, lr=0.05, batch_size=32, weight_decay=5e-4),
        finetune_images=7000,
        pair_block_images=3500,             # the two Fig. 3 students: half the images per block (time budget)
        # the KD baseline, 15 epochs over the pool (as many image passes as blocks and fine-tuning): validation
        # mAP 87.7 at lr 0.05, 88.6 at 0.1, 89.0 at 0.2 (benchmarks/kd_schedule.py, docs/levers.md)
        kd=Schedule(epochs=0, lr=0.2, batch_size=64, weight_decay=5e-4),
    ),
    # The learner's preset: the notebooks' default in JupyterLab and the nbval run of `make test`. All five
    # notebooks in a few minutes on 2 CPU cores, with numbers far above chance (random scores give about
    # 15 mAP on its test split). The canvases are 32 px with 10-16 px glyphs (a quarter of quick's pixels;
    # generic canvases 16 px), width-16 networks, a fifth of quick's images.
    "lesson": Preset(
        name="lesson",
        data=BenchmarkSpec(seed=0, max_overlap=0.0, size=32, scale=(10, 16), generic_size=16,
                           n_train=4000, n_pool=3000, n_test=1000, n_val=1000, n_generic=10000),
        generic=Schedule(epochs=4, lr=0.1, batch_size=64, weight_decay=5e-4),
        # teacher 1's validation mAP from this generic stage: 4 epochs at lr 0.4 65.1 with batch 64, 72.1 with
        # batch 32; 4 epochs at 0.6 68.7; 6 at 0.5 72.5; 8 at 0.2 68.1 (batch 64)
        teacher=Schedule(epochs=4, lr=0.4, batch_size=32, weight_decay=5e-4),
        side_teacher=Schedule(epochs=3, lr=0.4, batch_size=32, weight_decay=5e-4),
        side_pool_images=600,
        arch_kwargs={"width": 16},
        # DenseNet teacher 1 (3 epochs at lr 0.4 after 3 generic epochs): validation mAP 71.7 with growth rate
        # 12, 57.6 with 8 (53.0 at lr 0.2, 45.1 at 0.1)
        dense_kwargs={"block_config": (2, 2, 2, 2), "growth_rate": 12, "num_init_features": 16},
        # Blocks: a short schedule, so the deep trunk falls behind the teachers and the preset keeps Eq. 9
        # (branch_tolerance 0). Validation split: the Eq. 9 TargetNet 73.8 mAP (73.6 before fine-tuning)
        # against the teachers' 74.6, every task at the last block (Target b4) 62.9. A tolerance of 0.02
        # nats (with epochs 1,1,1,1,2,2,4,4 and 2 fine-tuning epochs) scattered the tasks over five blocks:
        # 1.5x the teachers' parameters at 71.3 mAP, against 73.9 for Eq. 9 in the same run.
        block_images=2000,
        block_epochs=(1, 1, 1, 1, 1, 1, 2, 2),
        student_init="teacher-mean",
        loss_slice=300,
        finetune=Schedule(epochs=1, lr=0.05, batch_size=32, weight_decay=5e-4),
        finetune_images=2000,
        pair_block_images=500,
    ),
}


# ------------------------------------------------------------------------------------------ paper presets
# Label groups (paper §4.2: VOC's 20 labels "divided randomly into two groups"; Fig. 3 takes 'bus' and 'dog'
# from teacher 1, 'diningtable' and 'horse' from teacher 2). The seed is the smallest one of seeded_split whose
# two-teacher split puts bus and dog on teacher 1 and diningtable and horse on teacher 2 (the paper's
# assignment); the same seed's 7/7/6 split keeps each Fig. 3 pair on two different teachers.
# tests/test_paper_presets.py checks both properties and that no smaller seed qualifies.
VOC_SPLIT_SEED = 10
COCO_SPLIT_SEED = 4      # the same rule on COCO's names ('dining table'), 40/40 and 27/27/26
PAPER_PAIRS = {"voc": {"unrelated": ("bus", "diningtable"), "related": ("dog", "horse")},
               "coco": {"unrelated": ("bus", "dining table"), "related": ("dog", "horse")}}


def _paper_preset(name: str, dataset: str, teacher_epochs: int, block_epochs: int, finetune_epochs: int,
                  block_images: int = 0, loss_slice: int = 500) -> Preset:
    """A paper preset: the paper's optimiser (SGD, poly lr 0.01 with power 0.9, weight decay 5e-3, batch 16;
    the defaults of Schedule) for every stage. The paper gives no epoch counts; ours are a first guess,
    not yet tuned or measured on a GPU."""
    labels = COCO_CLASSES if dataset == "coco" else VOC_CLASSES
    seed = COCO_SPLIT_SEED if dataset == "coco" else VOC_SPLIT_SEED
    half = len(labels) // 2
    third = (len(labels) + 2) // 3
    return Preset(
        name=name,
        data=PaperSpec(dataset, image_size=224),
        generic=Schedule(epochs=0),                 # no generic stage: ImageNet weights (init="imagenet")
        teacher=Schedule(epochs=teacher_epochs),
        arch="resnet50", dense_arch="densenet121",
        groups=seeded_split(labels, (half, len(labels) - half), seed),
        groups3=seeded_split(labels, (third, third, len(labels) - 2 * third), seed),
        pairs=PAPER_PAIRS["coco" if dataset == "coco" else "voc"],
        block=Schedule(epochs=block_epochs), block_images=block_images, loss_slice=loss_slice,
        finetune=Schedule(epochs=finetune_epochs),
        amalgamation_cache="float16",               # F_u^{k-1} of ResNet-50 at 224 px: 1.6 MB per image in fp16
        init="imagenet",
        augment=True,
    )


PRESETS.update({
    "paper-voc07": _paper_preset("paper-voc07", "voc07", teacher_epochs=20, block_epochs=2, finetune_epochs=5),
    "paper-voc12": _paper_preset("paper-voc12", "voc12", teacher_epochs=20, block_epochs=2, finetune_epochs=5),
    "paper-coco": _paper_preset("paper-coco", "coco", teacher_epochs=8, block_epochs=1, finetune_epochs=2,
                                block_images=16000, loss_slice=2000),
})


def get_preset(name: str) -> Preset:
    """The preset called ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; valid presets: {', '.join(PRESETS)}")
    return PRESETS[name]
