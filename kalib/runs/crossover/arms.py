"""The crossover study's arms at one pool size N and seed (docs/design.md §9). Every arm sees exactly the N
images of :meth:`Context.pool_subset`:

* ``teachers``: the teachers as they are (no training, no pool image);
* ``merge``: the teachers merged in weight space, BatchNorm statistics re-estimated on the N images
  (:mod:`kalib.method.merge`);
* ``amalgamation-b4``, ``amalgamation``, ``amalgamation-eq9``: one block-wise training (Alg. 1) on the first
  90 % of the N images, the last 10 % held out for L_i^k; every task at the last block, the tolerance rule or
  Eq. 9; the TargetNet fine-tuned on all N; ``amalgamation-b4-2x``: the b4 net fine-tuned further to twice
  its training MACs;
* ``kd``, ``kd-tol``, ``kd-eq9``, ``kd-2x``: the student trained end to end on the N images against the
  teachers' soft targets at an amalgamation arm's training MACs (or twice b4's).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable

import numpy as np
import torch

from ...macs import SAMPLE, forward_macs_per_image
from ...method.baselines import TeacherEnsemble, kd_student, train_kd_passes
from ...method.blockwise import Amalgamation, amalgamate
from ...method.branch import branch_points, tolerant_branch_points
from ...method.finetune import finetune, finetune_passes
from ...method.merge import merged_student
from ...method.pool import block_subset, epochs_per_block
from ...method.student import init_student, make_filters
from ...method.targetnet import assemble
from ...train import to_input
from ..budget import alg1_costs, amalgamation_macs, kd_costs, kd_macs, kd_passes, network_step_macs
from ..checkpoints import EpochFile
from ..state import BlockStore
from .protocol import AMALGAMATION_ARMS, KD_ARMS, KD_STARTS
from .records import (Context, Known, best, chosen, finished, finished_or_run, record_key, records_of, scores,
                      size, tuned)


def teachers_runs(ctx: Context) -> list[dict]:
    """The teachers as they are, each label of C scored by its own teacher: one record per cell (pool 0)."""
    def train(partial: EpochFile, known: Known) -> dict:
        net = TeacherEnsemble(ctx.teachers, ctx.plan)
        return {**scores(ctx, net), **size(ctx, net), "train_macs": 0, "images_seen": 0}
    return [finished_or_run(ctx, "teachers", 0, 0, {}, train)]


def merge_network(ctx: Context, pool: int, seed: int, lam: float) -> torch.nn.Module:
    """The ``merge`` arm's network: the teachers merged with ``lam`` from θ₀, statistics from the N images."""
    images = ctx.bench.pool_images[ctx.pool_subset(pool, seed)]
    return merged_student(ctx.start, ctx.teachers, ctx.plan, lam, images)


def merge_runs(ctx: Context, tctx: Context, pool: int, seed: int, tune: bool) -> list[dict]:
    """The ``merge`` arm at every λ of the grid (``tune``) or at the one chosen on ``tctx``'s first seed. Its
    training MACs are the forward passes that re-estimate the BatchNorm statistics."""
    def run_one(lam: float) -> dict:
        def train(partial: EpochFile, known: Known) -> dict:
            net = merge_network(ctx, pool, seed, lam)
            per_image = forward_macs_per_image(net, to_input(ctx.bench.pool_images[:SAMPLE]))
            return {**scores(ctx, net), **size(ctx, net), "train_macs": int(round(pool * per_image)),
                    "images_seen": pool}
        return finished_or_run(ctx, "merge", pool, seed, {"lam": lam}, train)
    lams = ctx.study.grids.merge_lambdas if tune else [chosen(tctx, "merge", pool)["lam"]]
    return [run_one(lam) for lam in lams]


