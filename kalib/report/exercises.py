"""Checkers for the lessons' exercises (``notebooks/01…06``, worked solutions in ``notebooks/solutions/``).

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
from .choosing import cell_pairs, words_by_pool
from .crossover import ARM_LABELS, interval, means
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


def _not_a_number(answer) -> str:
    """Why ``answer`` is not a usable number, in words: not finite (a log of 0 somewhere?), or not a number."""
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return f"the answer is one number (got {type(answer).__name__})."
    return (f"the answer is {value}, not a finite number: a log of 0 or a division by 0 somewhere? "
            "torch.log(torch.sigmoid(z)) is -inf where the sigmoid rounds to 0; F.logsigmoid(z) is exact there.")


def number(answer, truth: float, tolerance: float, hint: str, *, relative: bool = False) -> Check:
    """A numeric answer within ``tolerance`` of ``truth`` (relative to ``|truth|`` where ``relative``); a
    wrong one is told whether it is too high or too low, and ``hint``."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    value = _as_number(answer)
    if value is None:
        return wrong(_not_a_number(answer) + f" {hint}")
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

@torch.no_grad()
def logit_gradients(teacher, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """∂ℓ/∂z of Eq. 2's per-task loss ℓ(y, z) at every image and task: σ(z) − y (``(images, tasks)``)."""
    from ..train import to_input
    return torch.sigmoid(teacher.eval()(to_input(images))) - labels.float()


def check_logit_gradient(answer, teacher2, images: torch.Tensor, labels: torch.Tensor) -> Check:
    """Exercise 1.1: the mean |∂ℓ/∂z| of Eq. 2's ℓ over ``images`` and teacher 2's tasks (ground truth
    ``labels``, its columns), from the derived formula σ(z) − y."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    grad = logit_gradients(teacher2, images, labels)
    truth = float(grad.abs().mean())
    value = _as_number(answer)
    if value is not None and math.isclose(value, truth / grad.numel(), rel_tol=1e-3):
        return wrong("that is the gradient of the mean l_2, which divides by every image and task; the exercise "
                     "asks for ∂ℓ/∂z of one term ℓ, averaged in absolute value.")
    return number(answer, truth, 1e-4, "differentiate ℓ(y, z) = −[y log σ(z) + (1 − y) log(1 − σ(z))] with "
                  "σ'(z) = σ(z)(1 − σ(z)): no log is left in the result. Then average its absolute value over the "
                  "64 images and teacher 2's tasks.", relative=True)


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


def eq5_balance(student, filters, teachers, images: torch.Tensor, record: Mapping) -> list[float]:
    """λ_k that makes Eq. 5 (MSE, one λ for both teachers) equal the run's converged loss of Eq. 7 (mean over
    tasks) at every block k."""
    eq7 = [float(np.mean([record["converged_loss"][t][b] for t in record["tasks"]])) for b in record["blocks"]]
    return [loss / eq5 for loss, eq5 in zip(eq7, eq5_by_block(student, filters, teachers, images))]


def check_eq5_lambda_spread(answer, student, filters, teachers, images: torch.Tensor, record: Mapping) -> Check:
    """Exercise 2.3: by what factor the λ_k that makes Eq. 5 agree with Eq. 7 changes across the blocks
    (largest λ_k over smallest)."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    lam = eq5_balance(student, filters, teachers, images, record)
    value = _as_number(answer)
    if value is not None and value < 1:
        return wrong("give the largest λ_k divided by the smallest: a factor of at least 1.")
    return number(answer, max(lam) / min(lam), 0.02, "Eq. 5 is linear in λ, so λ_k = (Eq. 7 at block k) / (Eq. 5 "
                  "with λ = 1 at block k): both columns of section 2.6's table. Compute λ_k for every block, then "
                  "divide the largest by the smallest.", relative=True)


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


def soft_ce_excess(q: float, p: float) -> float:
    """ℓ of Eq. 7 for a teacher probability ``q`` and a student probability ``p``, minus its minimum over p
    (the entropy of q): the Kullback–Leibler divergence KL(q ‖ p) of two Bernoulli distributions, in nats."""
    return q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p))


