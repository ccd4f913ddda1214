"""Backbones split into B named blocks plus a head (paper §3.3, Eq. 3; docs/design.md §1 "Blocks").

Eq. 3 writes a network as F^k = A^k(F^{k-1}) for k = 1..B (F^0 = the image) followed by the fully
connected layers O = F(F^B). :class:`BlockNet` stores exactly that: ``blocks[k-1]`` is A^k and ``head`` is
global average pool -> flatten -> ``head.fc``. ``prefix(x, k)`` gives F^k and ``suffix(F^k, k)`` the
logits, which is what amalgamation needs: the student's block-k output is filtered and fed into a
teacher's blocks k+1..B (docs/design.md §1).

Architectures (``ARCHS``): torchvision ``resnet18``/``resnet50``/``densenet121`` split at residual units /
dense stages (and ``resnet34``/``resnet101``/``resnet152``, which share ResNet's block structure, for teachers
a user brings: :mod:`kalib.models.torchvision_teachers`), and the 64-px CPU variants ``resnet18_narrow`` and
``densenet_small``.

Input normalisation: every network reads kalib's standard input (:func:`kalib.train.to_input`, ``(x/255 -
0.5)/0.25``). A network trained on another normalisation (torchvision's ImageNet mean and std, say) carries
it in its config (``input_norm``): :class:`InputNorm` at the front of block 1's stem turns kalib's input into
what the network was trained on, so the normalisation travels with the network into checkpoints, students and
TargetNets, and nothing that feeds a network has to know about it.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from ..errors import ConfigError

ARCHS = ("resnet18", "resnet50", "resnet18_narrow", "densenet121", "densenet_small", "resnet34", "resnet101",
         "resnet152")
TORCHVISION_RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
KALIB_INPUT = (0.5, 0.25)     # kalib.train.to_input: (x/255 - 0.5) / 0.25 for every channel


def _head(in_features: int, fc: nn.Linear | None = None, num_classes: int | None = None) -> nn.Sequential:
    """Global average pool -> flatten -> fc (the fully connected part F of Eq. 3)."""
    fc = fc if fc is not None else nn.Linear(in_features, num_classes)
    return nn.Sequential(OrderedDict(pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1), fc=fc))


class BlockNet(nn.Module):
    """A CNN as B named blocks and a head (paper Eq. 3): F^k = A^k(F^{k-1}), O = head(F^B).

    Attributes: ``arch``, ``config`` (JSON-serialisable kwargs of :func:`build_backbone`), ``block_names``,
    ``blocks`` (``nn.ModuleList``), ``head`` (pool, flatten, ``head.fc``), ``out_channels`` (per block),
    ``stage_ends`` ({"b1": k, ...}, 1-based index of each stage's last block).
    """

    def __init__(self, arch: str, config: dict, block_names: list[str], blocks: list[nn.Module],
                 head: nn.Module, out_channels: list[int], stage_ends: dict[str, int]):
        super().__init__()
        if not len(block_names) == len(blocks) == len(out_channels):
            raise ValueError("block_names, blocks and out_channels must have the same length")
        self.arch = arch
        self.config = dict(config)
        self.block_names = list(block_names)
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.out_channels = list(out_channels)
        self.stage_ends = dict(stage_ends)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_classes(self) -> int:
        return self.head.fc.out_features

    def block_index(self, name: str) -> int:
        """1-based k of the block called ``name`` (e.g. ``"b2_1"``)."""
        if name not in self.block_names:
            raise ValueError(f"unknown block {name!r} for {self.arch}; valid names: {', '.join(self.block_names)}")
        return self.block_names.index(name) + 1

    def _check_k(self, k: int) -> None:
        if not 0 <= k <= self.num_blocks:
            raise ValueError(f"block index k must be in 0..{self.num_blocks}, got {k}")

    def prefix(self, x: torch.Tensor, k: int) -> torch.Tensor:
        """F^k: the input through blocks 1..k (k = 0 returns ``x``)."""
        self._check_k(k)
        for block in self.blocks[:k]:
            x = block(x)
        return x

    def suffix(self, h: torch.Tensor, k: int) -> torch.Tensor:
        """Logits from F^k: blocks k+1..B, then the head."""
        self._check_k(k)
        for block in self.blocks[k:]:
            h = block(h)
        return self.head(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.suffix(self.prefix(x, self.num_blocks), self.num_blocks)

    def with_new_head(self, num_classes: int) -> "BlockNet":
        """Deep copy with the same block weights and a fresh ``nn.Linear`` head (PyTorch default init).

        Used to start teachers and the student from one shared generic backbone (docs/design.md §1).
        """
        new = copy.deepcopy(self)
        new.head = _head(self.head.fc.in_features, num_classes=num_classes)
        new.config["num_classes"] = num_classes
        return new


class InputNorm(nn.Module):
    """Maps kalib's network input z = (x/255 - 0.5)/0.25 (:func:`kalib.train.to_input`) to (x/255 - mean)/std,
    the normalisation a network was trained with (per channel; no parameters, and nothing in the state dict:
    ``mean`` and ``std`` live in the network's config)."""

    def __init__(self, mean, std):
        super().__init__()
        if len(mean) != 3 or len(std) != 3 or not all(s > 0 for s in std):
            raise ConfigError(f"input normalisation needs 3 means and 3 positive stds, got mean {list(mean)}, "
                              f"std {list(std)}")
        self.mean, self.std = [float(m) for m in mean], [float(s) for s in std]
        centre, scale = KALIB_INPUT
        std_t, mean_t = torch.tensor(self.std), torch.tensor(self.mean)
        self.register_buffer("scale", (scale / std_t).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((centre - mean_t) / std_t).view(1, 3, 1, 1), persistent=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.scale + self.shift

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"


def _add_input_norm(net: BlockNet, input_norm: dict) -> BlockNet:
    """``net`` with :class:`InputNorm` first in block 1's stem (state-dict keys unchanged) and in its config."""
    stem = net.blocks[0].stem
    net.blocks[0].stem = nn.Sequential(OrderedDict([("norm", InputNorm(input_norm["mean"], input_norm["std"])),
                                                    *stem.named_children()]))
    net.config["input_norm"] = {"mean": list(net.blocks[0].stem.norm.mean), "std": list(net.blocks[0].stem.norm.std)}
    return net


# ---------------------------------------------------------------------------------------------- ResNet

def _resnet_blocks(stem: nn.Module, layers: list[nn.Sequential]) -> tuple[list, list, list, dict]:
    """Residual units as blocks b{s}_{i}; the stem is folded into b1_1 (docs/design.md §1)."""
    names, blocks, channels, stage_ends = [], [], [], {}
    for s, layer in enumerate(layers, start=1):
        for i, unit in enumerate(layer, start=1):
            names.append(f"b{s}_{i}")
            blocks.append(nn.Sequential(OrderedDict(stem=stem, unit=unit)) if (s, i) == (1, 1) else unit)
            last_bn = unit.bn3 if hasattr(unit, "bn3") else unit.bn2
            channels.append(last_bn.num_features)
        stage_ends[f"b{s}"] = len(blocks)
    return names, blocks, channels, stage_ends


def _weights_config(weights) -> str | None:
    """JSON form of a torchvision ``weights`` argument (enum or string); torchvision accepts it back."""
    return None if weights is None else str(weights)


def _torchvision_model(fn, num_classes: int, weights, kwargs: dict) -> nn.Module:
    """torchvision model with ``num_classes`` outputs; with ``weights`` the ImageNet fc is dropped later."""
    if weights is None:
        return fn(weights=None, num_classes=num_classes, **kwargs)
    return fn(weights=weights, **kwargs)


def _torchvision_resnet(arch: str, num_classes: int, weights=None, **kwargs) -> BlockNet:
    tv = _torchvision_model(getattr(torchvision.models, arch), num_classes, weights, kwargs)
    stem = nn.Sequential(OrderedDict(conv1=tv.conv1, bn1=tv.bn1, relu=tv.relu, maxpool=tv.maxpool))
    names, blocks, channels, ends = _resnet_blocks(stem, [tv.layer1, tv.layer2, tv.layer3, tv.layer4])
    fc = tv.fc if weights is None else nn.Linear(tv.fc.in_features, num_classes)
    config = {"arch": arch, "num_classes": num_classes, "weights": _weights_config(weights), **kwargs}
    return BlockNet(arch, config, names, blocks, _head(channels[-1], fc), channels, ends)


def _resnet18_narrow(num_classes: int, width: int = 16, stem_stride: int = 2, stem_pool: bool = False) -> BlockNet:
    """ResNet-18 layout with widths (w, 2w, 4w, 8w) and a 3x3 stem for 64-px inputs; ``stem_pool`` adds
    torchvision's 3x3/2 max-pool after it (4x fewer operations in every later block).

    ``width`` must be at least 8: narrower convolutions crash oneDNN's channels-last CPU kernels
    (torch 2.14, "double free or corruption"), and kalib trains in channels-last (kalib.train)."""
    if width < 8:
        raise ConfigError(f"resnet18_narrow needs width >= 8, got {width}")
    stem = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, width, 3, stride=stem_stride, padding=1, bias=False),
        bn1=nn.BatchNorm2d(width), relu=nn.ReLU(inplace=True),
        **({"maxpool": nn.MaxPool2d(3, 2, 1)} if stem_pool else {})))
    layers, inplanes = [], width
    for s, planes in enumerate((width, 2 * width, 4 * width, 8 * width)):
        stride = 1 if s == 0 else 2
        downsample = None
        if stride != 1 or inplanes != planes:
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))
        layers.append(nn.Sequential(BasicBlock(inplanes, planes, stride, downsample), BasicBlock(planes, planes)))
        inplanes = planes
    names, blocks, channels, ends = _resnet_blocks(stem, layers)
    net = BlockNet("resnet18_narrow", {"arch": "resnet18_narrow", "num_classes": num_classes, "width": width,
                                       "stem_stride": stem_stride, "stem_pool": stem_pool},
                   names, blocks, _head(channels[-1], num_classes=num_classes), channels, ends)
    for m in net.blocks.modules():  # torchvision ResNet init
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net


