"""What the lesson notebooks (``notebooks/01…05``; 06's in :mod:`kalib.report.choosing`) say about a run's numbers, written from those numbers.

A lesson's markdown cells explain the method and may quote the paper; they never restate what kalib
measured. Every sentence that interprets a measured result (which row wins, whether a claim of the paper
holds here, how large a gap is, where a curve rises) is made by one of these functions from the run's own
record and printed by a code cell (:func:`say`), so it reads right on ``lesson``, on ``quick`` and on any
seed. Each function returns markdown text and reads only finished results (records, tables, the committed
``figures/*.json``); none trains anything.

Words for sizes of differences: two mAPs that round to the same tenth are *level*; a difference is *inside
the seed spread* when the 95 % t-interval of its per-seed values contains 0 (:func:`kalib.report.crossover.interval`).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .crossover import interval
from .results import EQ9_ROW, table_map, target_row

REPO = Path(__file__).resolve().parents[2]
# the committed seed study (`kalib reproduce --preset quick --seeds 0,1,2`)
COMMITTED_SEEDS = REPO / "figures" / "seeds.json"
GARMENTS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
# row names of seed studies made before every TargetNet was named by its rule
LEGACY_ROWS = {"Target": EQ9_ROW, "Target-3": "Target-3 (Eq. 9)"}


def say(*parts: str) -> None:
    """Display the non-empty ``parts`` as one markdown paragraph (plain text outside a notebook)."""
    text = " ".join(p for p in parts if p)
    try:
        from IPython import get_ipython
        from IPython.display import Markdown, display
    except ImportError:                       # pragma: no cover - IPython comes with the notebooks' extras
        print(text)
        return
    if get_ipython() is None:
        print(text)
    else:
        display(Markdown(text))


def num(value: float, digits: int = 1) -> str:
    """``value`` with ``digits`` decimals, or ``n/a`` for NaN (a label without positives has no AP)."""
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def gap_words(a: float, b_name: str, b: float) -> str:
    """``a`` against ``b_name``'s value ``b``, from the values as shown (one decimal): "level with B (b)" or
    "d above/below B (b)"."""
    if any(v is None or math.isnan(v) for v in (a, b)):
        return f"not comparable with {b_name} ({num(b)})"
    gap = round(round(a, 1) - round(b, 1), 1)
    if gap == 0:
        return f"level with {b_name} ({num(b)})"
    return f"{abs(gap):.1f} {'above' if gap > 0 else 'below'} {b_name} ({num(b)})"


def compare(a_name: str, a: float, b_name: str, b: float, unit: str = "mAP") -> str:
    """"A scores a mAP, d above/below B (b)" (or level with it)."""
    return f"{a_name} scores {num(a)} {unit}, {gap_words(a, b_name, b)}"


def _moves(values: Sequence[float], digits: int) -> tuple[int, int, int]:
    """How many consecutive steps of ``values``, read as shown (rounded to ``digits`` decimals), go up, go down
    and stay level."""
    shown = [round(float(v), digits) for v in values]
    ups = sum(1 for x, y in itertools.pairwise(shown) if y > x)
    downs = sum(1 for x, y in itertools.pairwise(shown) if y < x)
    return ups, downs, max(len(shown) - 1, 0) - ups - downs


def _steps_words(values: Sequence[float], digits: int, subject: str = "it", up: str = "goes up",
                 down: str = "goes down") -> str:
    """"of the n steps from one block to the next, it goes up on u, goes down on d and is level (to k decimals)
    on l": every count read from the values as shown (rounded to ``digits``), a zero count of the last two left out."""
    ups, downs, level = _moves(values, digits)
    parts = [f"{up} on {ups}"] + ([f"{down} on {downs}"] if downs else []) + \
        ([f"is level (to {digits} decimals) on {level}"] if level else [])
    said = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return f"of the {ups + downs + level} steps from one block to the next, {subject} {said}"


