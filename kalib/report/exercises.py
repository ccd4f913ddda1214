"""Checkers for the lessons' exercises (``notebooks/01…05``, worked solutions in ``notebooks/solutions/``).

Each exercise cell ends with ``answer = None`` and a call ``check_…(answer, …)`` whose other arguments are
what the notebook already holds (its run's record, the data, the networks). A checker computes the right
answer from those, compares, and returns a :class:`Check` that shows itself as one line: right, wrong with a
hint, or not answered yet. The hint says where to look or which way the attempt is off, never the answer.
Nothing is computed while ``answer`` is still ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..metrics import topk_metrics
from .crossover import interval
from .notebook import chance_map

NOT_ANSWERED = "Not answered yet: set `answer` in the cell above and run this cell again."


@dataclass(frozen=True)
class Check:
    """A checker's verdict: ``ok`` True (right), False (wrong) or None (not answered), and its message.
    True in a boolean context only when right; shows its message in a notebook."""
    ok: bool | None
    message: str

    def __bool__(self) -> bool:
        return self.ok is True

    def __repr__(self) -> str:
        return self.message

    def _repr_markdown_(self) -> str:
        return self.message


def right(note: str = "") -> Check:
    return Check(True, "Right." + (f" {note}" if note else ""))


def wrong(hint: str) -> Check:
    return Check(False, f"Not yet. Hint: {hint}")


def unanswered(answer) -> bool:
    return answer is None or answer is Ellipsis


def _as_number(answer) -> float | None:
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def number(answer, truth: float, tolerance: float, hint: str, *, relative: bool = False) -> Check:
    """A numeric answer within ``tolerance`` of ``truth`` (relative to ``|truth|`` where ``relative``); a
    wrong one is told whether it is too high or too low, and ``hint``."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    value = _as_number(answer)
    if value is None:
        return wrong(f"the answer is one number (got {type(answer).__name__}). {hint}")
    allowed = tolerance * abs(truth) if relative else tolerance
    if abs(value - truth) <= allowed:
        return right()
    return wrong(f"your value is too {'high' if value > truth else 'low'}. {hint}")


def exact(answer, truth, hint: str, kind: type = int) -> Check:
    """An answer that must equal ``truth`` (after converting it to ``kind``)."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    try:
        value = kind(answer)
    except (TypeError, ValueError):
        return wrong(f"the answer is a {kind.__name__}. {hint}")
    return right() if value == truth else wrong(hint)


# ------------------------------------------------------------------------------------ notebook 01

def check_teacher2_loss(answer, teacher2, images: torch.Tensor, labels: torch.Tensor) -> Check:
    """Exercise 1.1: Eq. 2 for teacher 2 (``l_2``) on ``images`` with ground truth ``labels`` (teacher 2's
    columns), as a number."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    from ..method.teachers import teacher_loss
    from ..train import to_input
    with torch.no_grad():
        truth = float(teacher_loss(teacher2.eval()(to_input(images)), labels.float()))
    return number(answer, truth, 1e-4, "use teacher 2's own label columns (resolve_tasks on its meta's labels), "
                  "its logits on exactly these images, and average ℓ over images and over its T_2 tasks.",
                  relative=True)


def check_rarest_chance(answer, test_labels: torch.Tensor) -> Check:
    """Exercise 1.2: chance AP (%) of the label with the fewest positives on the test split."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    labels = np.asarray(test_labels)
    rarest = int(np.argmin((labels == 1).sum(0)))
    estimates = [chance_map(labels[:, [rarest]], seed=s) for s in range(5)]     # each a mean of 10 draws
    truth = float(np.mean(estimates))
    value = _as_number(answer)
    if value is not None and 0 < value < 1 and truth > 1:
        return wrong("AP is in percent here, as everywhere in the lessons.")
    return number(answer, truth, max(2.0, 4 * float(np.std(estimates))), "find the label with the fewest positives ((bench.test_labels == 1).sum(0)) "
                  "and give chance_map of that one column, bench.test_labels[:, [j]].")


def stage_share(arch: str, arch_kwargs: Mapping, num_classes: int = 10, stage: str | None = None) -> float:
    """The fraction of a network's parameters (blocks and head) in its last stage (blocks ``b<last>_*``)."""
    from ..models import build_backbone
    net = build_backbone(arch, num_classes=num_classes, **arch_kwargs)
    stage = stage or net.block_names[-1].split("_")[0]
    inside = sum(p.numel() for name, block in zip(net.block_names, net.blocks) if name.split("_")[0] == stage
                 for p in block.parameters())
    return inside / sum(p.numel() for p in net.parameters())


