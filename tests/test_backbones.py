"""Block-decomposed backbones (paper Eq. 3, docs/design.md §1): the split covers each network exactly."""
import json

import pytest
import torch
import torchvision

from kalib.models import ARCHS, BlockNet, build_backbone

TORCHVISION = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50,
               "densenet121": torchvision.models.densenet121, "resnet34": torchvision.models.resnet34}
DEEP = ("resnet34", "resnet101", "resnet152")    # units as resnet18 and resnet50: split checked at stage ends only (time)
UNITS = {"resnet34": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3), "resnet152": (3, 8, 36, 3)}
EXPECTED_NAMES = {
    "resnet18": [f"b{s}_{i}" for s in (1, 2, 3, 4) for i in (1, 2)],
    "resnet18_narrow": [f"b{s}_{i}" for s in (1, 2, 3, 4) for i in (1, 2)],
    "resnet50": [f"b{s}_{i}" for s, n in zip((1, 2, 3, 4), (3, 4, 6, 3)) for i in range(1, n + 1)],
    "densenet121": ["b1", "b2", "b3", "b4"],
    "densenet_small": ["b1", "b2", "b3", "b4"],
    **{a: [f"b{s}_{i}" for s, n in zip((1, 2, 3, 4), u) for i in range(1, n + 1)] for a, u in UNITS.items()},
}
EXPECTED_STAGE_ENDS = {
    "resnet18": {"b1": 2, "b2": 4, "b3": 6, "b4": 8},
    "resnet18_narrow": {"b1": 2, "b2": 4, "b3": 6, "b4": 8},
    "resnet50": {"b1": 3, "b2": 7, "b3": 13, "b4": 16},
    "densenet121": {"b1": 1, "b2": 2, "b3": 3, "b4": 4},
    "densenet_small": {"b1": 1, "b2": 2, "b3": 3, "b4": 4},
    **{a: {f"b{s}": sum(u[:s]) for s in (1, 2, 3, 4)} for a, u in UNITS.items()},
}


@pytest.fixture(scope="module")
def nets():
    """One eval-mode model per arch, built from seed 0, and a 64-px batch of 2."""
    built = {}
    for arch in ARCHS:
        torch.manual_seed(0)
        built[arch] = build_backbone(arch, num_classes=5).eval()
    torch.manual_seed(1)
    return built, torch.randn(2, 3, 64, 64)


@pytest.mark.parametrize("arch", ARCHS)
def test_prefix_suffix_split_equals_forward(nets, arch):
    built, x = nets
    net = built[arch]
    with torch.no_grad():
        logits = net(x)
        assert logits.shape == (2, 5)
        for k in ([0, 1, *net.stage_ends.values()] if arch in DEEP else range(net.num_blocks + 1)):
            assert torch.allclose(net.suffix(net.prefix(x, k), k), logits, atol=1e-5), k
    assert torch.equal(net.prefix(x, 0), x)


@pytest.mark.parametrize("arch", sorted(TORCHVISION))
def test_forward_equals_torchvision(nets, arch):
    built, x = nets
    torch.manual_seed(0)
    reference = TORCHVISION[arch](weights=None, num_classes=5).eval()
    net = built[arch]
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in reference.parameters())
    with torch.no_grad():
        assert torch.allclose(net(x), reference(x), atol=1e-5)


@pytest.mark.parametrize("arch", ARCHS)
def test_names_channels_and_stage_ends(nets, arch):
    built, x = nets
    net = built[arch]
    assert net.block_names == EXPECTED_NAMES[arch]
    assert net.num_blocks == len(net.blocks) == len(EXPECTED_NAMES[arch])
    assert net.stage_ends == EXPECTED_STAGE_ENDS[arch]
    for stage, k in net.stage_ends.items():
        assert net.block_names[k - 1].split("_")[0] == stage
        assert k == net.num_blocks or not net.block_names[k].startswith(stage + "_")
    h, shapes = x, []
    with torch.no_grad():
        for block in net.blocks:
            h = block(h)
            shapes.append(h.shape[1])
    assert shapes == net.out_channels
    assert net.head.fc.in_features == net.out_channels[-1]
    assert net.num_classes == 5
    assert net.block_index(net.block_names[-1]) == net.num_blocks
    assert net.block_index(net.block_names[0]) == 1