# -------------------------------------------------------------------------------------------- DenseNet

def _densenet_blocknet(arch: str, config: dict, tv: torchvision.models.DenseNet, classifier: nn.Linear) -> BlockNet:
    """Blocks b1..bS: (stem +) denseblock s + transition s; the last one ends with norm5 + ReLU."""
    f = tv.features
    stem = nn.Sequential(OrderedDict(conv0=f.conv0, norm0=f.norm0, relu0=f.relu0, pool0=f.pool0))
    num_stages = sum(name.startswith("denseblock") for name, _ in f.named_children())
    names, blocks, channels = [], [], []
    for s in range(1, num_stages + 1):
        parts = [("stem", stem)] if s == 1 else []
        parts.append((f"denseblock{s}", getattr(f, f"denseblock{s}")))
        if s < num_stages:
            transition = getattr(f, f"transition{s}")
            parts.append((f"transition{s}", transition))
            channels.append(transition.conv.out_channels)
        else:
            parts += [("norm5", f.norm5), ("relu5", nn.ReLU(inplace=True))]
            channels.append(f.norm5.num_features)
        names.append(f"b{s}")
        blocks.append(nn.Sequential(OrderedDict(parts)))
    ends = {name: k for k, name in enumerate(names, start=1)}
    return BlockNet(arch, config, names, blocks, _head(channels[-1], classifier), channels, ends)


