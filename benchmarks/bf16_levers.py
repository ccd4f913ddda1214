"""What would make bf16 block training faster on the CPU: the levers docs/performance.md names, measured.

    python benchmarks/bf16_levers.py [--threads 2] [--steps 20] [--blocks all] [--width W] [--profile b4_2] [--json PATH]
    python benchmarks/bf16_levers.py --smoke        # width 8, 32 px, 2 steps: checks that it runs

The floor of block k (``block_step.py``'s: student block k, the filters f_n^k, the teachers' frozen blocks
k+1..B and heads, forward, backward and SGD step on one ready F^{k-1}) on the quick preset's shapes, in
variants that take turns at 2 timed steps each (images/s of the median step):

* ``fp32``, and ``bf16`` as kalib runs it (``torch.autocast`` over float32 weights, a float32 F^{k-1});
* ``bf16 + cache``: F^{k-1} stored in bfloat16 (``amalgamation_cache="bfloat16"``), so that nothing casts it;
* ``bf16 + teachers``: the frozen teachers cast to bfloat16 once, so that autocast does not cast their
  weights on every step;
* ``bf16 + fp32 FCs``: the filters' two small fully connected layers and the heads run outside autocast, in
  float32 (a (32 x 128) by (128 x 32) product is slower in bfloat16 on a CPU without matrix units);
* ``bf16 + all``: the three together.

None of these is what kalib does; each would change bf16's numbers. ``--profile BLOCK`` adds the
``torch.profiler`` table (operators by their own CPU time, over ``--steps`` steps) of that block's floor in
fp32 and in bf16: where the time goes when bf16 is not faster.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
import block_step  # noqa: E402  (the benchmark next to this one: its shapes, floor and timing)

from kalib.method.filters import TeacherFilter  # noqa: E402
from kalib.runs.presets import get_preset  # noqa: E402

VARIANTS = {  # name: (precision, cache in bf16, teachers in bf16, small FCs in fp32)
    "fp32": ("fp32", False, False, False),
    "bf16": ("bf16", False, False, False),
    "bf16 + cache": ("bf16", True, False, False),
    "bf16 + teachers": ("bf16", False, True, False),
    "bf16 + fp32 FCs": ("bf16", False, False, True),
    "bf16 + all": ("bf16", True, True, True),
}


class Float32Head(nn.Module):
    """A head run in float32 outside autocast (its ``fc`` keeps its name, so nothing else changes)."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.head(x.float())


_CHANNEL_WEIGHTS = TeacherFilter.channel_weights


def _float32_channel_weights(self: TeacherFilter, x: torch.Tensor) -> torch.Tensor:
    pooled = x.mean(dim=(2, 3), keepdim=True)   # the filter's own first step, so only (batch, C) is cast
    with torch.autocast(x.device.type, enabled=False):
        return _CHANNEL_WEIGHTS(self, pooled.float())


@contextmanager
def lever_state(bench: block_step.Bench, teachers: list, float32_fcs: bool):
    """``bench.teachers`` = ``teachers`` and, with ``float32_fcs``, the filters' channel weights in float32,
    for the enclosed steps only (the variants take turns, so each sets its own state)."""
    kept = bench.teachers
    bench.teachers = teachers
    if float32_fcs:
        TeacherFilter.channel_weights = _float32_channel_weights
    try:
        yield
    finally:
        bench.teachers = kept
        TeacherFilter.channel_weights = _CHANNEL_WEIGHTS


def teacher_copies(teachers, bf16: bool, float32_heads: bool) -> list:
    """The frozen teachers as one variant uses them: cast to bfloat16 once, and/or with float32 heads."""
    if not (bf16 or float32_heads):
        return list(teachers)
    out = []
    for t in teachers:
        t = copy.deepcopy(t)
        if bf16:
            t = t.to(torch.bfloat16)
        if float32_heads:
            t.head = Float32Head(t.head.float())
        out.append(t)
    return out


