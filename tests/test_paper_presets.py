"""Paper presets (paper-voc07, paper-voc12, paper-coco): schedule, label groups, ImageNet initialisation,
the cached VOC/COCO arrays, and an end-to-end smoke run on tiny trees written by the tests (CPU, 32 px)."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import torchvision
from fake_trees import cycling_coco_annotations, cycling_voc_split, write_coco, write_voc

from kalib.data import COCO_CLASSES, VOC_CLASSES, PaperBenchmark, PaperSpec, seeded_split
from kalib.errors import ConfigError, DataRootError, GenericStageError, MissingWeightsError
from kalib.models import build_backbone
from kalib.models.pretrained import imagenet_backbone, weight_files
from kalib.runs.amalgamation import run
from kalib.runs.checkpoints import load_model, read_meta
from kalib.runs.data import load_data
from kalib.runs.presets import COCO_SPLIT_SEED, VOC_SPLIT_SEED, get_preset
from kalib.runs.teachers import prepare_generic, pretrain
from kalib.train import Schedule

PAPER = ("paper-voc07", "paper-voc12", "paper-coco")
ONE = Schedule(epochs=1)     # the paper's optimiser (lr 0.01, poly 0.9, wd 5e-3, batch 16), one epoch


# ------------------------------------------------------------------------------------------ presets

@pytest.mark.parametrize("name", PAPER)
def test_paper_schedule_backbones_and_init(name):
    p = get_preset(name)
    for s in (p.pretraining.teacher, p.student.block, p.student.finetune):
        assert (s.lr, s.power, s.weight_decay, s.batch_size, s.momentum) == (0.01, 0.9, 5e-3, 16, 0.9)
        assert s.epochs >= 1
    assert (p.nets.arch, p.nets.dense_arch, p.nets.arch_kwargs, p.nets.dense_kwargs) == ("resnet50", "densenet121", {}, {})
    assert p.nets.init == "imagenet" and isinstance(p.data, PaperSpec) and p.data.image_size == 224
    assert p.dataset == {"paper-voc07": "voc07", "paper-voc12": "voc12", "paper-coco": "coco"}[name]
    assert p.pretraining.generic.epochs == 0                          # no generic stage: ImageNet weights instead


def test_embedded_presets_keep_their_generic_stage():
    for name in ("smoke", "quick"):
        p = get_preset(name)
        assert p.dataset == "embedded" and p.nets.init == "generic" and p.nets.weights_paths == {}
        assert p.pretraining.generic.epochs >= 1


def _side(groups, name):
    return next(n for n, g in enumerate(groups) if name in g)


@pytest.mark.parametrize("name,labels,seed,dining", [("paper-voc07", VOC_CLASSES, VOC_SPLIT_SEED, "diningtable"),
                                                     ("paper-coco", COCO_CLASSES, COCO_SPLIT_SEED, "dining table")])
def test_label_groups_are_seeded_and_keep_the_fig3_pairs_apart(name, labels, seed, dining):
    p = get_preset(name)
    half = len(labels) // 2
    assert [len(g) for g in p.labels.groups] == [half, half]
    assert sorted(sum(p.labels.groups, ())) == sorted(labels) and sorted(sum(p.labels.groups3, ())) == sorted(labels)
    assert [len(g) for g in p.labels.groups3] == ([7, 7, 6] if len(labels) == 20 else [27, 27, 26])
    assert p.labels.groups == seeded_split(labels, (half, half), seed)
    assert p.labels.pairs == {"unrelated": ("bus", dining), "related": ("dog", "horse")}
    # Fig. 3 (paper §4.2): 'bus' and 'dog' from teacher 1, 'diningtable' and 'horse' from teacher 2
    assert [_side(p.labels.groups, t) for t in ("bus", "dog", dining, "horse")] == [0, 0, 1, 1]
    for a, b in p.labels.pairs.values():                           # and on different teachers of the 3-way split
        assert _side(p.labels.groups3, a) != _side(p.labels.groups3, b)
    for smaller in range(seed):                             # the documented rule: the first seed that qualifies
        g = seeded_split(labels, (half, half), smaller)
        assert [_side(g, t) for t in ("bus", "dog", dining, "horse")] != [0, 0, 1, 1]
    assert get_preset("paper-voc12").labels.groups == get_preset("paper-voc07").labels.groups


# ------------------------------------------------------------------------------------ ImageNet init

@pytest.fixture
def hub(tmp_path):
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub" / "checkpoints"
    torch.hub.set_dir(old)


def test_missing_weights_say_what_to_fetch(hub, tmp_path):
    with pytest.raises(MissingWeightsError) as err:
        imagenet_backbone("resnet50", 3)
    msg = str(err.value)
    assert "resnet50-0676ba61.pth" in msg and "https://download.pytorch.org/models/resnet50-0676ba61.pth" in msg
    assert str(hub) in msg and "--set init=random" in msg and "--allow-download" in msg
    with pytest.raises(MissingWeightsError, match="nothing.pth .*not found"):
        imagenet_backbone("densenet121", 3, weights_path=tmp_path / "nothing.pth")
    (tmp_path / "bad.pth").write_text("<html>not a weights file</html>")
    with pytest.raises(MissingWeightsError, match="bad.pth is not a readable weights file"):
        imagenet_backbone("densenet121", 3, weights_path=tmp_path / "bad.pth")
    torch.save(build_backbone("resnet18", 3).state_dict(), tmp_path / "blocknet.pth")
    with pytest.raises(MissingWeightsError, match="not a torchvision resnet18 ImageNet state dict"):
        imagenet_backbone("resnet18", 3, weights_path=tmp_path / "blocknet.pth")
    assert [n for n, _ in weight_files("densenet121")] == ["densenet121-a639ec97.pth"]
    assert "--set 'weights_paths.resnet50=\"/path/to/resnet50-0676ba61.pth\"'" in msg
    from kalib.runs.config import override
    assert override(get_preset("paper-voc07"), ['weights_paths.resnet50="/x/r.pth"']).nets.weights_paths == \
        {"resnet50": "/x/r.pth"}


def test_imagenet_weights_from_the_hub_cache_fill_every_block(hub, tmp_path, one_thread):
    torch.manual_seed(7)
    tv = torchvision.models.resnet18(weights=None).eval()
    hub.mkdir(parents=True)
    torch.save(tv.state_dict(), hub / "resnet18-f37072fd.pth")      # torchvision's file name, no download
    path = prepare_generic(tmp_path / "teachers", "resnet18", ["a", "b", "c"], init="imagenet", log=lambda s: None)
    model, meta = load_model(path)                                    # an ordinary kalib checkpoint
    assert meta["init"] == "imagenet" and meta["weights"].endswith("resnet18-f37072fd.pth")
    assert meta["config"]["weights"] is None and model.num_classes == 3
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = model.eval().head.flatten(model.head.pool(model.prefix(x, model.num_blocks)))
        theirs = torch.flatten(tv.avgpool(tv.layer4(tv.layer3(tv.layer2(tv.layer1(
            tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))))))), 1)
    assert torch.allclose(ours, theirs, atol=1e-5)
    # re-used when asked again with the same init; refused with another
    assert prepare_generic(tmp_path / "teachers", "resnet18", ["a", "b", "c"], init="imagenet") == path
    with pytest.raises(FileExistsError, match="made with init 'imagenet'"):
        prepare_generic(tmp_path / "teachers", "resnet18", ["a", "b", "c"], init="random")


def test_densenet121_old_torchvision_keys_are_renamed(tmp_path, one_thread):
    torch.manual_seed(3)
    tv = torchvision.models.densenet121(weights=None).eval()
    # torchvision's .pth file: 'norm.1'/'conv.2' names of old torchvision, no num_batches_tracked
    old = {k.replace("norm1.", "norm.1.").replace("conv2.", "conv.2."): v for k, v in tv.state_dict().items()
           if not k.endswith("num_batches_tracked")}
    assert any(".norm.1." in k for k in old)
    torch.save(old, tmp_path / "densenet121-a639ec97.pth")
    net, source = imagenet_backbone("densenet121", 4, weights_path=tmp_path / "densenet121-a639ec97.pth")
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ours = net.eval().head.pool(net.prefix(x, net.num_blocks)).flatten(1)
        theirs = torch.nn.functional.adaptive_avg_pool2d(torch.relu(tv.features(x)), 1).flatten(1)
    assert torch.allclose(ours, theirs, atol=1e-5) and source.endswith("densenet121-a639ec97.pth")


# -------------------------------------------------------------------------------------- cached data

def voc_tree(root, year="2007", splits=("trainval", "test"), n_train=24):
    write_voc(root, year, {splits[0]: cycling_voc_split(1, n_train),
                           splits[1]: cycling_voc_split(1001, 8, per_image=5, difficult_every=7)})
    return root


def coco_tree(root, n_train=24):
    train_ids = list(range(1, n_train + 1))
    write_coco(root, "train2014", train_ids + [999], cycling_coco_annotations(train_ids, 4))  # 999: no annotation
    val_ids = list(range(2001, 2009))
    write_coco(root, "val2014", val_ids, cycling_coco_annotations(val_ids, 10))
    return root


def tiny(name, size=32):
    p = get_preset(name)
    return p.replace(data=dataclasses.replace(p.data, image_size=size), teacher=ONE, block=ONE, finetune=ONE,
                     loss_slice=8, block_images=0)


def test_voc_arrays_splits_labels_and_cache(tmp_path):
    root = voc_tree(tmp_path / "data")
    logs = []
    bench = load_data(tiny("paper-voc07"), data_root=root, workers=0, log=logs.append)
    assert isinstance(bench, PaperBenchmark) and bench.label_names == VOC_CLASSES
    assert bench.train_images.shape == (24, 3, 32, 32) and bench.train_images.dtype == torch.uint8
    assert bench.test_images.shape == (8, 3, 32, 32) and bench.pool_images is bench.train_images
    assert bench.train_ids[0] == "000001" and bench.test_ids[-1] == "001008"
    # train labels 0/1 (a difficult-only class counts as present), test labels keep -1 for the metrics
    assert (bench.train_targets == -1).any() and set(bench.train_labels.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(bench.train_labels, bench.train_targets.abs())
    assert (bench.test_labels == -1).any() and ((bench.test_labels == 1).sum(0) > 0).all()
    # the stored image is the whole JPEG warped to 32x32 (bilinear; JPEG decoding may differ by a few levels)
    from PIL import Image
    jpeg = root / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000003.jpg"
    ref = np.asarray(Image.open(jpeg).convert("RGB").resize((32, 32), Image.BILINEAR)).transpose(2, 0, 1)
    assert np.abs(bench.train_images[2].numpy().astype(int) - ref).mean() < 3
    assert sum("decoding" in line for line in logs) == 2
    # second load: straight from the cache, no decoding
    logs.clear()
    again = load_data(tiny("paper-voc07"), data_root=root, workers=0, log=logs.append)
    assert logs == [] and torch.equal(again.test_images, bench.test_images) and again.cache == bench.cache
    assert again.spec.cache_key() == bench.spec.cache_key() and again.spec.root == str(root.resolve())
    assert bench.spec.key() == tiny("paper-voc07").data.key()     # checkpoints name the data, not its folder
    # a changed split file is a new cache entry
    split = root / "VOCdevkit" / "VOC2007" / "ImageSets" / "Main" / "trainval.txt"
    split.write_text("".join(split.read_text().splitlines(keepends=True)[:20]))
    changed = load_data(tiny("paper-voc07"), data_root=root, workers=0, log=logs.append)
    assert len(changed.train_images) == 20 and changed.cache != bench.cache
    with pytest.raises(GenericStageError, match="ImageNet"):
        bench.generic_images


def test_voc12_uses_train_and_val(tmp_path):
    root = voc_tree(tmp_path, "2012", ("train", "val"), n_train=6)
    bench = load_data(tiny("paper-voc12"), data_root=tmp_path, workers=0, log=lambda s: None)
    assert bench.spec.splits == ("train", "val") and len(bench.train_images) == 6 and len(bench.test_images) == 8
    with pytest.raises(DataRootError, match=r"VOC 2007 tree .*ImageSets/Main/trainval.txt"):
        load_data(tiny("paper-voc07"), data_root=root, workers=0)


def test_coco_arrays_keep_unannotated_images(tmp_path):
    root = coco_tree(tmp_path)
    bench = load_data(tiny("paper-coco"), data_root=root, workers=0, log=lambda s: None)
    assert bench.label_names == COCO_CLASSES and bench.train_labels.shape == (25, 80)
    assert bench.train_ids[-1] == "999" and bench.train_labels[-1].sum() == 0
    assert bench.test_labels.shape == (8, 80) and (bench.test_labels.sum(0) > 0).all()


def test_data_root_errors_name_path_and_layout(tmp_path, monkeypatch):
    monkeypatch.delenv("KALIB_DATA_ROOT", raising=False)
    with pytest.raises(DataRootError, match="--data-root DIR .*VOCdevkit/VOC2007/JPEGImages"):
        load_data(get_preset("paper-voc07"))
    with pytest.raises(DataRootError, match="instances_train2014.json not found; expected ROOT/train2014"):
        load_data(get_preset("paper-coco"), data_root=tmp_path)
    with pytest.raises(DataRootError, match="is not a directory"):
        load_data(get_preset("paper-voc07"), data_root=tmp_path / "missing")
    voc_tree(tmp_path / "v", n_train=3)
    (tmp_path / "v" / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(DataRootError, match="1 of 3 images of split trainval are missing, e.g. .*000002.jpg"):
        load_data(get_preset("paper-voc07"), data_root=tmp_path / "v", workers=0, log=lambda s: None)
    monkeypatch.setenv("KALIB_DATA_ROOT", str(tmp_path / "v"))             # the environment as fallback
    with pytest.raises(DataRootError, match="000002.jpg"):
        load_data(get_preset("paper-voc07"), workers=0, log=lambda s: None)


def test_load_data_gives_the_embedded_benchmark_for_embedded_presets(monkeypatch):
    """One function loads every preset's data (kalib.runs.data.load_data, what the CLI, the notebooks and the
    experiments call): an embedded benchmark gets ``data_root`` as its Fashion-MNIST folder, Table 2 its
    harder variant."""
    import kalib.runs.data
    calls = []
    monkeypatch.setattr(kalib.runs.data, "load_benchmark", lambda spec, **kw: calls.append((spec, kw)))
    load_data(get_preset("smoke"), data_root="/fashion", allow_download=True)
    load_data(get_preset("smoke"), "table2")
    assert calls == [(get_preset("smoke").data, {"allow_download": True, "data_root": "/fashion"}),
                     (get_preset("smoke").hard_data, {"allow_download": False, "data_root": None})]
    with pytest.raises(ConfigError, match="paper-voc07 has no table2 data"):
        load_data(get_preset("paper-voc07"), "table2")


# ------------------------------------------------------------------------------------- end to end

TINY_NET = {"arch": "resnet18_narrow", "arch_kwargs": {"width": 8}}   # keeps the end-to-end runs in seconds


def _pretrain_like_the_cli(preset, bench, out, teacher_set="2", init="random"):
    """What `kalib pretrain` does for a paper preset: the shared generic start, then Eq. 2 teachers."""
    groups, arch, kwargs = {"2": (preset.labels.groups, preset.nets.arch, preset.nets.arch_kwargs),
                            "3": (preset.labels.groups3, preset.nets.arch, preset.nets.arch_kwargs),
                            "dense": (preset.labels.groups, preset.nets.dense_arch, preset.nets.dense_kwargs)}[teacher_set]
    prepare_generic(out, arch, bench.label_names, init=init, arch_kwargs=kwargs, seed=preset.seed,
                    log=lambda s: None)
    return pretrain(bench, groups, arch, kwargs, preset.pretraining.generic, preset.pretraining.teacher, out, seed=preset.seed,
                    log=lambda s: None)


def test_paper_backbones_train_teachers_on_a_fake_voc_tree(tmp_path, one_thread):
    """ResNet-50 and DenseNet-121 (random init, 32 px): the paper's teachers (Eq. 2) on VOC arrays."""
    preset = tiny("paper-voc07")
    bench = load_data(preset, data_root=voc_tree(tmp_path / "data", n_train=16), workers=0, log=lambda s: None)
    for teacher_set, arch in (("2", "resnet50"), ("dense", "densenet121")):
        paths = _pretrain_like_the_cli(preset, bench, tmp_path / "teachers", teacher_set)
        assert [p.name for p in paths] == [f"set2-teacher1-{arch}.pt", f"set2-teacher2-{arch}.pt"]
        for path, labels in zip(paths, preset.labels.groups):
            meta = read_meta(path)
            assert meta["labels"] == list(labels) and meta["config"]["arch"] == arch
            assert math.isfinite(meta["test_ap"]["mAP"])
        assert read_meta(tmp_path / "teachers" / f"generic-{arch}.pt")["init"] == "random"