def going_further(preset, candidates: Sequence[str], apply, prompt: str) -> str:
    """A "Going further" prompt that changes the preset the page ran with: the first of ``candidates`` (``--set``
    strings, ``FIELD=VALUE``) for which ``apply(preset, [candidate])`` (:func:`kalib.runs.config.override`) is
    another preset, put into ``prompt`` at ``{change}``; "" where every candidate is the preset's own setting."""
    for change in candidates:
        if apply(preset, [change]) != preset:
            return prompt.format(change=change)
    return ""


# ------------------------------------------------------------------------------------ notebook 01

def hardest_labels(teacher_ap: Mapping[str, Mapping[str, float]], n: int = 3) -> str:
    """Each teacher's ``n`` lowest-AP labels and its best one (``teacher_ap``: teacher name -> {label: AP,
    ..., "mAP"}), and how many of those hardest labels are Fashion-MNIST garments."""
    parts, hardest = [], []
    for teacher, ap in teacher_ap.items():
        labels = {k: v for k, v in ap.items() if k != "mAP" and not math.isnan(v)}
        if not labels:
            continue
        ranked = sorted(labels, key=labels.get)
        hardest += ranked[:n]
        parts.append(f"{teacher}: " + ", ".join(f"{t} {labels[t]:.1f}" for t in ranked[:n]) +
                     f" (its best: {ranked[-1]} {labels[ranked[-1]]:.1f})")
    if not parts:
        return "No label has positives on the test split: no AP to rank."
    text = f"The hardest labels of this run, test AP: {'; '.join(parts)}."
    if any(t in GARMENTS for ap in teacher_ap.values() for t in ap):      # the embedded benchmark's labels
        garments = sum(1 for t in hardest if t in GARMENTS)
        text += f" {garments} of these {len(hardest)} hardest labels are garments."
    return text


def alignment_sentence(alignment: Mapping[str, Mapping[str, float]]) -> str:
    """Where the two teachers' channels agree most and least (``alignment``: kalib.report.alignment's table),
    whether their agreement falls with depth, and which teacher moved furthest from the shared start."""
    pair = next((k for k in alignment if "vs teacher" in k), None)
    if pair is None:
        return "Only one teacher: there is no pair to align."
    corr = alignment[pair]
    blocks = list(corr)
    low, high = min(blocks, key=corr.get), max(blocks, key=corr.get)
    steps = _steps_words([corr[b] for b in blocks], 2, "their agreement", up="rises", down="falls")
    text = (f"The teachers' channels correlate {corr[blocks[0]]:.2f} after {blocks[0]} and {corr[blocks[-1]]:.2f} "
            f"after {blocks[-1]}; most after {high} ({corr[high]:.2f}), least after {low} ({corr[low]:.2f}). "
            f"{steps[0].upper()}{steps[1:]}.")
    starts = {k.split(" vs ")[0]: v for k, v in alignment.items() if k.endswith("vs start")}
    if starts:
        far = min(starts, key=lambda t: starts[t][blocks[-1]])
        text += (f" At the last block {far} is furthest from the shared start (correlation "
                 f"{starts[far][blocks[-1]]:.2f}).")
    return text


# ------------------------------------------------------------------------------------ notebook 02

def shown_map(ap: Mapping[str, float]) -> float:
    """A record's mAP as the tables show it (:func:`kalib.report.results.table_map`), or its ``mAP`` where it
    holds no label's AP."""
    return table_map(ap) if len(ap) > 1 else ap["mAP"]


def target_vs_teachers(record: Mapping) -> str:
    """A run's fine-tuned TargetNet(s), each named by its branch-out rule, against the teachers (mAPs as the
    tables show them)."""
    teachers = shown_map(record["teacher_ap"])
    name = target_row("Target", record)
    text = compare(f"This run's TargetNet, {name},", shown_map(record["target_ap"]), "its teachers", teachers)
    if "eq9" in record:
        return (text + "; " + compare(f"the TargetNet of the paper's rule, {EQ9_ROW},", shown_map(record["eq9"]["target_ap"]),
                                      "the teachers", teachers) + ". Neither read a label.")
    return text + ". It read no label."


