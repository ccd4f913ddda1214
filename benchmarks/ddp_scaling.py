"""Data-parallel scaling (issue 37): images per second of a teacher step, of block-wise training and of
fine-tuning, in one process and under torchrun (kalib.distributed), the configurations side by side.

    python benchmarks/ddp_scaling.py [--configs 1x1,1x2,2x1] [--rounds 2] [--images 512] [--json PATH]
    python benchmarks/ddp_scaling.py --smoke                          # width 8, 32 px, 64 images: that it runs
    python benchmarks/ddp_scaling.py --device cuda --configs 1x1,ddp1 # one GPU: DDP's overhead at world size 1
    python benchmarks/ddp_scaling.py --paper-sizes    # ResNet-50 at 224 px: F^{k-1} bytes, prefix and step MACs

A configuration ``PxT`` is P processes of T threads each: ``1xT`` runs this script as one plain process,
``PxT`` with P > 1 under ``python -m torch.distributed.run --nproc_per_node=P``; ``ddp1`` is torchrun with one
process (the process group and DDP's wrapper, nothing to share). Configurations take turns, ``--rounds``
times, so that another job on a shared machine slows them alike; each configuration's number is the median
over its rounds. One launch (a worker) measures every phase on the quick preset's shapes (resnet18_narrow
width 16, 64-px canvases, two teachers of 10 labels, C = A) with random weights and canvases, ``--images`` of
them per phase, after one untimed pass of 2 global batches; under torchrun the clock is read after a barrier,
so a phase lasts until its slowest process ends:

* teacher: one epoch of ``kalib.train.fit`` with Eq. 2 (batch 64, the quick preset's);
* blocks b1_1, b2_2, b3_2 and b4_2: one epoch of ``kalib.method.blockwise.train_block`` (batch 32): in one
  process F^{k-1} is cached for the images first, under torchrun each process computes it for its share of
  each batch (kalib.method.pool), in both once per image;
* fine-tuning: one epoch of ``kalib.method.finetune.finetune`` (batch 32, BatchNorm frozen) of the TargetNet
  with every task at the last block.

Efficiency of ``PxT`` = its images/s / (P x T x the images/s of ``1x1``): 1.0 is linear in the cores used.
The table also gives each configuration's images/s relative to ``1xT`` with the same number of cores
(``2x1 / 1x2``: what processes gain over threads). A second table counts images per CPU-second (the CPU time
of every thread of every process of the configuration during the phase, ``time.process_time`` summed over
the ranks): on a machine shared with other jobs the wall clock says more about the others than about kalib,
while CPU time still shows what the extra processes or threads cost (communication, duplicated work,
waiting threads that spin); its efficiency is images per CPU-second relative to ``1x1``'s.

``--paper-sizes`` measures nothing in time: for ResNet-50 at 224 px (two teachers of 10 labels) it prints, for
every block k, the bytes per image of F^{k-1} (what a feature cache would hold, fp16 and fp32) and, from
``kalib.runs.budget.block_macs`` on one image, the MACs of the prefix 1..k-1 (what recomputing F^{k-1} costs per
image and epoch) against those of one training step of block k.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from kalib import distributed
from kalib.method.blockwise import soft_targets, train_block
from kalib.method.filters import task_plan
from kalib.method.finetune import finetune
from kalib.method.student import freeze, init_student, make_filters
from kalib.method.targetnet import assemble
from kalib.method.teachers import teacher_loss
from kalib.models import build_backbone
from kalib.runs.budget import block_macs
from kalib.train import Schedule, fit

BLOCKS = ("b1_1", "b2_2", "b3_2", "b4_2")
PHASES = ("teacher", *(f"block {b}" for b in BLOCKS), "finetune")


# -------------------------------------------------------------------------------- one launch (a worker)

def setup(width: int, size: int, n: int) -> dict:
    """The quick preset's networks (random weights, every process the same), ``n`` random canvases, labels."""
    torch.manual_seed(0)
    generic = build_backbone("resnet18_narrow", 10, width=width)
    teachers = freeze([generic.with_new_head(10) for _ in range(2)])
    plan = task_plan(None, [[f"t{t}_{i}" for i in range(10)] for t in (1, 2)])
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8)
    return {"generic": generic, "teachers": teachers, "plan": plan, "images": images,
            "labels": torch.randint(0, 2, (n, 10)).float(), "soft": soft_targets(teachers, images, plan)}


def phases(b: dict, device) -> dict:
    """Each phase as ``run(n)``: one epoch over the first ``n`` images."""
    student = init_student("generic", b["teachers"], b["generic"])
    filters = make_filters(student, b["teachers"], 4)
    block, tune = Schedule(epochs=1, lr=0.01, batch_size=32), Schedule(epochs=1, lr=0.01, batch_size=32)
    teacher = Schedule(epochs=1, lr=0.01, batch_size=64)

    def train_teacher(n):
        fit(b["generic"].with_new_head(10), b["images"][:n], b["labels"][:n], teacher_loss, teacher, device=device)

    def train(k):
        return lambda n: train_block(student, filters[k - 1], b["teachers"], b["plan"], b["images"][:n],
                                     b["soft"][:n], k, block, device=device)
    target = assemble(student, filters, b["teachers"], b["plan"], [student.num_blocks] * len(b["plan"].tasks))

    def tune_target(n):
        finetune(target, b["images"][:n], b["soft"][:n], tune, freeze_bn=True, device=device)
    runs = {"teacher": (train_teacher, teacher.batch_size), "finetune": (tune_target, tune.batch_size)}
    runs.update({f"block {name}": (train(student.block_index(name)), block.batch_size) for name in BLOCKS})
    return {name: runs[name] for name in PHASES}