def check_soft_ce_excess(answer, q: float = 0.9, p: float = 0.5) -> Check:
    """Exercise 3.4: how far above its floor the soft cross-entropy of Eq. 7 is when the teacher says ``q`` and
    the student ``p``, in nats."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    truth = soft_ce_excess(q, p)
    loss = -(q * math.log(p) + (1 - q) * math.log(1 - p))
    value = _as_number(answer)
    if value is not None and math.isclose(value, loss, rel_tol=1e-3):
        return wrong("that is the whole loss ℓ; the exercise asks how far it lies above its smallest possible value.")
    return number(answer, truth, 1e-3, f"set the derivative of ℓ(p) = −[q log p + (1 − q) log(1 − p)] to 0 to find "
                  f"where it is smallest and what it is there, then subtract that from ℓ at p = {p:g}.", relative=True)


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


def priced_branch_points(record: Mapping, price: float) -> dict[str, str]:
    """Per task, the block that minimises L_i^k − price · k (a reward of ``price`` nats for every block shared
    deeper; Eq. 9 is ``price = 0``), ties to the earlier block as Eq. 9's argmin."""
    blocks = record["blocks"]
    return {t: min(blocks, key=lambda b: (losses[b] - price * (blocks.index(b) + 1), blocks.index(b)))
            for t, losses in record["converged_loss"].items()}


def check_depth_price(answer, record: Mapping, price: float) -> Check:
    """Exercise 4.3: how many tasks leave at the last block when each deeper block is worth ``price`` nats."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    last = record["blocks"][-1]
    truth = sum(1 for b in priced_branch_points(record, price).values() if b == last)
    return exact(answer, truth, "for every task take the block k with the smallest L_i^k − price · k (k = 1 … B, "
                 "L from section 4.1) and count the tasks whose block is the last one.")


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


def top3_precision_ceiling(targets: torch.Tensor, k: int = 3) -> float:
    """The highest overall precision O-P (%) any scores can reach with top-``k`` predictions on ``targets``: a
    perfect ranking gets min(k, positives) of each image's k predictions right."""
    positives = (torch.as_tensor(targets) == 1).sum(dim=1)
    return float(100 * positives.clamp(max=k).sum() / (k * len(positives)))