def test_paper_resnet50_channels(nets):
    net = nets[0]["resnet50"]
    assert net.out_channels == [256] * 3 + [512] * 4 + [1024] * 6 + [2048] * 3
    assert net.block_index("b3_1") == 8


def test_narrow_resnet_resolution_and_size(nets):
    built, x = nets
    narrow = built["resnet18_narrow"]
    with torch.no_grad():
        sizes = [narrow.prefix(x, narrow.stage_ends[s]).shape[-1] for s in ("b1", "b2", "b3", "b4")]
        assert narrow.prefix(x, 8).shape == (2, 128, 4, 4)
    assert sizes == [32, 16, 8, 4]
    n_narrow = sum(p.numel() for p in narrow.parameters())
    n_full = sum(p.numel() for p in built["resnet18"].parameters())
    assert n_narrow < 800_000 and n_narrow * 10 < n_full
    assert build_backbone("resnet18_narrow", 5, stem_stride=1).prefix(x[:1], 8).shape[-1] == 8


def test_densenet_small_resolution(nets):
    built, x = nets
    net = built["densenet_small"]
    with torch.no_grad():
        assert [net.prefix(x, k).shape[-1] for k in (1, 2, 3, 4)] == [16, 8, 4, 4]
    assert sum(p.numel() for p in net.parameters()) < 200_000


def test_with_new_head_is_independent_copy(nets):
    net = nets[0]["resnet18_narrow"]
    copy = net.with_new_head(3)
    assert isinstance(copy, BlockNet) and copy.num_classes == 3 and net.num_classes == 5
    assert copy.config == {**net.config, "num_classes": 3}
    assert copy.head.fc.weight.shape == (3, net.out_channels[-1])
    original = {k: v.clone() for k, v in net.state_dict().items()}
    assert {t.data_ptr() for t in copy.state_dict().values()}.isdisjoint(t.data_ptr() for t in net.state_dict().values())
    for key, value in copy.blocks.state_dict().items():
        assert torch.equal(value, net.blocks.state_dict()[key])
    with torch.no_grad():
        for p in copy.parameters():
            p.add_(1.0)
    for key, value in net.state_dict().items():
        assert torch.equal(value, original[key])


@pytest.mark.parametrize("arch", ARCHS)
def test_config_round_trip(nets, arch):
    net = nets[0][arch]
    config = json.loads(json.dumps(net.config))
    assert config["arch"] == arch and config["num_classes"] == 5
    rebuilt = build_backbone(**config)
    assert rebuilt.config == net.config
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}


def test_config_round_trip_with_kwargs():
    net = build_backbone("densenet_small", 4, growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16)
    rebuilt = build_backbone(**json.loads(json.dumps(net.config)))
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in net.state_dict().items()}
    assert build_backbone(**build_backbone("resnet18_narrow", 4, width=8).config).out_channels[-1] == 64


def test_weights_are_loaded_and_head_replaced(monkeypatch):
    """Pretrained weights go to the blocks, the ImageNet fc is replaced; no download (loader stubbed)."""
    torch.manual_seed(2)
    imagenet = torchvision.models.resnet18(weights=None).state_dict()
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", lambda *a, **k: imagenet)
    net = build_backbone("resnet18", 7, weights="IMAGENET1K_V1")
    assert net.config["weights"] == "IMAGENET1K_V1" and net.num_classes == 7
    assert torch.equal(net.blocks[0].stem.conv1.weight, imagenet["conv1.weight"])
    assert torch.equal(net.blocks[-1].conv2.weight, imagenet["layer4.1.conv2.weight"])


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="resnet18_narrow.*densenet_small"):
        build_backbone("vgg16", 5)
    net = build_backbone("densenet_small", 5)
    with pytest.raises(ValueError, match="b1, b2, b3, b4"):
        net.block_index("b1_1")
    with pytest.raises(ValueError):
        net.prefix(torch.zeros(1, 3, 64, 64), 5)


def test_narrow_resnet_below_width_8_is_refused():
    with pytest.raises(ValueError, match="width >= 8"):
        build_backbone("resnet18_narrow", 2, width=4)