def floor_run(bench: block_step.Bench, k: int, variant: str):
    """n floor steps of block k in ``variant`` (:data:`VARIANTS`): ``block_step.py``'s floor, with the
    variant's cache dtype, teachers and filters."""
    precision, cache16, teachers16, fcs32 = VARIANTS[variant]
    teachers = teacher_copies(bench.teachers, teachers16, fcs32)
    module, run = block_step.floor_run(bench, k, precision, torch.bfloat16 if cache16 else torch.float32)

    def levered(n):
        with lever_state(bench, teachers, fcs32):
            run(n)
    return module, levered


def op_table(bench: block_step.Bench, k: int, variant: str, steps: int, rows: int = 12) -> dict:
    """The ``rows`` operators with the most own CPU time over ``steps`` floor steps of block k: name -> (ms
    per step, calls per step)."""
    _, run = floor_run(bench, k, variant)
    run(3)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run(steps)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return {e.key: (round(e.self_cpu_time_total / 1e3 / steps, 3), e.count / steps) for e in events}


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    block_step.add_shared_arguments(parser, steps=20)
    parser.add_argument("--profile", default=None, help="also profile this block's floor in fp32 and bf16")
    return block_step.parsed(parser, argv)


def main(argv=None) -> dict:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    preset = get_preset("quick")
    arch_kwargs, size = block_step.shapes(preset, args)
    bench = block_step.build(preset, arch_kwargs, size, preset.student.block.batch_size)
    names = bench.student.block_names if args.blocks == "all" else args.blocks.split(",")
    result = {"torch": torch.__version__, "threads": args.threads, "cpu": block_step.cpu_model(),
              "loadavg_start": [round(v, 2) for v in os.getloadavg()], "arch_kwargs": arch_kwargs,
              "steps": args.steps, "warmup": args.warmup, "blocks": {}}
    for name in names:
        k = bench.student.block_index(name)
        timed = block_step.measure({v: lambda r, v=v: floor_run(bench, k, v) for v in VARIANTS},
                                   preset.student.block.batch_size, args.steps, args.warmup)
        result["blocks"][name] = {v: timed[v]["images_per_s"] for v in VARIANTS}
    if args.profile:
        k = bench.student.block_index(args.profile)
        result["profile"] = {"block": args.profile,
                             **{p: op_table(bench, k, p, args.steps) for p in ("fp32", "bf16")}}
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


def report(r: dict) -> str:
    """The results as markdown: images/s per block and variant with the ratio to fp32; the op tables."""
    lines = [f"{r['cpu'].get('model', 'CPU')}; torch {r['torch']}, {r['threads']} threads, width "
             f"{r['arch_kwargs'].get('width')}, {r['steps']} timed steps after {r['warmup']} warm-up steps (load "
             f"average {r['loadavg_start'][0]} at the start, {r['loadavg_end'][0]} at the end)", "",
             "Floor of block k, images/s (x fp32):", "",
             "| block | " + " | ".join(VARIANTS) + " |", "|---" * (len(VARIANTS) + 1) + "|"]
    for name, row in r["blocks"].items():
        cells = [f"{row[v]:.0f}" if v == "fp32" else f"{row[v]:.0f} ({row[v] / row['fp32']:.2f}x)" for v in VARIANTS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    ratios = {v: statistics.median(row[v] / row["fp32"] for row in r["blocks"].values()) for v in VARIANTS}
    lines += ["", "median over the blocks: " + ", ".join(f"{v} {x:.2f}x" for v, x in ratios.items())]
    if "profile" in r:
        p = r["profile"]
        ops = sorted(set(p["fp32"]) | set(p["bf16"]), key=lambda o: -max(p["fp32"].get(o, (0,))[0], p["bf16"].get(o, (0,))[0]))
        lines += ["", f"Floor of {p['block']}, own CPU time per step (ms) and calls per step, top operators:", "",
                  "| operator | fp32 ms | fp32 calls | bf16 ms | bf16 calls |", "|---|---|---|---|---|"]
        for op in ops:
            a, b = p["fp32"].get(op, ("-", "-")), p["bf16"].get(op, ("-", "-"))
            lines.append(f"| {op} | {a[0]} | {a[1]} | {b[0]} | {b[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