def filter_sentence(weights: Mapping[str, np.ndarray]) -> str:
    """How far the trained gates moved from 1 and how far the teachers' gates differ, per block
    (``weights``: block -> (teachers, channels) mean channel weights)."""
    stats = {b: (float(np.abs(w - 1).mean()), float(np.abs(w[0] - w[-1]).mean())) for b, w in weights.items()}
    parts = [f"after {b} the gates lie on average {d:.3f} from 1 and the two teachers' gates {g:.3f} apart"
             for b, (d, g) in stats.items()]
    most = max(stats, key=lambda b: stats[b][0])
    return "In this run, " + "; ".join(parts) + f". The filters moved furthest from the identity after {most}."


def spread_sentence(eq5: Sequence[float], eq7: Sequence[float]) -> str:
    """How much Eq. 5 and Eq. 7 vary across blocks (largest over smallest value)."""
    def factor(values):
        values = [v for v in values if v > 0]
        return max(values) / min(values) if values else float("nan")
    f5, f7 = factor(eq5), factor(eq7)
    wider = "Eq. 5" if f5 > f7 else "Eq. 7"
    return (f"Across the blocks, Eq. 5 varies by a factor {f5:.1f} and Eq. 7 by a factor {f7:.2f}: "
            f"{wider} is the one whose scale changes more from block to block.")


# ------------------------------------------------------------------------------------ notebook 03

class BlockProbe:
    """An :class:`~kalib.train.EpochStore` for one block trained live (:func:`kalib.method.blockwise.train_block`)
    that keeps nothing: after every epoch it measures the held-out loss of Eq. 7 (the mean of L_i^k so far,
    :func:`kalib.method.blockwise.converged_losses`) and how far the filters' gates lie from 1 on the held-out
    images. ``measure()`` takes the same measurement before training starts."""

    def __init__(self, block, filters_k, teachers, plan, feats, images, soft, k: int, device=None):
        self.args = (block, filters_k, teachers, plan, feats, images, soft, k)
        self.device = device
        self.held: list[float] = []
        self.gates: list[float] = []

    def measure(self) -> None:
        from ..method.blockwise import converged_losses
        block, filters_k, _, plan, *_ = self.args
        mode = block.training
        losses, features = converged_losses(*self.args, device=self.device)
        block.train(mode)                     # converged_losses leaves the block in eval mode
        with torch.no_grad():
            shift = [(filters_k[n].channel_weights(features) - 1).abs().mean() for n in plan.active_teachers]
        self.held.append(float(np.mean(losses)))
        self.gates.append(float(torch.stack(shift).mean()))

    def load(self, meta: dict) -> None:       # nothing saved: every live run starts afresh
        return None

    def save(self, state: dict) -> None:
        self.measure()


def live_block_figure(history: Sequence[float], probe: BlockProbe, floor: float, block: str, path=None):
    """The block trained live: training loss per epoch, held-out loss of Eq. 7 before and after every epoch
    with the floor (the teachers' own entropy) under it, and the gates' mean distance from 1."""
    import matplotlib.pyplot as plt
    fig, (ax, ax_gate) = plt.subplots(1, 2, figsize=(9, 3.2))
    epochs = range(len(probe.held))
    ax.plot(range(1, len(history) + 1), history, marker="o", label="training loss (mean over the epoch)")
    ax.plot(epochs, probe.held, marker="s", label="held-out loss (Eq. 7)")
    ax.axhline(floor, color="black", ls="--", lw=1, label="floor: the teachers' entropy")
    ax.set_xlabel("epoch (0 = before training)")
    ax.set_ylabel("nats per task")
    ax.set_title(f"Block {block} trained live", fontsize=10)
    ax.legend(fontsize=7)
    ax_gate.plot(epochs, probe.gates, marker="s", color="#d62728")
    ax_gate.set_xlabel("epoch (0 = before training)")
    ax_gate.set_ylabel("mean |w - 1| of the filters' gates")
    ax_gate.set_ylim(bottom=0)
    ax_gate.set_title("The filters leave the identity", fontsize=10)
    for a in (ax, ax_gate):
        a.grid(alpha=0.3)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=130)
    return fig