def amalgamation_runs(ctx: Context, tctx: Context, pool: int, seed: int, tune: bool, arms) -> list[dict]:
    """The three amalgamation arms and ``amalgamation-b4-2x`` at ``pool`` and ``seed`` (those of ``arms``):
    block-wise training once (cached per block in ``cache/blocks``, resumable), then each rule's TargetNet
    fine-tuned at every learning rate of the grid (``tune``) or at the one chosen on ``tctx``'s first seed.
    The blocks are trained (or loaded) only when a run has no record yet."""
    s, grids = ctx.preset.student, ctx.study.grids
    images, soft = ctx.bench.pool_images[ctx.pool_subset(pool, seed)], ctx.soft[ctx.pool_subset(pool, seed)]
    held = ctx.study.heldout(pool)
    ft_idx = block_subset(torch.arange(pool), 0, s.finetune_images, seed)
    blocks = functools.cache(lambda: trained_blocks(ctx, images, soft, pool, seed))
    nets: dict[float, torch.nn.Module] = {}

    def run_one(arm: str, lr: float) -> dict:
        def train(partial: EpochFile, known: Known) -> dict:
            target = branched(ctx, arm, blocks()[0], images, held, len(ft_idx), known)
            known.values.update({"images_seen": pool, "blocks_cpu_s": round(blocks()[1], 1)})
            known.start = copy.deepcopy(target)
            finetune(target, images[ft_idx], soft[ft_idx], dataclasses.replace(s.finetune, lr=lr), seed,
                     freeze_bn=s.finetune_freeze_bn, store=partial, precision=ctx.precision)
            if arm == "amalgamation-b4":
                nets[lr] = target
            return {**scores(ctx, target), **known.values}
        return finished_or_run(ctx, arm, pool, seed, {"lr": lr}, train)

    def b4_net(lr: float) -> torch.nn.Module:
        """The fine-tuned b4 net at ``lr``: kept from its run, or fine-tuned again (the same numbers)."""
        if lr not in nets:
            target = branched(ctx, "amalgamation-b4", blocks()[0], images, held, len(ft_idx), Known())
            finetune(target, images[ft_idx], soft[ft_idx], dataclasses.replace(s.finetune, lr=lr), seed,
                     freeze_bn=s.finetune_freeze_bn, precision=ctx.precision)
            nets[lr] = target
        return copy.deepcopy(nets[lr])

    records = []
    for arm in [a for a in AMALGAMATION_ARMS if a in arms]:
        records += (tuned(lambda lr, arm=arm: run_one(arm, lr), grids.finetune_lrs, grids.max_grid) if tune
                    else [run_one(arm, chosen(tctx, arm, pool)["lr"])])
    if "amalgamation-b4-2x" in arms:
        b4 = best(records_of(ctx, "amalgamation-b4", pool, seed)) if tune else \
            finished(ctx, "amalgamation-b4", pool, seed, chosen(tctx, "amalgamation-b4", pool))
        records += extension_runs(ctx, tctx, pool, seed, tune, b4, lambda: b4_net(b4["setting"]["lr"]), images, soft)
    return records


def trained_blocks(ctx: Context, images, soft, pool: int, seed: int) -> tuple[Amalgamation, float]:
    """Alg. 1 on the N images, the last :meth:`Study.heldout` of them held out for L_i^k; every block stored
    in ``cache/blocks/N<pool>-s<seed>`` as it finishes, a killed run resuming after the last. Returns the
    result and every block's training seconds, resumed ones included."""
    s = ctx.preset.student
    student = init_student(s.student_init, ctx.teachers, None, seed)
    torch.manual_seed(seed)                                   # the filters' start, as in every run of this seed
    filters = make_filters(student, ctx.teachers, s.filter_reduction)
    store = BlockStore(ctx.cache / "blocks" / f"N{pool}-s{seed}", record_key(ctx, "blocks", pool, seed, {}))
    store.prepare({"pool": pool, "seed": seed, "teachers": ctx.teacher_key, "tasks": list(ctx.plan.tasks)})
    names = student.block_names
    result = Amalgamation(student, filters, ctx.plan, np.full((len(names), len(ctx.plan.tasks)), np.nan))
    done = store.last_finished(len(names))
    if done:
        store.load(done, result)
    result = amalgamate(student, ctx.teachers, ctx.plan, images, s.block, images_per_block=s.block_images,
                        block_epochs=s.block_epochs, heldout=ctx.study.heldout(pool), seed=seed, soft=soft,
                        filters=filters, start_block=done + 1, previous=result,
                        cache_dtype=getattr(torch, s.amalgamation_cache), hooks=store.hooks(done, names),
                        precision=ctx.precision)
    return result, sum(result.seconds)