def test_paper_voc07_end_to_end_on_a_fake_tree(tmp_path, one_thread):
    """paper-voc07 (a width-8 network instead of ResNet-50, 32 px): the 10/10 teachers, then the whole of
    Alg. 1 with C = A through kalib.runs.amalgamation.run."""
    preset = tiny("paper-voc07").replace(**TINY_NET)
    bench = load_data(preset, data_root=voc_tree(tmp_path / "data"), workers=0, log=lambda s: None)
    paths = _pretrain_like_the_cli(preset, bench, tmp_path / "teachers")
    assert [read_meta(p)["labels"] for p in paths] == [list(g) for g in preset.labels.groups]
    assert all(math.isfinite(read_meta(p)["test_ap"]["mAP"]) for p in paths)
    record = run(bench, preset, tmp_path / "teachers", tmp_path / "target", log=lambda s: None)
    assert len(record["blocks"]) == 8 and set(record["chosen_block"]) == set(VOC_CLASSES)
    assert record["pairs"] == {"unrelated": ["bus", "diningtable"], "related": ["dog", "horse"]}
    assert 0 <= record["target_ap"]["mAP"] <= 100 and 0 <= record["teacher_ap"]["mAP"] <= 100
    assert (tmp_path / "target" / "targetnet.pt").is_file()
    assert json.loads((tmp_path / "target" / "run.json").read_text())["preset"] == "paper-voc07"