def check_last_stage_share(answer, arch: str, arch_kwargs: Mapping) -> Check:
    """Exercise 1.3: the fraction of a teacher's parameters (10 outputs) that sits in its last stage."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    value = _as_number(answer)
    if value is not None and value > 1:
        return wrong("give a fraction between 0 and 1, not a percentage.")
    return number(answer, stage_share(arch, arch_kwargs), 0.005,
                  "build the network with build_backbone(P.nets.arch, num_classes=10, **P.nets.arch_kwargs), sum "
                  "the parameters of the blocks whose name starts with the last stage, and divide by all its "
                  "parameters, head included.")


# ------------------------------------------------------------------------------------ notebook 02

def check_task_plan(answer, tasks: Sequence[str], labels: Sequence[Sequence[str]]) -> Check:
    """Exercise 2.1: ``local_per_teacher`` of the task plan of ``tasks``, worked out by hand."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    from ..method.filters import task_plan
    truth = task_plan(list(tasks), labels).local_per_teacher
    try:
        value = [[int(i) for i in row] for row in answer]
    except (TypeError, ValueError):
        return wrong("the answer is a list with one list of output indices per teacher.")
    if value == truth:
        return right()
    if len(value) != len(truth):
        return wrong("give one list per teacher, an empty one for a teacher with no task in C.")
    if [sorted(r) for r in value] == [sorted(r) for r in truth]:
        return wrong("the right indices, in the wrong order: each list follows the order of the tasks in C.")
    return wrong("an index is the task's position in that teacher's own label list (0-based), not in C.")


@torch.no_grad()
def half_gate_shift(student, teachers, images: torch.Tensor) -> float:
    """Mean |Δp| of teacher 1's sigmoid outputs at the middle block when its later blocks get 0.5·F_u^k
    instead of F_u^k (a plain sigmoid gate's start against kalib's identity start)."""
    from ..train import to_input
    k = student.num_blocks // 2
    features = student.eval().prefix(to_input(images), k)
    teacher = teachers[0].eval()
    identity = torch.sigmoid(teacher.suffix(features, k))
    halved = torch.sigmoid(teacher.suffix(0.5 * features, k))
    return float((halved - identity).abs().mean())


def check_half_gate(answer, student, teachers, images: torch.Tensor) -> Check:
    """Exercise 2.2: how far teacher 1's probabilities move when a gate starts at 0.5 instead of 1."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    return number(answer, half_gate_shift(student, teachers, images), 0.02,
                  "k = student.num_blocks // 2, F = student.prefix(to_input(images), k); compare "
                  "torch.sigmoid(teachers[0].suffix(F, k)) with the same for 0.5 * F, and average the absolute "
                  "difference over images and outputs.", relative=True)


@torch.no_grad()
def eq5_by_block(student, filters, teachers, images: torch.Tensor) -> list[float]:
    """Eq. 5 with λ_n = 1 and the mean squared error, at every block, for the trained student."""
    from ..train import to_input
    x = to_input(images)
    h_u, h_t, out = x, [x for _ in teachers], []
    for k in range(1, student.num_blocks + 1):
        h_u = student.blocks[k - 1](h_u)
        h_t = [t.blocks[k - 1](h) for t, h in zip(teachers, h_t)]
        out.append(float(sum(torch.mean((filters[k - 1][n](h_u) - h_t[n]) ** 2) for n in range(len(teachers)))))
    return out


def check_eq5_balance(answer, student, filters, teachers, images: torch.Tensor) -> Check:
    """Exercise 2.3: the λ (one for both teachers) that makes Eq. 5 equal 1 at the last block."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    return number(answer, 1 / eq5_by_block(student, filters, teachers, images)[-1], 0.01,
                  "Eq. 5 with λ_n = 1 at the last block is section 2.6's table; a weight λ scales it, so λ = 1 / "
                  "that value.", relative=True)