def check_top3_ceiling(answer, targets: torch.Tensor) -> Check:
    """Exercise 5.3: the ceiling of O-P (%) at top-3 on the test split's labels of C."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    value = _as_number(answer)
    if value is not None and 0 < value <= 1:
        return wrong("give O-P in percent.")
    return number(answer, top3_precision_ceiling(targets), 0.05, "a perfect network ranks every true label of an "
                  "image first: of its 3 predictions, how many can be right for an image with 1, 2, 3 or 4 labels? "
                  "Sum that over the images and divide by all predictions.")


# ------------------------------------------------------------------------------------ notebook 06

NO_STUDY = ("figures/crossover.json holds no summary of version 2 of the crossover study: there is nothing to check "
            "against yet (`make study` writes it from the study's records).")


def crossover_pools(summary: Mapping, cell: str, a: str, b: str) -> dict[str, list[int]]:
    """The pools of ``cell`` ("pair-1/all") under each of the study's words for the pair a − b (ahead, behind,
    equivalent, inconclusive: Holm-adjusted, :func:`kalib.report.crossover.word`)."""
    return words_by_pool(cell_pairs(summary, cell, a, b))


def check_crossover_wins(answer, summary: Mapping | None, cell: str = "pair-1/all", a: str = "amalgamation-b4-2x",
                         b: str = "kd-2x") -> Check:
    """Exercise 6.1: the pools of ``cell`` at which the study words arm ``a`` *ahead* of arm ``b``."""
    if summary is None:
        return Check(None, NO_STUDY)
    entries = {e["pool"]: e for e in cell_pairs(summary, cell, a, b)}
    if not entries:
        return Check(None, f"The study has no pair {a} − {b} in cell {cell}: there is nothing to check against.")
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    try:
        value = sorted(int(p) for p in answer)
    except (TypeError, ValueError):
        return wrong("the answer is a list of pool sizes (an empty list if there are none).")
    words = {p: e["word"] for p, e in entries.items()}
    if value == sorted(p for p, w in words.items() if w == "ahead"):
        return right()
    given = [words.get(p) for p in value]
    if "behind" in given:
        return wrong("a pool the study words 'behind' is one where the arm is below the other, not ahead.")
    if "equivalent" in given:
        return wrong("'equivalent' means the adjusted interval lies inside the equivalence margin: the two arms are as "
                     "good as each other there, even where the mean difference is above 0.")
    unadjusted = [p for p in value if words.get(p) == "inconclusive" and entries[p]["ci95"][0] > 0]
    if unadjusted:
        return wrong("a pool whose unadjusted 95 % interval (ci95) lies above 0 can still be 'inconclusive': the study "
                     "words each pair by its Holm-adjusted interval (adjusted_ci95), which allows for the cell's other "
                     "pairs and is wider.")
    if "inconclusive" in given:
        return wrong("'inconclusive' means the adjusted interval contains 0 and reaches beyond the margin: the study "
                     "cannot tell the two arms apart there.")
    return wrong(f"read summary['paired']: the entries of {cell} (teachers/task_set) with a == '{a}', b == '{b}' and "
                 "kind == 'verdict', and keep the pools whose word is 'ahead'.")


def crossover_budget(summary: Mapping, cell: str, factor: float = 1.05) -> tuple[int, float, float]:
    """A device's budget at the largest pool of ``cell``: that pool, and ``factor`` times the KD student's mean
    parameters and inference MACs per image there."""
    pool = max(next(c["pools"] for c in summary["cells"] if f"{c['teachers']}/{c['task_set']}" == cell))
    kd = means(_cell_runs(summary, cell), pool)["kd"]
    return pool, factor * kd["params"], factor * kd["inference_macs"]


def _cell_runs(summary: Mapping, cell: str) -> list[dict]:
    return [r for r in summary["runs"] if f"{r['teachers']}/{r['task_set']}" == cell]


def budget_choice(summary: Mapping, cell: str, pool: int, max_params: float, max_macs: float) -> str | None:
    """The arm of ``cell`` with the highest mean test mAP at ``pool`` (a diverged run counted with its start's mAP,
    as the study counts it) among those whose mean parameters and inference MACs fit the budget; None where
    none fits."""
    table = means(_cell_runs(summary, cell), pool)
    fits = [a for a, v in table.items() if v["params"] <= max_params and v["inference_macs"] <= max_macs]
    return max(fits, key=lambda a: table[a]["test_map"]) if fits else None


def check_budget_choice(answer, summary: Mapping | None, cell: str = "pair-1/custom", factor: float = 1.05) -> Check:
    """Exercise 6.2: the arm to deploy in ``cell`` at its largest pool when the network may have at most ``factor``
    times the KD student's parameters and inference MACs per image (:func:`crossover_budget`); an arm's key, such
    as "kd", or its label, such as "KD, b4's MACs"."""
    if summary is None:
        return Check(None, NO_STUDY)
    if not any(f"{c['teachers']}/{c['task_set']}" == cell for c in summary["cells"]):
        return Check(None, f"The study has no cell {cell}: there is nothing to check against.")
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    names = {**{a: a for a in summary["arms"]}, **{ARM_LABELS.get(a, a): a for a in summary["arms"]}}
    if not isinstance(answer, str) or answer not in names:
        return wrong(f"give one arm, as its key ({', '.join(summary['arms'])}) or its label.")
    arm = names[answer]
    pool, max_params, max_macs = crossover_budget(summary, cell, factor)
    mine = means(_cell_runs(summary, cell), pool).get(arm)
    if mine is None:
        return wrong(f"the study has no run of that arm in {cell} at N = {pool:,}.")
    if mine["params"] > max_params or mine["inference_macs"] > max_macs:
        return wrong("that arm's network is larger than the budget: compare its mean parameters and inference MACs "
                     "with the budget first.")
    return exact(arm, budget_choice(summary, cell, pool, max_params, max_macs), "among the arms whose mean "
                 "parameters and inference MACs fit the budget at this pool, take the one with the highest mean test "
                 "mAP.", kind=str)


@torch.no_grad()
def merged_map(teachers, plan, images: torch.Tensor, targets: torch.Tensor) -> float:
    """Test mAP (%) of the merged start with no training: the mean of the teachers' weights (``teacher-mean``)
    with the teachers' own head rows for the tasks of ``plan`` (``targets``: those tasks' labels)."""
    from ..method.baselines import kd_student
    from ..method.student import init_student
    from ..metrics import mean_ap
    from ..train import predict
    merged = kd_student(init_student("teacher-mean", teachers), teachers, plan).eval()
    return float(mean_ap(predict(merged, images).numpy(), np.asarray(targets)))


def check_merged_map(answer, teachers, plan, images: torch.Tensor, targets: torch.Tensor) -> Check:
    """Exercise 6.3: the test mAP of the merged start, without training, for the task set of ``plan``."""
    if unanswered(answer):
        return Check(None, NOT_ANSWERED)
    return number(answer, merged_map(teachers, plan, images, targets), 0.05, "build the merged network as section "
                  "6.3 does, with the task plan of this C, score the test images and take mean_ap over C's label "
                  "columns of the test labels.")