def live_block_sentence(block: str, images: int, seconds: float, probe: BlockProbe, floor: float,
                        run_loss: float | None = None) -> str:
    """What one block trained live did, from its probe: the held-out loss of Eq. 7 before and after, its excess
    over the floor (how far the teachers' predictions from the student's features still are from their own),
    how far the gates moved from 1, and the run's own converged loss at that block for scale."""
    before, after = probe.held[0], probe.held[-1]
    change = "fell" if after < before else "did not fall"
    gap_before, gap_after = before - floor, after - floor
    text = (f"Trained live on {images:,} pool images for {len(probe.held) - 1} epochs ({seconds:.1f} s), block "
            f"{block} and its filters took the held-out loss of Eq. 7 from {before:.4f} to {after:.4f} nats: it "
            f"{change} by {abs(before - after):.4f}. Its excess over the floor ({floor:.4f}), the part that "
            f"measures how far the teachers' predictions from the student's features are from their own, went from "
            f"{gap_before:.4f} to {gap_after:.4f}"
            + (f" ({1 - gap_after / gap_before:.0%} of it removed)." if gap_before > 0 else ".") +
            f" The gates' mean distance from 1 grew from {probe.gates[0]:.4f} to {probe.gates[-1]:.4f}.")
    if run_loss is not None:
        text += f" The run's own block {block}, trained with the preset's schedule and images, converged at {run_loss:.4f}."
    return text


def loss_by_depth(losses: Mapping[str, Mapping[str, float]], blocks: Sequence[str], what: str) -> str:
    """The mean over tasks of a task × block loss table (``losses[task][block]``) at the first and last block,
    and on how many steps it rises with depth."""
    mean = [float(np.mean([losses[t][b] for t in losses])) for b in blocks]
    first, last = round(mean[0], 4), round(mean[-1], 4)
    trend = "rises" if last > first else ("falls" if last < first else "is level")
    return (f"Averaged over tasks, the {what} {trend} from {mean[0]:.4f} after {blocks[0]} to {mean[-1]:.4f} "
            f"after {blocks[-1]}; {_steps_words(mean, 4)}.")


def epoch_losses_by_depth(train_loss: Mapping[str, Sequence[float]]) -> str:
    """The last training epoch's loss of every block (``record["block_train_loss"]``) in one sentence."""
    last = {b: h[-1] for b, h in train_loss.items() if h}
    blocks = list(last)
    if not blocks:
        return "No block has finished an epoch: there is no training loss to read."
    steps = _steps_words([last[b] for b in blocks], 4, "the last epoch's loss")
    return (f"The last epoch of {blocks[0]} ended at a training loss of {last[blocks[0]]:.4f}, that of "
            f"{blocks[-1]} at {last[blocks[-1]]:.4f}; {steps}.")


def rise_vs_floor(rise: float, floor: float) -> str:
    """The mean rise of a task's loss from its best block to the last, against the mean floor (the teachers'
    own entropy)."""
    share = rise / floor if floor > 0 else float("inf")
    text = (f"From its best block to the last, a task's loss rises by {rise:.4f} nats on average: {share:.1%} of the "
            f"floor ({floor:.4f} nats).")
    if share < 0.1:
        return text + (" The rise is small next to what the teachers themselves are unsure about; Eq. 9 still "
                       "takes the strict minimum, however small the rise.")
    return text + " The rise is not small next to what the teachers themselves are unsure about."


# ------------------------------------------------------------------------------------ notebook 04

