"""Checkers for the lessons' *build it* cells: the learner writes the teacher-level filter (Eq. 4, notebook 02),
the entangled forward pass and the filtered loss (Eq. 6–8) and one block's training loop (Alg. 1 lines 5–9,
notebook 03), and each checker compares that version with kalib.method's on the same inputs: the outputs, the
gradients, and the change one SGD step makes to the weights (for the loop: the weights after its steps).

A skeleton cell raises ``NotImplementedError`` where the learner's lines go; its checker then says "not written
yet" (a :class:`~kalib.report.exercises.Check` with ``ok`` None) without computing anything else. Worked versions
are in ``notebooks/solutions/``; the tests run them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..method.blockwise import entangled_predictions, filtered_loss, train_block
from ..method.filters import TeacherFilter
from ..method.pool import prefix_features
from .exercises import Check, right, wrong

NOT_WRITTEN = ("Not written yet: replace the `raise NotImplementedError` of the cell above by your lines and run "
               "both cells again.")
RTOL, ATOL = 1e-4, 1e-5          # float32, another order of the same sums


def _largest(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.detach().float()).abs().max()) if a.numel() else 0.0


def _params(parts: Sequence[nn.Module]) -> list[nn.Parameter]:
    return [p for part in parts for p in part.parameters()]


def _trainable(parts: Sequence[nn.Module]) -> list[nn.Module]:
    for part in parts:
        part.requires_grad_(True).train()
    return list(parts)


def compare_step(mine: Callable[[], tuple[torch.Tensor, torch.Tensor]], parts_mine: Sequence[nn.Module],
                 kalib: Callable[[], tuple[torch.Tensor, torch.Tensor]], parts_kalib: Sequence[nn.Module],
                 what: str, output_hint: str, lr: float = 0.5) -> Check:
    """Run ``mine()`` and ``kalib()`` (each returns an output and a scalar loss computed from it, through its
    own ``parts``, whose parameters start equal), then compare the outputs, the gradients of every parameter
    and the parameters' change after one SGD step (learning rate ``lr``)."""
    try:
        out_m, loss_m = mine()
    except NotImplementedError:
        return Check(None, NOT_WRITTEN)
    out_k, loss_k = kalib()
    if not isinstance(out_m, torch.Tensor) or out_m.shape != out_k.shape:
        shape = tuple(out_m.shape) if isinstance(out_m, torch.Tensor) else type(out_m).__name__
        return wrong(f"your output is {shape}, kalib's {tuple(out_k.shape)}. {output_hint}")
    if not torch.allclose(out_m.detach(), out_k.detach(), rtol=RTOL, atol=ATOL):
        return wrong(f"the outputs differ (by up to {_largest(out_m, out_k):.1e}). {output_hint}")
    if not loss_m.requires_grad:
        return wrong("the output carries no gradient: compute it without torch.no_grad(), .detach() or .data, so "
                     "that the loss can reach the weights.")
    loss_m.backward()
    loss_k.backward()
    params_m, params_k = _params(parts_mine), _params(parts_kalib)
    for p, q in zip(params_m, params_k):
        if (p.grad is None) != (q.grad is None) or (q.grad is not None and
                                                    not torch.allclose(p.grad, q.grad, rtol=RTOL, atol=ATOL)):
            return wrong("the outputs agree but a gradient does not: is a weight used twice, or detached on the way?")
    before = [p.detach().clone() for p in params_m]
    for params in (params_m, params_k):
        torch.optim.SGD(params, lr=lr).step()
    moved = max(_largest(p - b, q - b) for p, q, b in zip(params_m, params_k, before))
    if moved > ATOL + RTOL * max(float(b.abs().max()) for b in before):
        return wrong("one SGD step moves your weights differently from kalib's: are all the trainable weights in "
                     "the optimiser, and only they?")
    largest = max(_largest(out_m, out_k), moved)
    return right(f"The outputs, the gradients of all {len(params_m)} weight tensors and one SGD step agree with "
                 f"{what} (largest difference {largest:.1e}).")


# ------------------------------------------------------------------------------------ notebook 02