def branched(ctx: Context, arm: str, result: Amalgamation, images, held: int, finetune_images: int,
             known: Known) -> torch.nn.Module:
    """The TargetNet of ``arm``'s rule (Eq. 10) from the trained blocks; its size, training MACs and branch
    blocks go into ``known``."""
    s, student, names = ctx.preset.student, result.student, result.student.block_names
    points = {"amalgamation-b4": lambda: [len(names)] * len(ctx.plan.tasks),
              "amalgamation": lambda: tolerant_branch_points(result.losses, s.branch_tolerance),
              "amalgamation-eq9": lambda: branch_points(result.losses)}[arm]()
    target = assemble(student, result.filters, ctx.teachers, ctx.plan, points)
    trained = len(images) - held
    costs = ctx.counted("alg1", lambda: alg1_costs(student, result.filters, ctx.teachers, ctx.plan, images[:SAMPLE]))
    macs = amalgamation_macs(
        student, result.filters, ctx.teachers, ctx.plan, images[:SAMPLE], costs=costs,
        block_images=min(s.block_images or trained, trained),
        block_epochs=(epochs_per_block(s.block_epochs, len(names)) if s.block_epochs else [s.block.epochs] * len(names)),
        block_batch=s.block.batch_size, train_images=trained, heldout=held, target=target,
        finetune_images=finetune_images, finetune_epochs=s.finetune.epochs, finetune_batch=s.finetune.batch_size,
        heldout_losses=arm != "amalgamation-b4")
    known.values.update({**size(ctx, target), "train_macs": macs["total"], "macs": macs,
                         "branch_block": {t: names[k - 1] for t, k in zip(ctx.plan.tasks, points)}})
    return target


def extension_runs(ctx: Context, tctx: Context, pool: int, seed: int, tune: bool, b4: dict,
                   b4_net: Callable[[], torch.nn.Module], images, soft) -> list[dict]:
    """``amalgamation-b4-2x``: the chosen ``amalgamation-b4`` net fine-tuned further (Eq. 7, BatchNorm statistics
    kept, fine-tuning's batch) until its training MACs are ``kd-2x``'s, twice b4's: at every learning rate of the
    extension grid (``tune``) or at the chosen one."""
    s, grids = ctx.preset.student, ctx.study.grids
    batch = s.finetune.batch_size

    def run_one(lr: float) -> dict:
        def train(partial: EpochFile, known: Known) -> dict:
            net = b4_net()
            step = network_step_macs(net, to_input(images[:SAMPLE]), len(ctx.plan.tasks))
            passes = max(round(b4["train_macs"] / (step * batch)), 1) * batch
            known.values.update({**size(ctx, net), "images_seen": pool, "image_passes": passes,
                                 "train_macs": b4["train_macs"] + int(passes * step),
                                 "budget_macs": 2 * b4["train_macs"], "budget_of": "amalgamation-b4",
                                 "from": b4["setting"]})
            known.start = copy.deepcopy(net)
            finetune_passes(net, images, soft, dataclasses.replace(s.finetune, lr=lr), passes, seed,
                            freeze_bn=s.finetune_freeze_bn, store=partial, precision=ctx.precision)
            return {**scores(ctx, net), **known.values}
        return finished_or_run(ctx, "amalgamation-b4-2x", pool, seed, {"lr": lr}, train)
    if tune:
        return tuned(run_one, grids.extension_lrs, grids.max_grid)
    return [run_one(chosen(tctx, "amalgamation-b4-2x", pool)["lr"])]


