"""Teachers a user trained: a torchvision model's state dict (``torch.save(model.state_dict())`` of
``torchvision.models.ARCH(num_classes=K)``) and a text file of its K label names, as a
:class:`~kalib.models.BlockNet` that keeps its own head (K outputs, in head order).

The state dict is read with ``torch.load(weights_only=True)`` (no pickled code runs) and loaded strictly
into the torchvision model, then mapped onto the blocks (:func:`kalib.models.pretrained.load_torchvision_state`,
the mapping the ImageNet starts use). A file that is not a state dict of ``ARCH`` is refused naming what it is
instead, where it is another torchvision architecture (:func:`state_architecture`). The teacher's input
normalisation (torchvision's ImageNet mean and std unless the user trained with others) travels with it in
its config (:class:`~kalib.models.blocknet.InputNorm`).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torchvision

from ..errors import TeacherFileError
from .blocknet import BlockNet, build_backbone
from .pretrained import load_problem, load_tensors, load_torchvision_state

TEACHER_ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "densenet121")
IMAGENET_MEAN = (0.485, 0.456, 0.406)     # torchvision's ImageNet normalisation (transforms.Normalize)
IMAGENET_STD = (0.229, 0.224, 0.225)
_CLASSIFIER = ("fc.", "classifier.")


def read_labels(path: str | Path) -> list[str]:
    """The label names in ``path``, one a line, in head order (surrounding blanks and trailing empty lines
    dropped); :class:`~kalib.errors.TeacherFileError` for a missing file, an empty name or a name twice."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise TeacherFileError(f"labels file {path} cannot be read ({type(err).__name__}: "
                               f"{getattr(err, 'strerror', None) or err})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if not names:
        raise TeacherFileError(f"labels file {path} holds no label names (one name a line, in head order)")
    if "" in names:
        raise TeacherFileError(f"labels file {path}: line {names.index('') + 1} is empty (one name a line)")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise TeacherFileError(f"labels file {path} names {', '.join(twice)} more than once")
    return names


def read_state(path: str | Path) -> dict:
    """The state dict in ``path`` (``torch.load(weights_only=True)``; a ``{"state_dict": ...}`` or
    ``{"model": ...}`` wrapper and DataParallel's ``module.`` prefixes are taken off)."""
    path = Path(path)
    if not path.is_file():
        raise TeacherFileError(f"teacher weights {path} " + ("is a folder; give the file of torch.save("
                                                             "model.state_dict(), PATH)" if path.is_dir() else "not found"))
    try:
        state = load_tensors(path)
    except Exception as err:   # truncated file, a pickle of a whole model, anything torch refuses to load safely
        raise TeacherFileError(f"teacher weights {path} cannot be read as a state dict: {load_problem(err, path)}; "
                               "save them with torch.save(model.state_dict(), PATH)") from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise TeacherFileError(f"teacher weights {path} hold a {type(state).__name__}, not a state dict; save them "
                               "with torch.save(model.state_dict(), PATH)")
    return {k.removeprefix("module."): v for k, v in state.items()}


@functools.cache
def _shapes(arch: str) -> dict[str, tuple]:
    """Key -> shape of torchvision ``arch``'s state dict without its classifier (built on the meta device)."""
    with torch.device("meta"):
        tv = getattr(torchvision.models, arch)(weights=None)
    return {k: tuple(v.shape) for k, v in tv.state_dict().items() if not k.startswith(_CLASSIFIER)}


def state_architecture(state: dict) -> tuple[str | None, int | None]:
    """Which torchvision architecture of :data:`TEACHER_ARCHS` ``state`` is (its keys and shapes, the
    classifier's size aside) and how many outputs its classifier has; ``(None, None)`` for none of them."""
    body = {k: tuple(v.shape) for k, v in state.items() if not k.startswith(_CLASSIFIER)}
    for arch in TEACHER_ARCHS:
        if body == _shapes(arch):
            weight = state.get("fc.weight", state.get("classifier.weight"))
            return arch, (int(weight.shape[0]) if weight is not None and weight.dim() == 2 else None)
    return None, None


def torchvision_teacher(arch: str, state: dict, labels: list[str], source: str = "state dict",
                        input_norm: dict | None = None) -> BlockNet:
    """``state`` (a torchvision ``arch`` state dict) as a :class:`BlockNet` with its own head of
    ``len(labels)`` outputs and the input normalisation ``input_norm`` (``{"mean": …, "std": …}``)."""
    if arch not in TEACHER_ARCHS:
        raise TeacherFileError(f"teacher architecture {arch!r} is not one kalib can split into blocks; "
                               f"use one of {', '.join(TEACHER_ARCHS)}")
    found, outputs = state_architecture(state)
    if found is None:
        raise TeacherFileError(f"{source} is not a state dict of torchvision's {arch} (nor of "
                               f"{', '.join(a for a in TEACHER_ARCHS if a != arch)}): its tensors do not match")
    if found != arch:
        raise TeacherFileError(f"{source} is a state dict of torchvision's {found}, not {arch}; name it "
                               f"{found}:… or give {arch} weights")
    if outputs != len(labels):
        raise TeacherFileError(f"{source}: its head has {outputs} outputs but its labels file names "
                               f"{len(labels)} labels; give one name a line, in head order")
    net = build_backbone(arch, len(labels), input_norm=input_norm)
    return load_torchvision_state(net, state, source, head=True).eval()


def load_torchvision_teacher(arch: str, weights: str | Path, labels: str | Path,
                             input_norm: dict | None = None) -> tuple[BlockNet, list[str]]:
    """The teacher ``ARCH:WEIGHTS:LABELS`` of the command line: (network, label names)."""
    names = read_labels(labels)
    return torchvision_teacher(arch, read_state(weights), names, str(weights), input_norm), names


def last_block_size(arch: str, image_size: int) -> tuple[int, int] | None:
    """Height and width of ``arch``'s last block output for ``image_size`` px inputs, worked out on the meta
    device (no computation, no weights); ``None`` where some layer's output would be smaller than 1x1."""
    with torch.device("meta"):
        shape_net = build_backbone(arch, 1).eval()
        try:
            out = shape_net.prefix(torch.zeros(1, 3, image_size, image_size), shape_net.num_blocks)
        except (RuntimeError, ValueError):
            return None
    return (int(out.shape[-2]), int(out.shape[-1])) if min(out.shape[-2:]) >= 1 else None