def eq9_sentence(record: Mapping) -> str:
    """Where Eq. 9 sent the tasks of a run, and on how many tasks the converged loss rises with depth."""
    blocks, tasks = record["blocks"], record["tasks"]
    chosen = [record["chosen_block"][t] for t in tasks]
    counts = {b: chosen.count(b) for b in blocks if chosen.count(b)}
    rising = sum(1 for t in tasks if record["converged_loss"][t][blocks[-1]] > record["converged_loss"][t][blocks[0]])
    where = ", ".join(f"{n} after {b}" for b, n in counts.items())
    return (f"On this run the converged loss is higher at the last block than at the first for {rising} of the "
            f"{len(tasks)} tasks, and Eq. 9 sends {where}.")


def size_verdict(nets: Sequence[tuple[str, float, float]], teachers_map: float) -> str:
    """What the paper's Eq. 9 TargetNet bought with its size: ``nets`` are (row name, parameters as a fraction
    of the teachers', test mAP); the first is Eq. 9's, the others what it is set against."""
    (name, size, value), others = nets[0], nets[1:]
    text = (f"{name} keeps {size:.2f}× the teachers' parameters and scores {num(value)} mAP (teachers "
            f"{num(teachers_map)}).")
    for other, other_size, other_value in others:
        gap = round(round(value, 1) - round(other_value, 1), 1)
        if other_size >= size:
            text += f" {other} is no smaller ({other_size:.2f}×) at {num(other_value)}."
            continue
        bought = (f"Eq. 9 has bought {gap:.1f} mAP with its size" if gap > 0 else
                  "Eq. 9's extra size bought no accuracy")
        text += (f" Against {other} ({other_size:.2f}× at {num(other_value)} mAP): {bought} "
                 f"({size / other_size:.1f} times the parameters).")
    return text


def finetune_sentence(record: Mapping) -> str:
    """What fine-tuning (Alg. 1 line 14) changed in a run: held-out loss and test mAP before and after."""
    name = target_row("Target", record)
    held = record["heldout_loss"]
    before, after = shown_map(record["target_ap_before_finetune"]), shown_map(record["target_ap"])
    loss = "lowered" if held["after_finetune"] < held["before_finetune"] else "did not lower"
    return (f"Fine-tuning {name} {loss} its held-out loss ({held['before_finetune']:.4f} to "
            f"{held['after_finetune']:.4f} nats) and moved its test mAP from {num(before)} to {num(after)} "
            f"({after - before:+.1f}).")


def pair_blocks(entry: Mapping, blocks: Sequence[str]) -> int:
    """How many student blocks a Fig. 3 pair shares under Eq. 9: the earlier of its two chosen blocks."""
    return min(blocks.index(d["chosen_block"]) + 1 for d in entry["tasks"].values())


PAPER_FIG3 = ("In the paper (§4.2, Fig. 3, ResNet-50, 16 blocks) Eq. 9 sends 'bus' to b3_6, its AP-best block "
              "(96.2 AP against its teacher's 94.2), the four tasks beat their teachers at their Eq. 9 blocks, "
              "and the unrelated pair shares 13 blocks against 9 for the related one.")


def _names(names: Sequence[str]) -> str:
    """Task names in words: "a", "a and b", "a, b and c"; "none" for no name."""
    names = [f"{n}" for n in names]
    if not names:
        return "none"
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"