# ------------------------------------------------------------------------------------ notebook 03

def teacher_mean_loss(record: Mapping, teacher: int, block: str | None = None) -> float:
    """The mean converged loss L_i^k over the tasks of ``teacher`` (1-based) at ``block`` (default: last)."""
    block = block or record["blocks"][-1]
    tasks = [t for t, n in zip(record["tasks"], record["task_teacher"]) if n == teacher]
    return float(np.mean([record["converged_loss"][t][block] for t in tasks]))


def check_teacher2_share(answer, record: Mapping) -> Check:
    """Exercise 3.1: the mean converged loss of teacher 2's tasks at the last block."""
    return number(answer, teacher_mean_loss(record, 2), 5e-4,
                  "take the tasks whose task_teacher is 2 and average record['converged_loss'][task][last block].")


@torch.no_grad()
def floors(teachers, plan, images: torch.Tensor, temperature: float = 1.0) -> dict[str, float]:
    """The floor of Eq. 7 per task (the entropy of the teacher's sigmoid output at ``temperature``),
    averaged over ``images``."""
    from ..method.blockwise import soft_targets
    z = soft_targets(teachers, images, plan).double() / temperature
    q = torch.sigmoid(z)                          # log q and log(1 - q) from the logits: exact where q rounds to 1
    h = (-(q * torch.nn.functional.logsigmoid(z) + (1 - q) * torch.nn.functional.logsigmoid(-z))).mean(0)
    return dict(zip(plan.tasks, h.tolist()))


def check_highest_floor(answer, teachers, plan, images: torch.Tensor) -> Check:
    """Exercise 3.2: the task whose floor (the teacher's own entropy on the held-out slice) is highest."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    h = floors(teachers, plan, images)
    if not isinstance(answer, str) or answer not in h:
        return wrong(f"give a task name of C (one of {len(h)}), as a string.")
    return exact(answer, max(h, key=h.get), "compute H_i for every task on the held-out images, as in section "
                 "3.6, and take the largest.", kind=str)


def check_temperature_floor(answer, teachers, plan, images: torch.Tensor, temperature: float = 2.0) -> Check:
    """Exercise 3.3: the mean floor over tasks when the teachers' logits are divided by ``temperature``."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    return number(answer, float(np.mean(list(floors(teachers, plan, images, temperature).values()))), 0.002,
                  f"divide the teachers' logits by T = {temperature:g} before the sigmoid, then compute the entropy "
                  "floor per task and average it over the tasks.", relative=True)


# ------------------------------------------------------------------------------------ notebook 04

def forced_params(student, filters, teachers, plan, where: str) -> int:
    """Parameters of the TargetNet with every task branching at ``where`` (a stage or block name)."""
    from ..method.branch import forced_branch_points
    from ..method.targetnet import assemble, count_parameters
    return count_parameters(assemble(student, filters, teachers, plan,
                                     forced_branch_points(student, where, len(plan.tasks))))