def kd_network(ctx: Context, tctx: Context, pool: int, seed: int, start: str) -> torch.nn.Module:
    """KD's student at one of its starts: the teacher mean with the teachers' head rows, the ``merge`` arm's
    chosen network, or the teacher mean with a random head (drawn from the seed)."""
    torch.manual_seed(seed)
    if start == "merge":
        return merge_network(ctx, pool, seed, chosen(tctx, "merge", pool)["lam"]).requires_grad_(True)
    base = init_student(ctx.preset.student.student_init, ctx.teachers, None, seed)
    return kd_student(base, ctx.teachers, ctx.plan, "random" if start == "random-head" else "teachers")


def arm_macs(ctx: Context, arm: str, pool: int, seed: int) -> int | None:
    """An amalgamation arm's training MACs at ``pool`` and ``seed`` (the same at every learning rate), or None."""
    found = records_of(ctx, arm, pool, seed)
    return found[0]["train_macs"] if found else None


def kd_runs(ctx: Context, tctx: Context, pool: int, seed: int, tune: bool, arms) -> list[dict]:
    """The KD arms of ``arms`` at ``pool`` and ``seed``. Tuning (``tune``): ``kd``'s learning rate from the
    teacher mean, then its start at that rate; ``kd-2x``'s learning rate from ``kd``'s start. ``kd-tol`` and
    ``kd-eq9`` take ``kd``'s choice and run only where their arm's MACs differ from b4's by more than the
    study's tolerance."""
    grids = ctx.study.grids
    images, soft = ctx.bench.pool_images[ctx.pool_subset(pool, seed)], ctx.soft[ctx.pool_subset(pool, seed)]
    kd = ctx.preset.baselines.kd
    b4 = arm_macs(ctx, "amalgamation-b4", pool, seed)

    def run_one(arm: str, lr: float, start: str) -> dict:
        source, factor = KD_ARMS[arm]
        budget = factor * arm_macs(ctx, source, pool, seed)

        def train(partial: EpochFile, known: Known) -> dict:
            net = kd_network(ctx, tctx, pool, seed, start)
            costs = ctx.counted(("kd", start), lambda: kd_costs(net, ctx.teachers, ctx.plan, images[:SAMPLE]))
            passes = kd_passes(int(budget), costs, train_images=pool, batch_size=kd.batch_size)
            macs = kd_macs(costs, train_images=pool, image_passes=passes)
            known.values.update({**size(ctx, net), "train_macs": macs["total"], "macs": macs, "images_seen": pool,
                                 "image_passes": passes, "budget_macs": int(budget), "budget_of": source})
            known.start = copy.deepcopy(net)
            train_kd_passes(net, images, soft, dataclasses.replace(kd, lr=lr), passes, seed, store=partial,
                            precision=ctx.precision)
            return {**scores(ctx, net.eval()), **known.values}
        return finished_or_run(ctx, arm, pool, seed, {"lr": lr, "start": start}, train)

    records = []
    if "kd" in arms:
        if tune:
            grid = tuned(lambda lr: run_one("kd", lr, KD_STARTS[0]), grids.kd_lrs, grids.max_grid)
            lr = best(grid)["setting"]["lr"]
            records += grid + [run_one("kd", lr, start) for start in KD_STARTS[1:]]
        else:
            records.append(run_one("kd", **chosen(tctx, "kd", pool)))
    choice = chosen(tctx, "kd", pool) if any(a in arms for a in ("kd-2x", "kd-tol", "kd-eq9")) else None
    if "kd-2x" in arms:
        records += (tuned(lambda lr: run_one("kd-2x", lr, choice["start"]), grids.kd_lrs, grids.max_grid) if tune
                    else [run_one("kd-2x", **chosen(tctx, "kd-2x", pool))])
    for arm in ("kd-tol", "kd-eq9"):
        own = arm_macs(ctx, KD_ARMS[arm][0], pool, seed)
        if arm in arms and own is not None and abs(own / b4 - 1) > ctx.study.budget_tolerance:
            records.append(run_one(arm, **choice))
    return records