def fig3_sentence(fig3: Mapping[str, Mapping], blocks: Sequence[str]) -> str:
    """The Fig. 3 pairs of this run against the paper's reading of its Fig. 3: for which tasks Eq. 9 picks the
    AP-best block, which tasks reach their teacher's AP at the block Eq. 9 picks (APs as shown, one decimal),
    each count out of all tasks and each naming its tasks, and which pair shares more blocks."""
    tasks = [(t, d) for entry in fig3.values() for t, d in entry["tasks"].items()]
    best = [t for t, d in tasks if d["chosen_block"] == d["best_ap_block"]]
    reach = [t for t, d in tasks if round(d["ap_by_block"][d["chosen_block"]], 1) >= round(d["teacher_ap"], 1)]
    shared = {p: pair_blocks(entry, blocks) for p, entry in fig3.items()}
    text = (f"Here Eq. 9 picks the AP-best block for {len(best)} of the {len(tasks)} tasks ({_names(best)}). At the "
            f"block Eq. 9 picks, {len(reach)} of the {len(tasks)} tasks {'reaches' if len(reach) == 1 else 'reach'} "
            f"their teacher's AP ({_names(reach)})")
    both = [t for t in best if t in reach]
    if best and reach:
        text += f"; {len(both)} of the {len(best)} tasks at their AP-best block {'does' if len(both) == 1 else 'do'}"
    text += (". Shared blocks: " + ", ".join(f"{p} pair {n}" for p, n in shared.items()) + f" (of {len(blocks)}).")
    if {"unrelated", "related"} <= set(shared):
        holds = shared["unrelated"] > shared["related"]
        text += (" The paper's reading, that the unrelated pair shares more blocks than the related one, "
                 + ("holds on this run." if holds else "does not hold on this run."))
    return text


def eq9_vs_ap_best(record: Mapping) -> str:
    """On how many tasks of a run Eq. 9's block is the AP-best block, and the mean AP given up."""
    tasks = record["tasks"]
    same = sum(1 for t in tasks if record["chosen_block"][t] == record["ap_best_block"][t])
    regret = [record["branch_ap"][t][record["ap_best_block"][t]] - record["branch_ap"][t][record["chosen_block"][t]]
              for t in tasks]
    return (f"In the {len(tasks)}-task student Eq. 9's block is the AP-best one for {same} tasks; branching at the "
            f"AP-best block instead would gain {float(np.nanmean(regret)):.1f} AP per task on average (the method "
            f"cannot know it: it never sees a label).")


def images_per_block(record: Mapping) -> int:
    """How many pool images each block of a run trained on (all of its training part where it names no number)."""
    return int(record["pool"]["images_per_block"] or record["pool"]["train"])


def pairs_vs_all_tasks(fig3: Mapping[str, Mapping], fig3_all: Mapping[str, Mapping], pair_images: int,
                       all_images: int) -> str:
    """The Fig. 3 tasks in their pair students against the same tasks in the 20-task student: on how many the
    20-task student's AP at its own Eq. 9 block is as high or higher (as shown, one decimal), naming them, and
    how many pool images each kind of student trained every block on, a difference that can decide it."""
    tasks = [(t, d, fig3_all[p]["tasks"][t]) for p, entry in fig3.items() for t, d in entry["tasks"].items()
             if t in fig3_all.get(p, {}).get("tasks", {})]
    if not tasks:
        return "No Fig. 3 task is in both students."

    def at_choice(d):
        return round(d["ap_by_block"][d["chosen_block"]], 1)
    better = [t for t, pair, every in tasks if at_choice(every) >= at_choice(pair)]
    text = (f"At its own Eq. 9 blocks the {len(next(iter(fig3_all.values()))['C'])}-task student scores as high as "
            f"the pair students or higher on {len(better)} of the {len(tasks)} tasks ({_names(better)}).")
    if pair_images != all_images:
        fewer = "fewer" if pair_images < all_images else "more"
        text += (f" Each pair student trained every block on {pair_images:,} pool images, the 20-task student on "
                 f"{all_images:,}: the pair students saw {fewer} images, one reason their curves can differ.")
    else:
        text += f" Both kinds of student trained every block on {all_images:,} pool images."
    return text


# ------------------------------------------------------------------------------------ notebook 05