def test_paper_coco_end_to_end_on_a_fake_tree(tmp_path, one_thread):
    """paper-coco (width-8 network, 32 px): 40/40 teachers; the student for the pair bus / dining table."""
    preset = tiny("paper-coco").replace(**TINY_NET)
    bench = load_data(preset, data_root=coco_tree(tmp_path / "data"), workers=0, log=lambda s: None)
    _pretrain_like_the_cli(preset, bench, tmp_path / "teachers")
    record = run(bench, preset, tmp_path / "teachers", tmp_path / "target", tasks="bus,dining table",
                 log=lambda s: None)
    assert record["tasks"] == ["bus", "dining table"] and record["task_teacher"] == [1, 2]
    assert set(record["target_ap"]) == {"bus", "dining table", "mAP"}


def test_gpu_benchmark_script_runs_on_the_cpu_with_tiny_sizes(tmp_path, one_thread):
    import runpy
    from pathlib import Path
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_resnet50.py"
    main = runpy.run_path(str(script))["main"]
    out = main(["--device", "cpu", "--arch", "resnet18", "--size", "32", "--steps", "1", "--warmup", "0",
                "--blocks", "b1_1,b4_2", "--json", str(tmp_path / "r.json")])
    assert json.loads((tmp_path / "r.json").read_text()) == out
    assert out["teacher_pretraining"]["images_per_s"] > 0 and out["teacher_pretraining"]["peak_mib"] is None
    assert set(out["block_training"]) == {"b1_1", "b4_2"}
    assert all(v["images_per_s"] > 0 for b in out["block_training"].values() for v in b.values())