def check_forced_params(answer, student, filters, teachers, plan, where: str = "b3") -> Check:
    """Exercise 4.1: the parameters of the TargetNet with every task at the end of stage ``where``."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    return exact(answer, forced_params(student, filters, teachers, plan, where),
                 "trunk = student blocks up to the branch block; one filter per teacher at that block; each "
                 "teacher's blocks after it; one head row (weights + bias) per task. Section 4.3 counts the same "
                 "parts.")


def all_last_tolerance(record: Mapping) -> float:
    """The smallest branch tolerance τ that sends every task to the last block: max_i (L_i^B − min_k L_i^k)."""
    last = record["blocks"][-1]
    return max(losses[last] - min(losses.values()) for losses in record["converged_loss"].values())


def check_all_last_tolerance(answer, record: Mapping) -> Check:
    """Exercise 4.2: the smallest τ for which the tolerance rule sends every task to the last block."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    truth, value = all_last_tolerance(record), _as_number(answer)
    if value is None:
        return wrong("the answer is one number, in nats.")
    if truth - 1e-6 <= value <= truth + 1e-4:
        return right()
    if value < truth:
        return wrong("with this τ some task still leaves before the last block: which task's last-block loss is "
                     "furthest above its own minimum?")
    return wrong("a smaller τ already sends every task to the last block: τ must cover the largest gap between a "
                 "task's last-block loss and its minimum, and no more.")


def check_eq9_matches(answer, record: Mapping) -> Check:
    """Exercise 4.3: on how many tasks of the C = A run Eq. 9's block is the AP-best block."""
    truth = sum(1 for t in record["tasks"] if record["chosen_block"][t] == record["ap_best_block"][t])
    return exact(answer, truth, "compare record['chosen_block'][task] with record['ap_best_block'][task] for every "
                 "task and count the equal ones.")


# ------------------------------------------------------------------------------------ notebook 05

def check_top1_of1(answer, scores: torch.Tensor, targets: torch.Tensor) -> Check:
    """Exercise 5.1: O-F1 (%) of the TargetNet when each image predicts its single highest-scoring label."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    truth = float(topk_metrics(np.asarray(scores), np.asarray(targets), k=1)["OF1"])
    value = _as_number(answer)
    if value is not None and 0 < value <= 1 < truth:
        return wrong("give O-F1 in percent.")
    return number(answer, truth, 0.05, "take the by-hand cell of Table 3 with [:, :1] instead of [:, :3]; O-F1 is "
                  "the harmonic mean of O-P and O-R, pooled over all predictions.")


def check_paired_interval(answer, diffs: Sequence[float]) -> Check:
    """Exercise 5.2: the 95 % t-interval [low, high] of the mean of paired per-seed differences."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    if len(diffs) < 2:
        return Check(None, "Fewer than two seeds: there is no interval to compute.")
    try:
        low, high = (float(v) for v in answer)
    except (TypeError, ValueError):
        return wrong("the answer is a pair [low, high].")
    _, (t_low, t_high) = interval(list(diffs))
    if abs(low - t_low) <= 0.01 and abs(high - t_high) <= 0.01:
        return right()
    mean = sum(diffs) / len(diffs)
    if abs((low + high) / 2 - mean) > 0.01:
        return wrong("the interval is centred on the mean of the differences.")
    return wrong("its half-width is t(0.975, n − 1) · s / √n, with s the sample standard deviation (n − 1 in its "
                 "denominator) and scipy.stats.t.ppf for the quantile.")


def crossover_wins(summary: Mapping, b: str = "kd") -> list[int]:
    """The pool sizes where amalgamation is ahead of arm ``b`` (95 % interval of the paired differences above 0)."""
    return sorted(e["pool"] for e in summary["paired"]
                  if e["a"] == "amalgamation" and e["b"] == b and e["ci95"][0] > 0)


def check_crossover_wins(answer, summary: Mapping | None) -> Check:
    """Exercise 5.3: the pool sizes at which amalgamation beats KD at the same training MACs."""
    if summary is None:
        return Check(None, "figures/crossover.json is missing: there is nothing to check against yet (`make study`).")
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    try:
        value = sorted(int(p) for p in answer)
    except (TypeError, ValueError):
        return wrong("the answer is a list of pool sizes (an empty list if there are none).")
    truth = crossover_wins(summary)
    if value == truth:
        return right()
    if set(value) > set(truth):
        return wrong("a pool where the mean difference is positive but the 95 % interval reaches 0 or below is a "
                     "tie, not a win.")
    return wrong("look at summary['paired'] entries with a == 'amalgamation' and b == 'kd', and keep the pools whose "
                 "ci95 lies entirely above 0.")