def ranking(rows: Mapping[str, Mapping[str, float]], candidates: Sequence[str] | None = None,
            label_free: Sequence[str] = ()) -> str:
    """The rows of a table by mAP, best first (``candidates``: the rows to rank, default all), the winner's
    lead over the next row, and among the ``label_free`` rows (trained without a label) which one leads."""
    names = [r for r in (candidates or rows) if r in rows and not math.isnan(rows[r]["mAP"])]
    if not names:
        return "No row to rank."
    order = sorted(names, key=lambda r: -rows[r]["mAP"])
    text = "By test mAP: " + ", ".join(f"{r} {num(rows[r]['mAP'])}" for r in order) + "."
    if len(order) > 1:
        text += (f" The best row, {order[0]}, is " + gap_words(rows[order[0]]["mAP"], f"the next, {order[1]}",
                                                                rows[order[1]]["mAP"]) + ".")
    free = [r for r in order if r in label_free]
    if len(free) > 1:
        text += (f" Of the networks trained without a label, {free[0]} leads: it is "
                 + gap_words(rows[free[0]]["mAP"], free[1], rows[free[1]]["mAP"]) + ".")
    return text


def seed_values(seeds: Mapping, row: str) -> dict[str, float] | None:
    """seed -> test mAP of ``row`` in a seed study (``seeds.json``), also under a study's older row name."""
    per_seed = seeds.get("per_seed", {})
    for name in [row] + [old for old, new in LEGACY_ROWS.items() if new == row]:
        values = {s: v["rows"][name] for s, v in per_seed.items() if name in v.get("rows", {})}
        if values:
            return values
    return None


def seed_study(run_file: str | Path, preset: str) -> tuple[dict | None, str]:
    """The seed study that applies to a run: its own (``run_file``, written by ``--seeds``), else, on the quick
    preset, the committed one (``figures/seeds.json``), else none. Returns it and a label saying which."""
    run_file = Path(run_file)
    for path, label in ((run_file, f"this run's seeds, {run_file.name}"),
                        (COMMITTED_SEEDS, "the committed quick study, figures/seeds.json")):
        if path == COMMITTED_SEEDS and preset != "quick":
            continue
        try:
            return json.loads(path.read_text()), label
        except (OSError, ValueError):
            continue
    return None, ""


def seed_differences(seeds: Mapping | None, a: str, b: str) -> list[float]:
    """Per-seed test-mAP differences ``a`` − ``b`` of a seed study (seeds in order; [] when either is missing)."""
    va, vb = (seed_values(seeds, a), seed_values(seeds, b)) if seeds else (None, None)
    common = sorted(set(va or {}) & set(vb or {}), key=int)
    return [round(va[s] - vb[s], 3) for s in common]


def seed_verdict(seeds: Mapping | None, a: str, b: str, source: str) -> str:
    """Whether ``a`` − ``b`` is beyond the seed spread in a seed study (``seeds``: the content of
    ``seeds.json``, ``source`` says which study it is): the per-seed differences, on how many seeds ``a``
    leads, and the 95 % t-interval of the mean difference."""
    if not seeds:
        return (f"No seed study for this run: whether {a} − {b} exceeds the seed-to-seed spread is not measured "
                f"here (`--seeds 0,1,2` measures it).")
    va, vb = seed_values(seeds, a), seed_values(seeds, b)
    common = sorted(set(va or {}) & set(vb or {}), key=int)
    if len(common) < 2:
        return f"The seed study ({source}) does not have both {a} and {b} on two seeds or more."
    diffs = [round(va[s] - vb[s], 3) for s in common]
    mean, (low, high) = interval(diffs)
    ahead = sum(1 for d in diffs if d > 0)
    inside = low <= 0 <= high
    return (f"In the seed study ({source}), {a} − {b} is " + ", ".join(f"{d:+.1f}" for d in diffs) +
            f" on seeds {', '.join(common)}: {a} ahead on {ahead} of {len(diffs)}, mean {mean:+.2f} mAP, 95 % "
            f"interval [{low:+.2f}, {high:+.2f}]: " +
            ("inside the seed spread (the interval contains 0)." if inside else "beyond the seed spread."))


