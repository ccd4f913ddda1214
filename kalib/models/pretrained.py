"""ImageNet initialisation of the paper-scale backbones (paper §4.1: "initialized with parameters
pre-trained on ImageNet"; docs/design.md §1 "Shared initialisation").

The weights are torchvision's own ``.pth`` files, read from

1. a file path given by the caller (the preset's ``weights_paths[arch]``), or
2. torch hub's cache, ``torch.hub.get_dir()/checkpoints/`` (``~/.cache/torch/hub/checkpoints``), under
   torchvision's file names (:func:`weight_files`), where any earlier torchvision download put them.

Nothing is downloaded unless the caller passes ``allow_download=True`` (``--allow-download``); without the
weights :class:`MissingWeightsError` says which file to fetch from where, or to start from a shared random
initialisation instead (``--set init=random``).
The weights are loaded into a torchvision model first (strict: a wrong or truncated file fails here), then
moved block by block into the :class:`~kalib.models.BlockNet`; the ImageNet classifier is replaced by a
fresh head, and the checkpoint's config says ``weights: None`` so that loading it never fetches anything.
"""

from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path

import torch
import torchvision

from ..errors import ConfigError, MissingWeightsError
from .blocknet import BlockNet, build_backbone

# torchvision weight enums per arch, preferred first (V1: the classic weights, closest to the paper's)
_WEIGHT_ENUMS = {
    "resnet18": ("ResNet18_Weights", ("IMAGENET1K_V1",)),
    "resnet34": ("ResNet34_Weights", ("IMAGENET1K_V1",)),
    "resnet50": ("ResNet50_Weights", ("IMAGENET1K_V1", "IMAGENET1K_V2")),
    "resnet101": ("ResNet101_Weights", ("IMAGENET1K_V1", "IMAGENET1K_V2")),
    "resnet152": ("ResNet152_Weights", ("IMAGENET1K_V1", "IMAGENET1K_V2")),
    "densenet121": ("DenseNet121_Weights", ("IMAGENET1K_V1",)),
}
PRETRAINED_ARCHS = tuple(_WEIGHT_ENUMS)
INITS = ("imagenet", "random")


def weight_files(arch: str) -> list[tuple[str, str]]:
    """``(file name, URL)`` of torchvision's ImageNet weights for ``arch``, preferred first."""
    if arch not in _WEIGHT_ENUMS:
        raise ConfigError(f"no ImageNet weights for arch {arch!r}; available for: {', '.join(PRETRAINED_ARCHS)}")
    enum_name, members = _WEIGHT_ENUMS[arch]
    enum = getattr(torchvision.models, enum_name)
    return [(Path(enum[m].url).name, enum[m].url) for m in members]


def hub_checkpoints() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_weights(arch: str, weights_path: str | Path | None = None) -> Path | None:
    """The weights file to use for ``arch``: ``weights_path`` if given (it must exist), else the first of
    torchvision's files found in the torch hub cache, else ``None``."""
    if weights_path:
        path = Path(weights_path).expanduser()
        if not path.is_file():
            raise MissingWeightsError(f"ImageNet weights file {path} (given for {arch}) not found")
        return path
    for name, _ in weight_files(arch):
        if (hub_checkpoints() / name).is_file():
            return hub_checkpoints() / name
    return None


def missing_message(arch: str) -> str:
    name, url = weight_files(arch)[0]
    return (f"ImageNet weights for {arch} not found (looked for {', '.join(n for n, _ in weight_files(arch))} "
            f"in {hub_checkpoints()}). Fetch torchvision's file once, e.g. `mkdir -p {hub_checkpoints()} && "
            f"curl -L -o {hub_checkpoints() / name} {url}`, or name a local copy with "
            f"--set 'weights_paths.{arch}=\"/path/to/{name}\"', "
            "or pass --allow-download to let torchvision fetch it, or start teachers and student from one "
            "random initialisation instead with --set init=random")


def load_tensors(path: str | Path):
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain containers only, no pickled code;
    torch's warnings about the file's pickle protocol stay quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location="cpu", weights_only=True)


def load_problem(err: Exception, path: str | Path) -> str:
    """Why :func:`load_tensors` refused the file ``path``, in kalib's words (torch's own message gives advice that
    does not apply, such as loading with ``weights_only=False``)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        head = b""
    if isinstance(err, EOFError) or not head:
        return "it is empty or cut off"
    if not (head.startswith(b"PK") or head[:1] == b"\x80"):       # neither torch's zip format nor a pickle
        return f"it is not a file of torch.save (it begins {head!r})"
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err):
        return ("it holds Python objects besides tensors (a whole pickled model, say), which kalib never loads: "
                "it reads tensors only")
    if isinstance(err, RuntimeError) and "zip archive" in str(err):
        return "it is truncated or damaged (not a complete file of torch.save)"
    return f"it is not a file of torch.save ({type(err).__name__})"


def _read_state(path: Path, arch: str, given: bool = True) -> dict:
    """The state dict in ``path``: ``given`` by the user (``--weights``, ``weights_paths``), or found in torch
    hub's cache (then a damaged file is to be fetched again)."""
    fix = (f"give the ImageNet state dict of torchvision's {arch} (a .pth file of torch.save(model.state_dict()), "
           f"e.g. {weight_files(arch)[0][0]})" if given else "delete it and fetch it again")
    try:
        state = load_tensors(path)
    except Exception as err:   # truncated download, HTML error page saved as .pth, a text file, foreign pickle
        raise MissingWeightsError(f"{path} is not a readable weights file for {arch}: "
                                  f"{load_problem(err, path)}; {fix}") from None
    for key in ("state_dict", "model"):     # checkpoints that wrap the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise MissingWeightsError(f"{path} holds a {type(state).__name__}, not a state dict of {arch}; {fix}")
    return {k.removeprefix("module."): v for k, v in state.items()}


