"""CPU throughput of every training step of the quick preset, each block's step next to its floor.

    python benchmarks/block_step.py [--threads 2] [--steps 10] [--warmup 3] [--blocks all] [--json PATH]
                                    [--precision fp32|bf16|both]
    python benchmarks/block_step.py --smoke          # width 8, 32 px, 2 steps: checks that it runs
    python benchmarks/block_step.py --precision both # fp32 and bf16 side by side, the ratio of every phase
    python benchmarks/block_step.py --precision both --width 64   # the same at ResNet-18's own width

The quick preset's shapes (resnet18_narrow, width 16, 64-px uint8 canvases, two teachers of 10 labels,
C = A) with random weights and random canvases: speed does not depend on the values; ``--width`` changes
only the network's base width (64 gives ResNet-18's own widths, 64-512, on the same 64-px canvases). Every measurement
times ``--steps`` steps with ``time.perf_counter`` after ``--warmup`` untimed ones; a step lasts from one
call of the trained module's forward to the next, and images/s are those of the median step (the JSON
also has the mean). Variants that are compared (floor, step and naive of a block; the two fine-tunings)
take turns at 2 steps each, so that another job on a shared machine slows them alike:

* teacher: ``kalib.train.fit`` with ``kalib.method.teachers.teacher_loss`` (to_input, forward, BCE, backward,
  SGD step; channels-last);
* for every block k, three ways to train student block k and its filters f_n^k (Eq. 6-8):
  - floor: the trainable path alone on one ready float channels-last F^{k-1} and ready targets: block k,
    f_n^k, the teachers' frozen blocks k+1..B and heads forward, backward, SGD step;
  - step: what ``kalib.method.blockwise.amalgamate`` does per batch: ``kalib.train.optimise`` over a
    ``batch_loss`` that gathers rows of the cached F^{k-1} (``prefix_features``, ``preset.student.amalgamation_cache``
    dtype) with ``block_inputs`` and the cached soft targets by index; the cache is built in its setup and its
    speed is reported on its own (``cache build``: kalib builds it once per block, so per trained image it
    costs 1/epochs of a prefix forward; the soft targets are computed once per pool for all blocks and
    runs and are left out);
  - naive: the same loop, but the frozen prefix 1..k-1 and the teachers' soft targets are recomputed on
    every batch (``_augmented_inputs``, kalib's path when batches are augmented);
* fine-tuning: ``kalib.method.finetune.finetune`` (whole TargetNet trainable, BatchNorm frozen as the preset
  says) of a TargetNet with every task branching at the first block, and at the last block.

Precision (``--precision``): every training step in fp32 (default) or in bf16 autocast, through kalib's own
``precision`` argument (``fit``, ``optimise``, ``finetune``; the floor's loop under ``kalib.device.autocast``);
the feature cache is built as kalib builds it (float32 on the CPU) in both. ``both`` measures each variant
once per precision in the same process, the two taking turns at 2 steps each like the variants (so both see
the same load), and adds a table of images/s per phase in each precision and the ratio bf16/fp32, with its
median and minimum over the phases.

Ratios are ratios of time per image: ``step/floor`` = floor img/s / step img/s (1.0 = no overhead over
the floor); ``naive/step`` = step img/s / naive img/s (what the cache saves per step); ``step + cache``
is the step with the cache build spread over the block's epochs, 1 / (1/step + 1/(epochs x cache build)),
and ``naive/(step + cache)`` what caching saves once its build is paid for.

Memory: peak resident set size of the process while a variant is set up and runs its warm-up steps
(Linux ``VmHWM``, reset before by writing 5 to ``/proc/self/clear_refs``, after ``gc.collect`` and
``malloc_trim``) and its rise over the resident size at that start. The rise covers what the variant
allocates (cache and its build, optimizer state, activations); the absolute peak also holds torch, the
networks and the variants set up before it.

FLOP/s: the FLOPs of one teacher step counted by ``torch.utils.flop_counter.FlopCounterMode`` (forward
and backward convolutions and matrix products) divided by the measured step time, against the FLOP/s of
a 2048x2048 fp32 matrix product measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from kalib.device import autocast
from kalib.memory import PeakMemory
from kalib.method.blockwise import _augmented_inputs, entangled_predictions, filtered_loss, soft_targets
from kalib.method.filters import TaskPlan, task_plan
from kalib.method.finetune import finetune
from kalib.method.pool import block_inputs, prefix_features
from kalib.method.student import freeze, init_student, make_filters
from kalib.method.targetnet import assemble
from kalib.method.teachers import teacher_loss
from kalib.models import BlockNet, build_backbone
from kalib.runs.presets import Preset, get_preset
from kalib.train import Schedule, fit, optimise, to_input

CL = torch.channels_last
CPU = torch.device("cpu")
MATMUL_N = 2048
ROUND = 2               # timed steps a variant runs before the next variant's turn


# ------------------------------------------------------------------------------------------ measuring

@contextmanager
def peak_memory(record: dict):
    """Adds ``peak_rss_mib`` and ``rss_rise_mib`` of the enclosed code to ``record`` (None where unknown)."""
    peak = PeakMemory()
    yield
    record["peak_rss_mib"], record["rss_rise_mib"] = peak.mib(), peak.rise_mib()


def step_times(module: torch.nn.Module, run, n: int) -> list[float]:
    """Seconds of each of ``run(n)``'s n steps, from one call of ``module`` to the next (the last one to
    the end of ``run``)."""
    ticks: list[float] = []
    hook = module.register_forward_pre_hook(lambda *_: ticks.append(time.perf_counter()))
    try:
        run(n)
    finally:
        hook.remove()
    if len(ticks) != n:
        raise RuntimeError(f"expected {n} calls of the timed module, got {len(ticks)}")
    return np.diff(ticks + [time.perf_counter()]).tolist()


def measure(setups: dict, batch: int, steps: int, warmup: int) -> dict[str, dict]:
    """Time variants side by side. ``setups[name](record)`` sets a variant up and returns ``(module,
    run)``: ``run(n)`` does n steps of ``batch`` images and calls ``module`` once per step. Each variant is
    set up and runs ``warmup`` untimed steps (its memory is measured over both); then the variants take
    turns at ``ROUND`` timed steps each until each has ``steps``, so that a busy stretch of a shared machine
    slows them alike. Images/s of the median step (``images_per_s``) and of the mean."""
    records: dict[str, dict] = {name: {} for name in setups}
    runs = {}
    for name, setup in setups.items():
        with peak_memory(records[name]):
            runs[name] = setup(records[name])
            runs[name][1](warmup)
    times: dict[str, list[float]] = {name: [] for name in setups}
    for done in range(0, steps, ROUND):
        for name, (module, run) in runs.items():
            times[name] += step_times(module, run, min(ROUND, steps - done))
    for name, record in records.items():
        record["images_per_s"] = round(batch / statistics.median(times[name]), 1)
        record["images_per_s_mean"] = round(batch * steps / sum(times[name]), 1)
    return records


def matmul_flops(reps: int, dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of the median of ``reps`` 2048x2048 matrix products in ``dtype`` (after one untimed product)."""
    a, b = torch.randn(MATMUL_N, MATMUL_N, dtype=dtype), torch.randn(MATMUL_N, MATMUL_N, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * MATMUL_N ** 3 / statistics.median(times)


def count_flops(run) -> int:
    """FLOPs of ``run(1)`` (one step) as counted by FlopCounterMode."""
    with FlopCounterMode(display=False) as counter:
        run(1)
    return counter.get_total_flops()


# ------------------------------------------------------------------------------------------ the setup

@dataclass
class Bench:
    """The quick preset's networks and a pool of random canvases with the teachers' cached soft targets."""
    preset: Preset
    generic: BlockNet
    teachers: list[BlockNet]
    student: BlockNet
    filters: torch.nn.ModuleList
    plan: TaskPlan
    images: torch.Tensor
    labels: torch.Tensor
    soft: torch.Tensor


def build(preset: Preset, arch_kwargs: dict, size: int, pool: int) -> Bench:
    """Generic backbone, two frozen teachers (copies with 10-way heads), student and filters as kalib
    starts them; ``pool`` random canvases and the teachers' soft targets on them."""
    torch.manual_seed(0)
    generic = build_backbone(preset.nets.arch, 10, **arch_kwargs)
    teachers = freeze([generic.with_new_head(10) for _ in range(2)])
    plan = task_plan(None, [[f"t{n}_{i}" for i in range(10)] for n in (1, 2)])
    student = init_student("generic", teachers, generic).to(memory_format=CL)
    filters = make_filters(student, teachers, preset.student.filter_reduction)
    images = torch.randint(0, 256, (pool, 3, size, size), dtype=torch.uint8)
    labels = torch.randint(0, 2, (pool, 10)).float()
    return Bench(preset, generic, teachers, student, filters, plan, images, labels,
                 soft_targets(teachers, images, plan))


def one_epoch(schedule: Schedule) -> Schedule:
    return dataclasses.replace(schedule, epochs=1)


# ------------------------------------------------------------------------------------------ the phases
# Each returns (the module called once per step, run): run(n) does n training steps.

def teacher_run(bench: Bench, precision: str = "fp32"):
    """n steps of kalib.train.fit on a fresh copy of the generic backbone with a 10-way head."""
    model = bench.generic.with_new_head(10)
    schedule = one_epoch(bench.preset.pretraining.teacher)

    def run(n):
        size = n * schedule.batch_size
        fit(model, bench.images[:size], bench.labels[:size], teacher_loss, schedule, desc="teacher",
            precision=precision)
    return model, run


def block_params(bench: Bench, k: int) -> list[torch.nn.Parameter]:
    """Train modes as amalgamate sets them for block k; returns block k's and the active filters' weights."""
    bench.student.requires_grad_(False).eval()
    bench.filters.requires_grad_(False).eval()
    block = bench.student.blocks[k - 1].requires_grad_(True).train()
    active = [bench.filters[k - 1][n].requires_grad_(True).train() for n in bench.plan.active_teachers]
    return list(block.parameters()) + [p for f in active for p in f.parameters()]


def block_loss(bench: Bench, k: int, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 7 on F^{k-1} = ``h``: student block k, f_n^k, the teachers' blocks k+1..B and heads (Eq. 6)."""
    out = entangled_predictions(bench.student.blocks[k - 1](h), k, bench.filters[k - 1], bench.teachers, bench.plan)
    return filtered_loss(out, target)[0]


def floor_run(bench: Bench, k: int, precision: str = "fp32", dtype: torch.dtype = torch.float32):
    """n steps on one ready channels-last F^{k-1} (as ``dtype``) and ready targets (no gathering)."""
    schedule = bench.preset.student.block
    with torch.no_grad():
        h = bench.student.eval().prefix(to_input(bench.images[:schedule.batch_size]), k - 1)
    h, target = h.to(dtype).contiguous(memory_format=CL), bench.soft[:schedule.batch_size]
    params = block_params(bench, k)
    opt = torch.optim.SGD(params, lr=schedule.lr, momentum=schedule.momentum, weight_decay=schedule.weight_decay)

    def run(n):
        for _ in range(n):
            with autocast(CPU, precision):
                loss = block_loss(bench, k, h, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return bench.student.blocks[k - 1], run


def step_run(bench: Bench, k: int, record: dict, pool: int, precision: str = "fp32"):
    """n steps of kalib's own loop (optimise) on F^{k-1} cached for ``pool`` canvases as
    amalgamate caches it; adds to ``record`` the cache's build speed and its size for the preset's
    ``block_images`` canvases (the pool here is smaller)."""
    images = bench.images[:pool]
    t0 = time.perf_counter()
    feats = prefix_features(bench.student, images, k - 1, getattr(torch, bench.preset.student.amalgamation_cache))
    record["cache_images_per_s"] = round(pool / (time.perf_counter() - t0), 1) if k > 1 else None
    record["cache_mib_per_block"] = (round(feats[0].numel() * feats.element_size() * bench.preset.student.block_images / 2**20)
                                     if k > 1 else None)
    params = block_params(bench, k)

    def batch_loss(b):
        return block_loss(bench, k, block_inputs(feats, images, b, CPU), bench.soft[b].to(CPU))
    return bench.student.blocks[k - 1], _optimise_run(bench, params, batch_loss, f"step {k}", precision)


def naive_run(bench: Bench, k: int, precision: str = "fp32"):
    """As the step, but the prefix 1..k-1 and the soft targets are recomputed per batch."""
    params = block_params(bench, k)

    def batch_loss(b):
        x = to_input(bench.images[b])
        h, target = _augmented_inputs(bench.student, bench.teachers, bench.plan, x, k, CPU)
        return block_loss(bench, k, h, target)
    return bench.student.blocks[k - 1], _optimise_run(bench, params, batch_loss, f"naive {k}", precision)


def _optimise_run(bench: Bench, params, batch_loss, desc: str, precision: str = "fp32"):
    schedule = one_epoch(bench.preset.student.block)

    def run(n):
        optimise(params, n * schedule.batch_size, batch_loss, schedule, desc=desc, device=CPU, precision=precision)
    return run


def finetune_run(bench: Bench, k: int, precision: str = "fp32"):
    """n steps of kalib's finetune of a TargetNet with every task branching at block k."""
    target = assemble(bench.student, bench.filters, bench.teachers, bench.plan, [k] * len(bench.plan.tasks))
    schedule = one_epoch(bench.preset.student.finetune)

    def run(n):
        size = n * schedule.batch_size
        finetune(target, bench.images[:size], bench.soft[:size], schedule,
                 freeze_bn=bench.preset.student.finetune_freeze_bn, device=CPU, precision=precision)
    return target, run


# ------------------------------------------------------------------------------------------ the run

def tagged(setups: dict, precisions) -> dict:
    """Every variant of ``setups`` (``setup(record, precision)``) once per precision, named ``NAME@PRECISION``,
    the precisions of a variant next to each other so that they take turns in :func:`measure`."""
    return {f"{name}@{p}": (lambda record, setup=setup, p=p: setup(record, p))
            for name, setup in setups.items() for p in precisions}


def of_precision(records: dict, precision: str) -> dict:
    """The records of one precision from :func:`tagged` variants, under their own names."""
    return {name.rsplit("@", 1)[0]: r for name, r in records.items() if name.endswith(f"@{precision}")}


def block_record(bench: Bench, k: int, steps: int, warmup: int, precisions=("fp32",)) -> dict[str, dict]:
    """Floor, step and naive of block k in every precision (taking turns), with the ratios of time per image;
    precision -> record."""
    batch, pool = bench.preset.student.block.batch_size, max(steps, warmup) * bench.preset.student.block.batch_size
    timed = measure(tagged({"floor": lambda r, p: floor_run(bench, k, p),
                            "step": lambda r, p: step_run(bench, k, r, pool, p),
                            "naive": lambda r, p: naive_run(bench, k, p)}, precisions), batch, steps, warmup)
    return {p: _block_ratios(bench, k, of_precision(timed, p)) for p in precisions}


def _block_ratios(bench: Bench, k: int, timed: dict) -> dict:
    floor, step, naive = timed["floor"], timed["step"], timed["naive"]
    epochs = bench.preset.student.block_epochs[k - 1] if bench.preset.student.block_epochs else bench.preset.student.block.epochs
    with_cache = step["images_per_s"]
    if step["cache_images_per_s"]:
        with_cache = 1 / (1 / step["images_per_s"] + 1 / (epochs * step["cache_images_per_s"]))
    return {"floor": floor, "step": step, "naive": naive, "epochs": epochs,
            "step_with_cache_images_per_s": round(with_cache, 1),
            "step_over_floor": round(floor["images_per_s"] / step["images_per_s"], 3),
            "naive_over_step": round(step["images_per_s"] / naive["images_per_s"], 3),
            "naive_over_step_with_cache": round(with_cache / naive["images_per_s"], 3)}


def add_shared_arguments(parser: argparse.ArgumentParser, steps: int) -> None:
    """The options of this benchmark that ``bf16_levers.py`` has too (``steps``: the default of ``--steps``)."""
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--steps", type=int, default=steps, help=f"timed steps per measurement (default {steps})")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each (default 3)")
    parser.add_argument("--blocks", default="all", help="comma-separated block names, or 'all' (default)")
    parser.add_argument("--width", type=int, default=None,
                        help="the network's base width instead of the quick preset's 16 (64: ResNet-18's own)")
    parser.add_argument("--smoke", action="store_true", help="width 8 (unless --width), 32 px, 2 steps after 1 warm-up step")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")


def parsed(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """``argv`` parsed, with ``--smoke``'s steps."""
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup = 2, 1
    return args


def shapes(preset: Preset, args: argparse.Namespace) -> tuple[dict, int]:
    """The networks' ``arch_kwargs`` and the canvas size in pixels that ``--width`` and ``--smoke`` give."""
    arch_kwargs = dict(preset.nets.arch_kwargs)
    if args.smoke or args.width:
        arch_kwargs["width"] = args.width or 8
    return arch_kwargs, 32 if args.smoke else 64


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_shared_arguments(parser, steps=10)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "both"],
                        help="precision of the training steps; both: fp32 and bf16 side by side (default fp32)")
    return parsed(parser, argv)


def cpu_model() -> dict:
    """The CPU's model name and its flags that matter here (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    first = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines) if k.strip() in ("model name", "flags")}
    flags = first.get("flags", "").split()
    return {"model": first.get("model name"), "flags": [f for f in flags if f.startswith(("avx512", "amx", "avx2", "fma"))]}


def measure_all(bench: Bench, ks, steps: int, warmup: int, precisions, batches: dict) -> dict[str, dict]:
    """Teacher, blocks and fine-tunings in every precision (taking turns); precision -> their records."""
    teacher = measure(tagged({"teacher": lambda r, p: teacher_run(bench, p)}, precisions), batches["teacher"],
                      steps, warmup)
    flops = count_flops(teacher_run(bench)[1])
    out = {}
    for p in precisions:
        t = of_precision(teacher, p)["teacher"]
        achieved = flops * t["images_per_s"] / batches["teacher"]
        matmul = matmul_flops(max(steps, 2), torch.bfloat16 if p == "bf16" else torch.float32)
        out[p] = {"teacher": {**t, "flops_per_step": flops, "flop_per_s": round(achieved),
                              "matmul_flop_per_s": round(matmul), "flop_ratio": round(achieved / matmul, 3)},
                  "blocks": {}}
    for k in ks:
        for p, record in block_record(bench, k, steps, warmup, precisions).items():
            out[p]["blocks"][bench.student.block_names[k - 1]] = record
    finetunes = {bench.student.block_names[k - 1]: lambda r, p, k=k: finetune_run(bench, k, p)
                 for k in (1, bench.student.num_blocks)}
    timed = measure(tagged(finetunes, precisions), batches["finetune"], steps, warmup)
    for p in precisions:
        out[p]["finetune"] = of_precision(timed, p)
    return out


def main(argv=None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    preset = get_preset("quick")
    arch_kwargs, size = shapes(preset, args)
    batches = {"teacher": preset.pretraining.teacher.batch_size, "block": preset.student.block.batch_size,
               "finetune": preset.student.finetune.batch_size}
    bench = build(preset, arch_kwargs, size, max(args.steps, args.warmup) * max(batches.values()))
    names = bench.student.block_names if args.blocks == "all" else args.blocks.split(",")
    ks = [bench.student.block_index(name) for name in names]
    precisions = ("fp32", "bf16") if args.precision == "both" else (args.precision,)
    results = {"torch": torch.__version__, "threads": args.threads, "cpus": os.cpu_count(), "cpu": cpu_model(),
               "loadavg_start": [round(v, 2) for v in os.getloadavg()], "arch": preset.nets.arch,
               "arch_kwargs": arch_kwargs, "size": size, "batch": batches, "steps": args.steps,
               "warmup": args.warmup, "cache_dtype": preset.student.amalgamation_cache, "precision": args.precision}
    t0 = time.perf_counter()
    measured = measure_all(bench, ks, args.steps, args.warmup, precisions, batches)
    if len(precisions) == 1:
        results.update(measured[precisions[0]])
    else:
        results.update(measured)
        results["comparison"] = comparison(measured["fp32"], measured["bf16"])
    results["seconds"] = round(time.perf_counter() - t0, 1)
    results["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    text = report(results) if len(precisions) == 1 else comparison_report(results)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


def phases(r: dict) -> dict[str, float]:
    """Images/s of every training phase of one precision's records: teacher, floor/step/naive of every block,
    the fine-tunings."""
    out = {"teacher step": r["teacher"]["images_per_s"]}
    for name, k in r["blocks"].items():
        out.update({f"{name} {part}": k[part]["images_per_s"] for part in ("floor", "step", "naive")})
    out.update({f"fine-tuning at {name}": f["images_per_s"] for name, f in r["finetune"].items()})
    return out


def block_seconds(r: dict, images: int) -> float:
    """Seconds of block-wise training at the measured step speeds: every measured block's epochs over ``images``."""
    return sum(k["epochs"] * images / k["step"]["images_per_s"] for k in r["blocks"].values())


def comparison(fp32: dict, bf16: dict, block_images: int = 7000) -> dict:
    """Images/s of every phase in both precisions, the ratio bf16/fp32, the ratios' median and minimum, and
    the ratio of block-wise training's time (the measured blocks' steps, each over its epochs of
    ``block_images``, the quick preset's)."""
    a, b = phases(fp32), phases(bf16)
    rows = {name: {"fp32": a[name], "bf16": b[name], "ratio": round(b[name] / a[name], 3)} for name in a}
    ratios = [row["ratio"] for row in rows.values()]
    worst = min(rows, key=lambda name: rows[name]["ratio"])
    blocks = {p: round(block_seconds(r, block_images), 1) for p, r in (("fp32", fp32), ("bf16", bf16))}
    return {"phases": rows, "median_ratio": round(statistics.median(ratios), 3), "min_ratio": rows[worst]["ratio"],
            "min_phase": worst, "block_training_s": blocks,
            "block_training_ratio": round(blocks["fp32"] / blocks["bf16"], 3)}


# ------------------------------------------------------------------------------------------ the table

def report(r: dict) -> str:
    """The results as markdown."""
    t, b = r["teacher"], r["batch"]
    lines = [f"torch {r['torch']}, {r['threads']} threads on {r['cpus']} CPUs (load average "
             f"{r['loadavg_start'][0]} at the start, {r['loadavg_end'][0]} at the end), {r['arch']} "
             f"{r['arch_kwargs']} at {r['size']} px, {r['steps']} timed steps after {r['warmup']} warm-up steps, "
             f"feature cache {r['cache_dtype']}, {r['seconds']} s", "",
             "| phase | batch | images/s | peak RSS MiB | RSS rise MiB |", "|---|---|---|---|---|",
             f"| teacher step (fit) | {b['teacher']} | {t['images_per_s']} | {t['peak_rss_mib']} | "
             f"{t['rss_rise_mib']} |"]
    for name, f in r["finetune"].items():
        lines.append(f"| fine-tuning, every task branching at {name} | {b['finetune']} | {f['images_per_s']} | "
                     f"{f['peak_rss_mib']} | {f['rss_rise_mib']} |")
    lines += ["", f"teacher step: {t['flops_per_step'] / 1e9:.2f} GFLOP per step, {t['flop_per_s'] / 1e9:.1f} GFLOP/s "
                  f"achieved; {MATMUL_N}x{MATMUL_N} fp32 matmul {t['matmul_flop_per_s'] / 1e9:.1f} GFLOP/s; "
                  f"ratio {t['flop_ratio']:.3f}", "",
              f"Block training, batch {b['block']} (images/s of the median step; ratios of time per image; "
              "RSS rise in MiB):", "",
              "| block | floor | step | naive | step/floor | naive/step | cache build | step + cache "
              "| naive/(step + cache) | cache MiB | RSS rise floor/step/naive |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, k in r["blocks"].items():
        cache, cache_mib = k["step"]["cache_images_per_s"] or "-", k["step"]["cache_mib_per_block"] or "-"
        rise = "/".join(str(k[p]["rss_rise_mib"]) for p in ("floor", "step", "naive"))
        lines.append(f"| {name} | {k['floor']['images_per_s']} | {k['step']['images_per_s']} | "
                     f"{k['naive']['images_per_s']} | {k['step_over_floor']:.2f} | {k['naive_over_step']:.2f} | "
                     f"{cache} | {k['step_with_cache_images_per_s']} | {k['naive_over_step_with_cache']:.2f} | "
                     f"{cache_mib} | {rise} |")
    return "\n".join(lines)


def comparison_report(r: dict) -> str:
    """The side-by-side results as markdown: images/s per phase in fp32 and bf16 and their ratio."""
    c, cpu = r["comparison"], r.get("cpu", {})
    head = (f"{cpu.get('model', 'CPU')} ({', '.join(cpu.get('flags', []))}); torch {r['torch']}, {r['threads']} "
            f"threads on {r['cpus']} CPUs (load average {r['loadavg_start'][0]} at the start, {r['loadavg_end'][0]} "
            f"at the end), {r['arch']} {r['arch_kwargs']} at {r['size']} px, {r['steps']} timed steps after "
            f"{r['warmup']} warm-up steps, fp32 and bf16 taking turns, {r['seconds']} s")
    lines = [head, "",
             "| phase | fp32 images/s | bf16 images/s | bf16/fp32 |", "|---|---|---|---|"]
    lines += [f"| {name} | {row['fp32']} | {row['bf16']} | {row['ratio']:.2f} |" for name, row in c["phases"].items()]
    mm = {p: r[p]["teacher"]["matmul_flop_per_s"] / 1e9 for p in ("fp32", "bf16")}
    lines += ["", (f"bf16/fp32 over {len(c['phases'])} phases: median {c['median_ratio']:.2f}, minimum "
                   f"{c['min_ratio']:.2f} ({c['min_phase']}); {MATMUL_N}x{MATMUL_N} matmul {mm['fp32']:.1f} GFLOP/s "
                   f"in fp32, {mm['bf16']:.1f} in bf16 ({mm['bf16'] / mm['fp32']:.2f}x)"),
              (f"block-wise training of the measured blocks at these speeds, each block's epochs of the quick preset "
               f"over 7,000 images: {c['block_training_s']['fp32']} s in fp32, {c['block_training_s']['bf16']} s in "
               f"bf16 ({c['block_training_ratio']:.2f}x)")]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