def _densenet121(num_classes: int, weights=None, **kwargs) -> BlockNet:
    tv = _torchvision_model(torchvision.models.densenet121, num_classes, weights, kwargs)
    classifier = tv.classifier if weights is None else nn.Linear(tv.classifier.in_features, num_classes)
    config = {"arch": "densenet121", "num_classes": num_classes, "weights": _weights_config(weights), **kwargs}
    return _densenet_blocknet("densenet121", config, tv, classifier)


def _densenet_small(num_classes: int, growth_rate: int = 12, block_config=(4, 4, 4, 4),
                    num_init_features: int = 24, bn_size: int = 4, drop_rate: float = 0.0) -> BlockNet:
    """torchvision ``DenseNet`` with a 3x3 stride-2 stem conv and no stem pool, for 64-px inputs."""
    tv = torchvision.models.DenseNet(growth_rate=growth_rate, block_config=tuple(block_config),
                                     num_init_features=num_init_features, bn_size=bn_size,
                                     drop_rate=drop_rate, num_classes=num_classes)
    tv.features.conv0 = nn.Conv2d(3, num_init_features, 3, stride=2, padding=1, bias=False)
    nn.init.kaiming_normal_(tv.features.conv0.weight)  # as torchvision's DenseNet init
    tv.features.pool0 = nn.Identity()
    config = {"arch": "densenet_small", "num_classes": num_classes, "growth_rate": growth_rate,
              "block_config": list(block_config), "num_init_features": num_init_features,
              "bn_size": bn_size, "drop_rate": drop_rate}
    return _densenet_blocknet("densenet_small", config, tv, tv.classifier)


def build_backbone(arch: str, num_classes: int, input_norm: dict | None = None, **kwargs) -> BlockNet:
    """Build ``arch`` (one of ``ARCHS``) as a :class:`BlockNet`; ``build_backbone(**net.config)`` rebuilds it.

    ``weights`` (torchvision archs only, default None) is passed to torchvision; the ImageNet fc is then
    replaced by a fresh ``num_classes`` one. Nothing is fetched unless a user passes weights.
    ``input_norm`` (``{"mean": [r, g, b], "std": [r, g, b]}``): the input normalisation the network was trained
    with (:class:`InputNorm`); None is kalib's own (:func:`kalib.train.to_input`).
    """
    if input_norm is not None:
        return _add_input_norm(build_backbone(arch, num_classes, **kwargs), input_norm)
    if arch in TORCHVISION_RESNETS:
        return _torchvision_resnet(arch, num_classes, **kwargs)
    if arch == "resnet18_narrow":
        return _resnet18_narrow(num_classes, **kwargs)
    if arch == "densenet121":
        return _densenet121(num_classes, **kwargs)
    if arch == "densenet_small":
        return _densenet_small(num_classes, **kwargs)
    raise ConfigError(f"unknown arch {arch!r}; valid archs: {', '.join(ARCHS)}")