_DENSE_OLD_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                            r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def imagenet_state(arch: str, weights_path: str | Path | None = None,
                   allow_download: bool = False) -> tuple[dict, str]:
    """torchvision's ImageNet state dict of ``arch`` (torchvision key names) and where it came from."""
    path = find_weights(arch, weights_path)
    if path is None:
        if not allow_download:
            raise MissingWeightsError(missing_message(arch))
        name, url = weight_files(arch)[0]
        state = torch.hub.load_state_dict_from_url(url, map_location="cpu", check_hash=True)
        source = str(hub_checkpoints() / name)
    else:
        state, source = _read_state(path, arch, given=weights_path is not None), str(path)
    if arch.startswith("densenet"):   # torchvision's old DenseNet files name 'norm.1' what is now 'norm1'
        state = {(f"{m.group(1)}{m.group(2)}" if (m := _DENSE_OLD_KEY.match(k)) else k): v
                 for k, v in state.items()}
    return state, source


def blocknet_key(arch: str, key: str, net: BlockNet, head: bool = False) -> str | None:
    """The BlockNet name of torchvision parameter ``key`` of ``arch``: the classifier's (``fc.``,
    ``classifier.``) is ``head.fc.…`` with ``head``, ``None`` (left out: an ImageNet head) without."""
    if arch.startswith("resnet"):
        if key.startswith(("fc.",)):
            return f"head.{key}" if head else None
        if key.startswith(("conv1.", "bn1.")):
            return f"blocks.0.stem.{key}"
        m = re.match(r"^layer(\d)\.(\d+)\.(.*)$", key)
        if m:
            k = net.block_index(f"b{m.group(1)}_{int(m.group(2)) + 1}") - 1
            return f"blocks.0.unit.{m.group(3)}" if k == 0 else f"blocks.{k}.{m.group(3)}"
    else:
        if key.startswith("classifier."):
            return f"head.fc.{key.removeprefix('classifier.')}" if head else None
        m = re.match(r"^features\.(conv0|norm0)\.(.*)$", key)
        if m:
            return f"blocks.0.stem.{m.group(1)}.{m.group(2)}"
        m = re.match(r"^features\.((?:denseblock|transition)(\d))\.(.*)$", key)
        if m:
            return f"blocks.{int(m.group(2)) - 1}.{m.group(1)}.{m.group(3)}"
        if key.startswith("features.norm5."):
            return f"blocks.{net.num_blocks - 1}.{key.removeprefix('features.')}"
    raise KeyError(key)


def load_imagenet(net: BlockNet, state: dict, source: str = "state dict") -> BlockNet:
    """Copy torchvision's ImageNet ``state`` into every block of ``net`` (its head stays as it is)."""
    return load_torchvision_state(net, state, source)


def load_torchvision_state(net: BlockNet, state: dict, source: str = "state dict", head: bool = False) -> BlockNet:
    """Copy a torchvision state dict of ``net.arch`` into ``net``: loaded strictly into the torchvision model
    first (every tensor, with its shape), then mapped block by block (:func:`blocknet_key`). Without ``head``
    ``state`` is an ImageNet one (1000 classes) and ``net``'s head stays as it is; with ``head`` its classifier
    has ``net.num_classes`` outputs and becomes ``net``'s head (a teacher a user trained:
    :mod:`kalib.models.torchvision_teachers`)."""
    arch = net.arch
    tv = getattr(torchvision.models, arch)(weights=None, num_classes=net.num_classes if head else 1000)
    try:
        tv.load_state_dict(state)    # strict: every tensor of the torchvision model, with its shape
    except RuntimeError as err:
        what = f"{net.num_classes}-class" if head else "ImageNet"
        raise MissingWeightsError(f"{source} is not a torchvision {arch} {what} state dict: "
                                  f"{str(err).splitlines()[0]} …") from None
    mapped = {}
    for key, value in tv.state_dict().items():
        new = blocknet_key(arch, key, net, head)
        if new is not None:
            mapped[new] = value
    missing, unexpected = net.load_state_dict(mapped, strict=False)
    if unexpected or any(head or not k.startswith("head.") for k in missing):
        raise RuntimeError(f"weights of {arch} do not map onto its blocks: missing "
                           f"{[k for k in missing if head or not k.startswith('head.')][:3]}, unexpected {unexpected[:3]}")
    return net


def imagenet_backbone(arch: str, num_classes: int, weights_path: str | Path | None = None,
                      allow_download: bool = False, seed: int = 0) -> tuple[BlockNet, str]:
    """``arch`` as a :class:`BlockNet` with ImageNet weights in every block and a fresh ``num_classes`` head;
    returns the network and the weights file it came from."""
    if arch not in PRETRAINED_ARCHS:
        raise ConfigError(f"no ImageNet weights for arch {arch!r}; available for: {', '.join(PRETRAINED_ARCHS)}")
    state, source = imagenet_state(arch, weights_path, allow_download)
    torch.manual_seed(seed)
    return load_imagenet(build_backbone(arch, num_classes), state, source), source
