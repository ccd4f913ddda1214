"""Paper-scale throughput: ResNet-50 teacher pretraining and block-wise amalgamation on synthetic data.

    python benchmarks/gpu_resnet50.py                       # GPU: 224 px, batch 16, the paper's setting
    python benchmarks/gpu_resnet50.py --amp bf16            # with torch.autocast (bf16)
    python benchmarks/gpu_resnet50.py --device cpu --size 32 --steps 2 --warmup 1 --blocks b1_1,b4_3

Synthetic uint8 images (no dataset needed), two frozen teachers with 10 tasks each, C = A (20 tasks). Two
phases, each timed over ``--steps`` SGD steps after ``--warmup`` untimed ones:

* teacher pretraining (Eq. 2): forward + backward + SGD step of one ResNet-50 with a 10-way BCE head;
* block training (Eq. 6–8), for each block in ``--blocks``: the student's frozen blocks 1..k-1 recomputed
  under ``no_grad``, student block k, the filters f_n^k, both teachers' frozen blocks k+1..B and heads, the
  teachers' soft targets on the same batch (no_grad), backward and SGD step on block k and the filters.
  ``cached-prefix`` repeats the step with F^{k-1} computed once (what a feature cache saves).

Prints images/s per phase and, on CUDA, ``torch.cuda.max_memory_allocated`` per phase (peak since the
phase started). Numbers depend on the card, its load and the software versions; report them with the
``device`` line this script prints.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import time

import torch
import torch.nn.functional as F

from kalib.method.blockwise import entangled_predictions, filtered_loss
from kalib.method.filters import select_tasks, task_plan
from kalib.method.student import freeze, make_filters
from kalib.models import build_backbone
from kalib.train import to_input


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, amp: str):
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[amp])


def peak_mib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def timed(step, device, steps: int, warmup: int, batch: int) -> float:
    """Images per second of ``step()`` over ``steps`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--size", type=int, default=224, help="input side in pixels (default 224)")
    parser.add_argument("--batch", type=int, default=16, help="batch size (paper: 16)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per phase")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each phase")
    parser.add_argument("--blocks", default="b1_1,b1_3,b2_4,b3_6,b4_3",
                        help="comma-separated blocks to time, or 'all'")
    parser.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"],
                        help="torch.autocast dtype (fp16 uses a GradScaler)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    cl = torch.channels_last
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, {args.arch} at {args.size} px, batch "
          f"{args.batch}, amp {args.amp}, {args.steps} timed steps after {args.warmup} warm-up steps")
    results = {"device": str(device), "device_name": name, "torch": torch.__version__, "arch": args.arch,
               "size": args.size, "batch": args.batch, "amp": args.amp, "steps": args.steps}
    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8).to(device)
    labels = torch.randint(0, 2, (args.batch, 10), device=device).float()
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")

    def sgd(params):
        return torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-3)

    # ---- teacher pretraining (Eq. 2)
    reset_peak(device)
    teacher = build_backbone(args.arch, 10).to(device, memory_format=cl).train()
    opt = sgd(teacher.parameters())

    def teacher_step():
        with autocast(device, args.amp):
            loss = F.binary_cross_entropy_with_logits(teacher(to_input(images)).float(), labels)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    ips = timed(teacher_step, device, args.steps, args.warmup, args.batch)
    results["teacher_pretraining"] = {"images_per_s": round(ips, 2), "peak_mib": peak_mib(device)}
    print(f"teacher pretraining          {ips:9.1f} img/s   peak {peak_mib(device)} MiB")

    # ---- block-wise training (Eq. 6-8)
    teachers = [teacher.eval(), copy.deepcopy(teacher)]
    del opt
    freeze(teachers)
    labels_per_teacher = [[f"t{n}_{i}" for i in range(10)] for n in range(2)]
    plan = task_plan(None, labels_per_teacher)
    student = copy.deepcopy(teachers[0]).requires_grad_(False).eval()
    filters = make_filters(student, teachers).to(device, memory_format=cl)
    names = student.block_names if args.blocks == "all" else args.blocks.split(",")
    results["block_training"] = {}
    for block_name in names:
        k = student.block_index(block_name)
        block, filters_k = student.blocks[k - 1], filters[k - 1]
        block.requires_grad_(True).train()
        filters_k.requires_grad_(True).train()
        opt = sgd(list(block.parameters()) + list(filters_k.parameters()))
        cached = {}

        def block_step(use_cache: bool):
            with torch.no_grad(), autocast(device, args.amp):
                x = to_input(images)
                soft = torch.empty(args.batch, len(plan.tasks), device=device)
                for n in plan.active_teachers:
                    soft[:, plan.per_teacher[n]] = select_tasks(teachers[n](x), plan.local_per_teacher[n]).float()
                if use_cache and "f" in cached:
                    feats = cached["f"]
                else:
                    feats = student.prefix(x, k - 1)
                    if use_cache:
                        cached["f"] = feats
            with autocast(device, args.amp):
                pred = entangled_predictions(block(feats), k, filters_k, teachers, plan)
                loss = filtered_loss(pred.float(), soft)[0]
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

        out = {}
        for mode, use_cache in (("recomputed_prefix", False), ("cached_prefix", True)):
            reset_peak(device)
            ips = timed(lambda: block_step(use_cache), device, args.steps, args.warmup, args.batch)
            out[mode] = {"images_per_s": round(ips, 2), "peak_mib": peak_mib(device)}
        results["block_training"][block_name] = out
        print(f"block {block_name:5s} ({k:2d}/{student.num_blocks}) "
              f"{out['recomputed_prefix']['images_per_s']:9.1f} img/s recomputed prefix, "
              f"{out['cached_prefix']['images_per_s']:9.1f} img/s cached   peak "
              f"{out['recomputed_prefix']['peak_mib']} / {out['cached_prefix']['peak_mib']} MiB")
        block.requires_grad_(False).eval()
        filters_k.requires_grad_(False).eval()
        del opt
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


if __name__ == "__main__":
    main()