def clock() -> tuple[float, float]:
    """Wall time once every process got here, and the CPU time of all processes so far."""
    if distributed.active():
        torch.distributed.barrier()
    return time.perf_counter(), float(distributed.sum_over_ranks(torch.tensor([time.process_time()]))[0])


def worker(args) -> None:
    world = distributed.from_environment(args.device)
    device = torch.device(args.device)
    if world is not None:
        distributed.start(world)
        device = world.device
    torch.set_num_threads(args.threads)
    bench = setup(args.width, args.size, args.images)
    out = {}
    for name, (run, batch) in phases(bench, device).items():
        run(2 * batch)                                           # warm-up, untimed
        (wall0, cpu0) = clock()
        run(args.images)
        wall, cpu = clock()
        out[name] = {"images_per_s": round(args.images / (wall - wall0), 1),
                     "images_per_cpu_s": round(args.images / (cpu - cpu0), 1)}
    if distributed.rank() == 0:
        Path(args.worker).write_text(json.dumps(out))
    distributed.stop()


# ------------------------------------------------------------------------------------ the configurations

def launch(config: str, args, path: Path) -> dict:
    """One worker launch of ``config`` (``PxT`` or ``ddp1``); its images/s per phase."""
    procs, threads = (1, 1) if config == "ddp1" else map(int, config.split("x"))
    script = [str(Path(__file__).resolve()), "--worker", str(path), "--threads", str(threads), "--device",
              args.device, "--images", str(args.images), "--width", str(args.width), "--size", str(args.size)]
    cmd = ([sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}", *script]
           if procs > 1 or config == "ddp1" else [sys.executable, *script])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(path.read_text())


def cores(config: str) -> int:
    procs, threads = (1, 1) if config == "ddp1" else map(int, config.split("x"))
    return procs * threads


def table(results: dict, key: str = "images_per_s") -> str:
    """Medians over the rounds: images per second (``key`` images_per_s) with the efficiency against linear
    scaling, or images per CPU-second (images_per_cpu_s) with the efficiency against ``1x1``."""
    configs, wall = list(results), key == "images_per_s"
    unit = "img/s" if wall else "img/CPU-s"
    more = [c for c in configs if c != "1x1"]
    lines = ["| phase | " + " | ".join(f"{c} {unit}" for c in configs) + " | "
             + " | ".join(f"{c} efficiency" for c in more) + " | 2x1 / 1x2 |",
             "|---|" + "---|" * (len(configs) + len(more) + 1)]
    for phase in PHASES:
        speed = {c: statistics.median(r[phase][key] for r in results[c]) for c in configs}
        eff = [f"{speed[c] / ((cores(c) if wall else 1) * speed['1x1']):.2f}" if "1x1" in speed else "-" for c in more]
        ratio = f"{speed['2x1'] / speed['1x2']:.2f}" if {"2x1", "1x2"} <= set(speed) else "-"
        lines.append(f"| {phase} | " + " | ".join(f"{speed[c]:.0f}" for c in configs) + " | "
                     + " | ".join(eff) + f" | {ratio} |")
    return "\n".join(lines)


def paper_sizes() -> None:
    """The F^{k-1} bytes and the prefix and step MACs per image of every block of ResNet-50 at 224 px."""
    torch.manual_seed(0)
    generic = build_backbone("resnet50", 20)
    teachers = freeze([generic.with_new_head(10) for _ in range(2)])
    plan = task_plan(None, [[f"t{t}_{i}" for i in range(10)] for t in (1, 2)])
    student = init_student("generic", teachers, generic)
    filters = make_filters(student, teachers, 4)
    x = torch.randn(1, 3, 224, 224)
    print("| block k | F^{k-1} per image, fp16 (fp32) | prefix 1..k-1, GMACs | step, GMACs |\n|---|---|---|---|")
    for k, name in enumerate(student.block_names, start=1):
        with torch.no_grad():
            values = student.prefix(x, k - 1)[0].numel() if k > 1 else 0
        macs = block_macs(student, filters[k - 1], teachers, plan, x, k)
        size = f"{values * 2 / 1024:,.0f} KiB ({values * 4 / 1024:,.0f})" if k > 1 else "the image"
        print(f"| {name} | {size} | {macs['prefix'] / 1e9:.2f} | {macs['step'] / 1e9:.2f} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default="1x1,1x2,2x1")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--images", type=int, default=512, help="images per phase (the global count)")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--smoke", action="store_true", help="width 8, 32 px, 64 images, one round")
    p.add_argument("--paper-sizes", action="store_true", help="ResNet-50's F^{k-1} bytes and MACs per block")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.smoke:
        args.width, args.size, args.images, args.rounds = 8, 32, 64, 1
    if args.worker:
        return worker(args)
    if args.paper_sizes:
        return paper_sizes()
    configs = args.configs.split(",")
    results: dict[str, list] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for c in configs:
                results[c].append(launch(c, args, Path(tmp) / f"{c}-{r}.json"))
                print(f"round {r + 1}/{args.rounds} {c}: {results[c][-1]}", flush=True)
    print(f"\n{args.images} images per phase, width {args.width}, {args.size} px, device {args.device}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end\n")
    print(table(results), table(results, "images_per_cpu_s"), sep="\n\n")
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, "results": results}, indent=1))


if __name__ == "__main__":
    main()