def test_paper_preset_through_the_command_line(tmp_path, hub, capsys, one_thread):
    """`kalib pretrain / amalgamate / evaluate --preset paper-voc07 --data-root DIR` on a fake tree, made tiny
    with --set (32 px, width-8 network, random shared init, one epoch per stage)."""
    from kalib.cli import main
    root = voc_tree(tmp_path / "data")
    tiny_sets = ["--set", "data.image_size=32", "--set", "arch=resnet18_narrow", "--set", "arch_kwargs.width=8",
                 "--set", "teacher.epochs=1", "--set", "block.epochs=1", "--set", "finetune.epochs=1",
                 "--set", "loss_slice=8"]
    common = ["--preset", "paper-voc07", "--data-root", str(root), *tiny_sets]
    # ImageNet init is the preset's default: without the weights, one line saying what to fetch
    assert main(["pretrain", "--preset", "paper-voc07", "--data-root", str(root), "--set", "data.image_size=32",
                 "--out", str(tmp_path / "t")]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]                     # (decoding progress bars come before it)
    assert last.startswith("kalib pretrain: error: ImageNet weights for resnet50 not found")
    assert "resnet50-0676ba61.pth" in last and "--set init=random" in last
    assert main(["pretrain", *common, "--set", "init=random", "--out", str(tmp_path / "t")]) == 0
    assert read_meta(tmp_path / "t" / "generic-resnet18_narrow.pt")["init"] == "random"
    assert main(["amalgamate", *common, "--set", "init=random", "--teachers", str(tmp_path / "t"),
                 "--out", str(tmp_path / "target")]) == 0
    assert "TargetNet test mAP" in capsys.readouterr().out
    assert main(["evaluate", str(tmp_path / "target" / "targetnet.pt"), *common, "--set", "init=random",
                 "--json"]) == 0
    ap = json.loads(capsys.readouterr().out)
    assert set(ap) == set(VOC_CLASSES) | {"mAP"} and 0 <= ap["mAP"] <= 100