def check_filter(make: Callable[[int, int], nn.Module], channels: int = 16, reduction: int = 4,
                 seed: int = 0) -> Check:
    """Build it 2.1: the learner's filter class ``make(channels, reduction)`` against
    :class:`kalib.method.filters.TeacherFilter` (Eq. 4): a fresh one must pass its input through unchanged;
    then, with weights away from the identity (TeacherFilter's, copied into the learner's two linear layers),
    outputs, gradients (of the input features and of every weight) and one SGD step must agree."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, channels, 6, 6, generator=gen)
    mine = make(channels, reduction)
    try:
        fresh = mine(x)
    except NotImplementedError:
        return Check(None, NOT_WRITTEN)
    if not isinstance(fresh, torch.Tensor) or fresh.shape != x.shape or not torch.allclose(fresh, x, atol=ATOL):
        return wrong("a fresh filter must be the identity, f(F) = F: start W2 and b2 at zero (nn.init.zeros_), so "
                     "that w = 2σ(0) = 1 for every input.")
    kalib = TeacherFilter(channels, reduction=reduction)
    with torch.no_grad():
        for p in kalib.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen))
    shapes_m, shapes_k = [p.shape for p in mine.parameters()], [p.shape for p in kalib.parameters()]
    if shapes_m != shapes_k:
        return wrong("keep the skeleton's two layers, fc1 (c → c/r) and fc2 (c/r → c), and no other weights.")
    with torch.no_grad():
        for p, q in zip(mine.parameters(), kalib.parameters()):
            p.copy_(q)
    x_m, x_k = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    probe = torch.randn(x.shape, generator=gen)

    def run(net, features):
        out = net(features)
        return out, (out * probe).sum()

    check = compare_step(lambda: run(mine, x_m), [mine], lambda: run(kalib, x_k), [kalib],
                         "kalib.method.filters.TeacherFilter",
                         "s is the mean of F over its last two axes, w = 2·sigmoid(fc2(relu(fc1(s)))), and each "
                         "channel of F is multiplied by its w (w[:, :, None, None]).")
    if check.ok and not torch.allclose(x_m.grad, x_k.grad, rtol=RTOL, atol=ATOL):
        return wrong("the weights' gradients agree but the input's does not: w must be computed from F itself.")
    return check


# ------------------------------------------------------------------------------------ notebook 03

def _block_parts(block: nn.Module, filters_k: Sequence[nn.Module]) -> tuple[list[nn.Module], list[nn.Module]]:
    """Two trainable copies of (block k, the filters f_n^k), one for the learner's version, one for kalib's."""
    parts = [block, *filters_k]
    return _trainable(copy.deepcopy(parts)), _trainable(copy.deepcopy(parts))


def check_entangled(my_predictions: Callable, block: nn.Module, filters_k: Sequence[nn.Module], teachers, plan,
                    features: torch.Tensor, k: int, seed: int = 0) -> Check:
    """Build it 3.2: the learner's Eq. 6, ``my_predictions(F_u^k, k, filters_k, teachers, plan)`` (``(batch,
    |C|)``, C's order), against :func:`kalib.method.blockwise.entangled_predictions`, on F_u^k of block k
    (``features``: F_u^{k-1}), with gradients reaching student block k and the filters."""
    mine, kalib = _block_parts(block, filters_k)
    probe = torch.randn(len(features), len(plan.tasks), generator=torch.Generator().manual_seed(seed))

    def run(predict, parts):
        out = predict(parts[0](features), k, parts[1:], teachers, plan)
        return out, (out * probe).sum()

    return compare_step(lambda: run(my_predictions, mine), mine, lambda: run(entangled_predictions, kalib), kalib,
                        "kalib.method.blockwise.entangled_predictions",
                        "for every teacher n with tasks in C: its filter f_n^k, then teacher n's blocks k+1..B and "
                        "head (teachers[n].suffix(h, k)), then g: its columns plan.local_per_teacher[n], placed at "
                        "the positions plan.per_teacher[n] of C.")


def check_filtered_loss(my_loss: Callable, my_predictions: Callable, block: nn.Module, filters_k: Sequence[nn.Module],
                        teachers, plan, features: torch.Tensor, soft: torch.Tensor, k: int) -> Check:
    """Build it 3.3: the learner's Eq. 7–8, ``my_loss(pred, target_logits)`` (a scalar), against
    :func:`kalib.method.blockwise.filtered_loss`: first on kalib's own predictions (the loss alone), then the
    whole step with the learner's Eq. 6 and Eq. 7 against kalib's."""
    with torch.no_grad():
        pred = entangled_predictions(block(features), k, filters_k, teachers, plan)
    pred_m, pred_k = pred.clone().requires_grad_(True), pred.clone().requires_grad_(True)
    target_hint = ("Eq. 7: ℓ against the soft target σ(teacher logit), averaged over the batch for every task, "
                   "summed over the tasks and divided by |C| (Eq. 8).")
    try:
        alone = my_loss(pred_m, soft)
    except NotImplementedError:
        return Check(None, NOT_WRITTEN)
    if not isinstance(alone, torch.Tensor) or alone.numel() != 1:
        return wrong(f"the loss is one number (a tensor with one element). {target_hint}")
    theirs = filtered_loss(pred_k, soft)[0]
    if not torch.allclose(alone.detach(), theirs.detach(), rtol=RTOL, atol=ATOL):
        return wrong(f"on kalib's own predictions your loss is {alone.item():.6f}, kalib's {theirs.item():.6f}. "
                     f"{target_hint}")
    mine, kalib = _block_parts(block, filters_k)

    def run(predict, loss, parts):
        out = predict(parts[0](features), k, parts[1:], teachers, plan)
        value = loss(out, soft)
        return value.reshape(1), value.reshape(())

    return compare_step(lambda: run(my_predictions, my_loss, mine), mine,
                        lambda: run(entangled_predictions, lambda p, t: filtered_loss(p, t)[0], kalib), kalib,
                        "kalib's Eq. 6 and Eq. 7 (entangled_predictions, filtered_loss)", target_hint)


def check_train_loop(my_train_block: Callable, student, filters_k: Sequence[nn.Module], teachers, plan,
                     images: torch.Tensor, soft: torch.Tensor, k: int, schedule) -> Check:
    """Build it 3.4: the learner's loop, ``my_train_block(block, filters_k, feats, soft, k, schedule, seed)``
    (``feats``: F_u^{k-1} of ``images``), against :func:`kalib.method.blockwise.train_block` on copies of the
    same student and filters: the weights and BatchNorm statistics of block k and its filters after every step
    of ``schedule``."""
    ours, theirs = copy.deepcopy(student), copy.deepcopy(student)
    filters_m, filters_k_copy = copy.deepcopy(list(filters_k)), copy.deepcopy(list(filters_k))
    feats = prefix_features(ours, images, k - 1, torch.float32)
    start = {n: v.clone() for n, v in ours.blocks[k - 1].state_dict().items()}
    try:
        my_train_block(ours.blocks[k - 1].requires_grad_(True), [f.requires_grad_(True) for f in filters_m], feats,
                       soft, k, schedule, 0)
    except NotImplementedError:
        return Check(None, NOT_WRITTEN)
    train_block(theirs, filters_k_copy, teachers, plan, images, soft, k, schedule, seed=0)
    mine_state = {**ours.blocks[k - 1].state_dict(), **_filters_state(filters_m)}
    kalib_state = {**theirs.blocks[k - 1].state_dict(), **_filters_state(filters_k_copy)}
    if all(torch.equal(mine_state[n], v) for n, v in start.items()):
        return Check(None, "Your loop changed no weight of block k yet: write the step's lines and run both cells again.")
    steps = schedule.epochs * (len(images) // schedule.batch_size)
    worst = max(mine_state, key=lambda n: _largest(mine_state[n], kalib_state[n]))
    scale = max(float(v.abs().max()) for v in kalib_state.values() if v.is_floating_point())
    if not all(torch.allclose(mine_state[n].float(), v.float(), rtol=RTOL, atol=ATOL * max(scale, 1.0))
               for n, v in kalib_state.items()):
        return wrong(f"after the loop's {steps} steps your weights differ from kalib's train_block (most in {worst}, by "
                     f"{_largest(mine_state[worst], kalib_state[worst]):.1e}): one step per batch, in the batches' "
                     "order, with the optimiser and the poly schedule of the skeleton, and block k in train mode.")
    return right(f"After {steps} steps block k and its filters hold the same weights and BatchNorm statistics as "
                 f"kalib.method.blockwise.train_block's (largest difference "
                 f"{max(_largest(mine_state[n], kalib_state[n]) for n in kalib_state):.1e}).")


def _filters_state(filters_k: Sequence[nn.Module]) -> dict[str, torch.Tensor]:
    return {f"filter{n}.{name}": v for n, f in enumerate(filters_k) for name, v in f.state_dict().items()}
