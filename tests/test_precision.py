"""Training precision (issue 28): ``auto`` picks bf16 only where the device has it natively, bf16 autocast
trains every step with float32 weights and losses while evaluation stays float32, fp32 fingerprints of teachers
and baselines are those of before and bf16 has its own, and the preset field checks its value."""

import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F

import kalib.device
from kalib.device import autocast, native_bf16, resolve_precision
from kalib.errors import ConfigError, ConfigMismatchError
from kalib.method.teachers import train_teacher
from kalib.models import build_backbone
from kalib.runs.checkpoints import EpochFile, read_meta
from kalib.runs.config import digest, override
from kalib.runs.presets import PRESETS, get_preset
from kalib.train import Schedule, fit, predict, to_input

CPU = torch.device("cpu")
FLAGS = "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 avx2 avx512f {extra}\n\n"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cpu_flags(tmp_path, monkeypatch):
    """Pretend the CPU has the flags given: ``cpu_flags("avx512_bf16")``; None: /proc/cpuinfo unreadable."""
    def set_flags(extra: str | None):
        path = tmp_path / "cpuinfo"
        if extra is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(FLAGS.format(extra=extra))
        monkeypatch.setattr(kalib.device, "CPUINFO", path)
    return set_flags


# ------------------------------------------------------------------------------------- resolution

@pytest.mark.parametrize("extra, native", [("avx512_bf16", True), ("amx_bf16 amx_tile", True),
                                          ("avx512_vnni", False), ("", False), (None, False)])
def test_auto_is_bf16_exactly_where_the_cpu_has_native_bf16(cpu_flags, extra, native):
    cpu_flags(extra)
    assert native_bf16(CPU) is native
    assert resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
    with autocast(CPU, "auto"):
        assert torch.is_autocast_enabled("cpu") is native
    # fp32 and the default never autocast on the CPU, bf16 always does, whatever the CPU has
    assert resolve_precision("fp32", CPU) == resolve_precision(None, CPU) == "fp32"
    assert resolve_precision("bf16", CPU) == "bf16"
    for precision in (None, "fp32"):
        with autocast(CPU, precision):
            assert not torch.is_autocast_enabled("cpu")
    with autocast(CPU, "bf16"):
        assert torch.is_autocast_enabled("cpu") and (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_a_cpu_without_native_bf16_never_gets_it_from_auto(cpu_flags):
    cpu_flags("avx2 fma avx512f avx512bw")
    assert resolve_precision("auto", "cpu") == "fp32"
    torch.manual_seed(0)
    net = build_backbone("resnet18_narrow", 4, width=8)
    fit(net, torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8), torch.rand(16, 4),
        F.binary_cross_entropy_with_logits, Schedule(epochs=1, batch_size=8), precision="auto",
        store=(store := _Store()))
    assert "precision" not in store.meta            # trained (and its epoch state kept) in fp32


def test_cuda_keeps_bf16_for_auto_and_by_default_and_other_devices_get_no_bf16(cpu_flags):
    cpu_flags("")
    cuda, mps = torch.device("cuda"), torch.device("mps")
    assert native_bf16(cuda) and not native_bf16(mps)
    assert resolve_precision("auto", cuda) == resolve_precision(None, cuda) == "bf16"
    assert resolve_precision("fp32", cuda) == "fp32"
    assert resolve_precision("auto", mps) == "fp32"
    with pytest.raises(ConfigError, match="bf16 runs on the CPU or CUDA"):
        resolve_precision("bf16", mps)
    with pytest.raises(ConfigError, match="unknown precision 'fp16'"):
        resolve_precision("fp16", CPU)


# ------------------------------------------------------------------------------------- training

class _Store:
    """An EpochStore that keeps the meta of the run that saved."""
    meta = None

    def load(self, meta):
        self.meta = meta

    def save(self, state):
        pass


def test_bf16_trains_differently_with_float32_weights_loss_and_evaluation(smoke_bench):
    images, targets = smoke_bench.train_images[:128], smoke_bench.train_labels[:128, :10]
    torch.manual_seed(0)
    generic = build_backbone("resnet18_narrow", 10, width=8)
    schedule = Schedule(epochs=1, lr=0.05, batch_size=32)
    nets, losses = {}, {}
    for precision in ("fp32", "bf16"):
        seen = []
        nets[precision] = train_teacher(generic, images, targets, schedule, seed=1, precision=precision)
        store = _Store()
        fit(build_backbone("resnet18_narrow", 10, width=8), images, targets,
            lambda out, t, seen=seen: seen.append(out.dtype) or F.binary_cross_entropy_with_logits(out, t), schedule,
            store=store, precision=precision)
        losses[precision] = (seen[0], store.meta.get("precision"))
    assert losses == {"fp32": (torch.float32, None), "bf16": (torch.bfloat16, "bf16")}
    fp32, bf16 = nets["fp32"].state_dict(), nets["bf16"].state_dict()
    assert all(v.dtype == fp32[k].dtype for k, v in bf16.items()), "weights stay float32"
    assert not all(torch.equal(v, fp32[k]) for k, v in bf16.items() if v.is_floating_point())
    # evaluation stays float32: predict is the plain float32 forward pass, whatever precision trained the weights
    test = smoke_bench.test_images[:64]
    for net in nets.values():
        scores = predict(net, test)
        with torch.no_grad():
            assert scores.dtype == torch.float32 and torch.equal(scores, net.eval()(to_input(test)))