def table2_order(rows1: Mapping, rows2: Mapping, main1: str, main2: str, pool1: int, pool2: int) -> str:
    """Why KD and the TargetNet change places between Table 1 and Table 2 (or do not): their difference in
    both tables, and the pool each table's TargetNet and KD learnt from."""
    if "KD" not in rows1 or "KD" not in rows2:
        return "A table has no KD row to compare."
    d1 = round(round(rows1["KD"]["mAP"], 1) - round(rows1[main1]["mAP"], 1), 1)
    d2 = round(round(rows2["KD"]["mAP"], 1) - round(rows2[main2]["mAP"], 1), 1)
    text = (f"KD − {main1} is {d1:+.1f} mAP in Table 1, and KD − {main2} is {d2:+.1f} in Table 2. Table 1's "
            f"TargetNet and KD learn from {pool1:,} pool images, Table 2's (side runs) from {pool2:,}.")
    if (d1 > 0) != (d2 > 0) and d1 != 0 and d2 != 0:
        small = "Table 2" if pool2 < pool1 else "Table 1"
        leader = "the TargetNet" if (d2 < 0 if small == "Table 2" else d1 < 0) else "KD"
        text += f" The order flips, and on the smaller pool ({small}) {leader} leads."
    else:
        text += " The order is the same in both tables."
    return text


def sizes_against_teachers(sizes: Mapping[str, tuple[int, int]]) -> str:
    """Each TargetNet's parameters against its own teachers' together (``sizes``: row -> (TargetNet, teachers)):
    which are smaller, which are not, as a fraction of the teachers' (three decimals: an early branch-out lands
    within a percent of the teachers, on either side)."""
    smaller = {r: t / te for r, (t, te) in sizes.items() if t < te}
    larger = {r: t / te for r, (t, te) in sizes.items() if t >= te}
    parts = []
    if smaller:
        parts.append("smaller than their own teachers together: " + ", ".join(f"{r} ({f:.3f}×)" for r, f in smaller.items()))
    if larger:
        parts.append("as large or larger: " + ", ".join(f"{r} ({f:.3f}×)" for r, f in larger.items()))
    text = "TargetNets " + "; ".join(parts) + "." if parts else "No TargetNet to compare."
    if larger:
        text += (" A TargetNet whose tasks leave the trunk early keeps the trunk, a filter per branch and a copy of "
                 "each teacher's later blocks, so it can end up larger than its teachers (notebook 04, section 4.3).")
    return text


def costs_sentence(cost: Mapping[str, Mapping[str, float]], reference: str = "Ensemble") -> str:
    """Each TargetNet row and KD against ``reference`` (the networks they replace): parameters and
    multiply-accumulates per image as fractions of the reference's."""
    if reference not in cost:
        return f"No {reference} row to compare with."
    ref = cost[reference]
    rows = [r for r in cost if r.startswith("Target") or r in ("KD", "Supervised")]
    parts = [f"{r} {cost[r]['params'] / ref['params']:.2f}× and {cost[r]['macs'] / ref['macs']:.2f}×" for r in rows]
    return f"Parameters and MACs per image as a fraction of the {reference}'s: " + "; ".join(parts) + "."


def run_time(timings: Mapping[str, float | None]) -> str:
    """This run's training time from its own records (step -> seconds), by kind of step."""
    kinds = {"teachers": 0.0, "amalgamations": 0.0, "baselines": 0.0}
    for step, seconds in timings.items():
        value = seconds.get("total", 0.0) if isinstance(seconds, Mapping) else (seconds or 0.0)
        kind = "amalgamations" if "amalgamation" in step else ("baselines" if step.split("/")[-1] in
                                                               ("KD", "Supervised", "Ensemble") else "teachers")
        kinds[kind] += value
    total = sum(kinds.values())
    return (f"This run's training took {total:,.0f} s of wall time in its records (" +
            ", ".join(f"{k} {v:,.0f} s" for k, v in kinds.items()) +
            "), on this machine with whatever else it was running; re-used steps cost nothing the second time. "
            "docs/performance.md has the committed measurements.")


def shown_path(path: Path) -> str:
    """A path as the reader knows it: relative to the repository where it lies inside it."""
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)
