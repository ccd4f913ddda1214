"""kalib: Amalgamating Filtered Knowledge (Ye et al., IJCAI 2019), a notebook-first reproduction.

The objects a notebook or a script needs, importable from here (each is loaded on first use, so ``import
kalib`` stays light):

* presets and data: :class:`Preset`, :func:`get_preset`, :func:`override` (``--set``), :func:`load_data`;
* networks: :class:`BlockNet`, :func:`build_backbone`, :func:`load_model`, :func:`save_model`;
* teachers (Eq. 2): :func:`pretrain_teachers` (files, resume), :func:`train_teacher`;
* the method (``kalib.method``): :func:`task_plan` (C), :class:`TeacherFilter` (Eq. 4),
  :func:`init_student` (Alg. 1 line 1), :func:`soft_targets`, :func:`amalgamate` and :func:`train_block`
  (Alg. 1, Eq. 6–8), :func:`branch_points` (Eq. 9), :func:`tolerant_branch_points`, :func:`assemble` and
  :class:`TargetNet` (Eq. 10), :func:`finetune` (Alg. 1 line 14);
* a whole resumable amalgamation: :func:`run_amalgamation`; TargetNet files: :func:`load_target`,
  :func:`save_target`;
* your own teachers (torchvision models you trained, a folder of unlabelled images):
  :func:`load_torchvision_teachers`, :func:`image_pool`, :func:`own_schedule`, :func:`amalgamate_teachers`,
  and :func:`predict_images` (probabilities per label of image files, for any kalib checkpoint);
* evaluation: :func:`predict`, :func:`mean_ap`, :func:`evaluate`;
* errors: :class:`KalibError`, the base of every error kalib explains in one line.
"""

from importlib import import_module

__version__ = "0.1.0"

# public name -> (module, attribute)
_API = {
    "Preset": ("kalib.runs.presets", "Preset"),
    "get_preset": ("kalib.runs.presets", "get_preset"),
    "override": ("kalib.runs.config", "override"),
    "load_data": ("kalib.runs.data", "load_data"),
    "BlockNet": ("kalib.models", "BlockNet"),
    "build_backbone": ("kalib.models", "build_backbone"),
    "load_model": ("kalib.runs.checkpoints", "load_model"),
    "save_model": ("kalib.runs.checkpoints", "save_model"),
    "pretrain_teachers": ("kalib.runs.teachers", "pretrain_set"),
    "train_teacher": ("kalib.method.teachers", "train_teacher"),
    "task_plan": ("kalib.method.filters", "task_plan"),
    "TeacherFilter": ("kalib.method.filters", "TeacherFilter"),
    "init_student": ("kalib.method.student", "init_student"),
    "soft_targets": ("kalib.method.blockwise", "soft_targets"),
    "amalgamate": ("kalib.method.blockwise", "amalgamate"),
    "train_block": ("kalib.method.blockwise", "train_block"),
    "branch_points": ("kalib.method.branch", "branch_points"),
    "tolerant_branch_points": ("kalib.method.branch", "tolerant_branch_points"),
    "assemble": ("kalib.method.targetnet", "assemble"),
    "TargetNet": ("kalib.method.targetnet", "TargetNet"),
    "finetune": ("kalib.method.finetune", "finetune"),
    "run_amalgamation": ("kalib.runs.amalgamation", "run"),
    "load_target": ("kalib.runs.checkpoints", "load_target"),
    "save_target": ("kalib.runs.checkpoints", "save_target"),
    "load_torchvision_teachers": ("kalib.runs.own", "load_torchvision_teachers"),
    "image_pool": ("kalib.runs.own", "image_pool"),
    "own_schedule": ("kalib.runs.own", "own_schedule"),
    "amalgamate_teachers": ("kalib.runs.own", "amalgamate_teachers"),
    "predict_images": ("kalib.runs.predict", "predict_images"),
    "predict": ("kalib.train", "predict"),
    "mean_ap": ("kalib.metrics", "mean_ap"),
    "evaluate": ("kalib.method.teachers", "evaluate"),
    "KalibError": ("kalib.errors", "KalibError"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'kalib' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(import_module(module), attr)
    globals()[name] = value
    return value


def __dir__():
    return sorted([*globals(), *_API])