def test_teacher_hashes_of_fp32_are_those_of_before_and_bf16_is_its_own(smoke_bench, smoke_teachers, tmp_path):
    from kalib.runs.teachers import pretrain_set
    preset = get_preset("smoke")
    generic = read_meta(smoke_teachers / "generic-resnet18_narrow.json")
    before = {"role": "generic", "data": smoke_bench.spec.key(), "labels": list(smoke_bench.label_names),
              "arch": "resnet18_narrow", "arch_kwargs": {"width": 8},
              "schedule": dataclasses.asdict(preset.pretraining.generic), "seed": 0}
    assert generic["config_hash"] == digest(before) == "ae9a325626002f01"      # kalib before precisions
    assert generic["precision"] == "fp32"
    pretrain_set(override(preset, ["precision=bf16"]), smoke_bench, "2", tmp_path, 0, log=lambda *_: None)
    bf16 = read_meta(tmp_path / "generic-resnet18_narrow.json")
    assert bf16["precision"] == "bf16" and bf16["config_hash"] == digest({**before, "precision": "bf16"})
    for name in ("generic-resnet18_narrow", "set2-teacher1-resnet18_narrow"):
        a, b = (torch.load(d / f"{name}.pt", weights_only=True) for d in (smoke_teachers, tmp_path))
        assert read_meta(tmp_path / f"{name}.json")["precision"] == "bf16"
        assert not all(torch.equal(v, a[k]) for k, v in b.items() if v.is_floating_point()), name


def test_baseline_keys_of_fp32_are_those_of_before():
    from kalib.runs import baselines
    smoke, bf16 = get_preset("smoke"), override(get_preset("smoke"), ["precision=bf16"])
    assert baselines._precision(smoke, CPU) == {} and baselines._precision(bf16, None) == {"precision": "bf16"}


def test_a_bf16_run_does_not_resume_an_fp32_epoch_state(tmp_path):
    images, targets = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8), torch.rand(32, 4)
    schedule = Schedule(epochs=2, batch_size=16)
    state = EpochFile(tmp_path / "state.pt", "key")

    class Stop(Exception):
        pass

    class OneEpoch:
        load = state.load

        def save(self, s):
            state.save(s)
            raise Stop
    torch.manual_seed(0)
    with pytest.raises(Stop):
        fit(build_backbone("resnet18_narrow", 4, width=8), images, targets, F.binary_cross_entropy_with_logits,
            schedule, store=OneEpoch(), precision="fp32")
    with pytest.raises(ConfigMismatchError):
        fit(build_backbone("resnet18_narrow", 4, width=8), images, targets, F.binary_cross_entropy_with_logits,
            schedule, store=state, precision="bf16")


# ------------------------------------------------------------------------------------- settings

def test_the_preset_field_and_set():
    assert all(PRESETS[name].precision == "fp32" for name in ("smoke", "lesson", "quick"))
    assert all(p.precision == "auto" for name, p in PRESETS.items() if name.startswith("paper-"))
    assert override(get_preset("quick"), ["precision=bf16"]).precision == "bf16"
    with pytest.raises(ConfigError, match="precision must be one of fp32, bf16, auto"):
        override(get_preset("quick"), ["precision=fp16"])


def test_precision_accuracy_compares_seed_rows_across_renames(tmp_path):
    import runpy
    from pathlib import Path
    script = runpy.run_path(str(Path(__file__).resolve().parents[1] / "benchmarks" / "precision_accuracy.py"))

    def row(*values):
        return {"values": list(values), "mean": sum(values) / len(values), "std": 1.0}
    fp32 = {"seeds": [0, 1, 2], "rows": {"Target": row(1, 2, 3), "KD": row(5, 6, 7), "Target-3": row(0, 0, 0)}}
    bf16 = {"seeds": [0, 1, 2], "rows": {"Target (Eq. 9)": row(2, 3, 4), "KD": row(5, 6, 10),
                                         "Target-3 (Eq. 9)": row(0, 0, 0), "New": row(1, 1, 1)}}
    for name, data in (("fp32", fp32), ("bf16", bf16)):
        (tmp_path / f"{name}.json").write_text(json.dumps(data))
    text = script["main"]([str(tmp_path / "bf16.json"), "--fp32", str(tmp_path / "fp32.json")])
    assert "| Target (Eq. 9) (fp32: Target) | 2.00 ± 1.00 | 3.00 ± 1.00 | +1.00 | +1.0 | +1.00 ± 0.00 (3 seeds) |" in text
    assert "| KD | 6.00 ± 1.00 | 7.00 ± 1.00 | +1.00 | +1.0 | +1.00 ± 1.73 (3 seeds) |" in text
    assert "Target-3 (Eq. 9) (fp32: Target-3)" in text and "| New |" not in text


def test_seed_summary_keys_of_fp32_are_those_of_before():
    from kalib.runs.seeds import summary_key
    quick = get_preset("quick")
    before = {k: v for k, v in dataclasses.asdict(quick).items() if k != "precision"}
    assert summary_key(quick) == digest(before)
    assert summary_key(override(quick, ["precision=bf16"])) != digest(before)
