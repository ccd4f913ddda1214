"""The runs behind Fig. 3 and Tables 1–3, laid out in one output directory that the notebooks, the CLI
and ``python -m kalib reproduce`` share, so every finished step is found and re-used:

```
OUT/table1/teachers/          generic + teacher checkpoints (Eq. 2) of the Table 1 benchmark
OUT/table1/amalgamation-2/    two ResNet teachers, C = A (Target, Target b1..b4, Fig. 3's second panel)
OUT/table1/fig3-PAIR/         the same teachers, C = one Fig. 3 pair (two-task students, Fig. 3)
OUT/table1/amalgamation-3/    three teachers 7/7/6 (Target-3)
OUT/table1/amalgamation-dense/  DenseNet teachers and student (TargetDenseNet)
OUT/table2/...                the same on the harder benchmark variant (Table 2, standing in for VOC 2012)
```
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from ..errors import MissingFileError
from ..method.baselines import TeacherEnsemble
from ..method.branch import forced_branch_points
from ..method.filters import task_plan
from ..method.student import init_student, make_filters
from ..method.targetnet import assemble
from ..report.results import EQ9_ROW, table_map, target_row
from ..train import predict
from .amalgamation import run
from .baselines import ensemble_run, kd_run, merge_run, supervised_run
from .checkpoints import load_model, load_state, load_target
from .data import VARIANTS, load_data, variant_data  # noqa: F401 (variant_data: re-exported)
from .parallel import run_parallel
from .presets import TEACHER_SETS, Preset, changes
from .state import load_teachers, teacher_files
from .teachers import pretrain_set

ROW_OF_SET = {"2": "Target", "3": "Target-3", "dense": "TargetDenseNet"}


def variants(preset: Preset) -> tuple[str, ...]:
    """The tables this preset reproduces: Table 1, and Table 2 where it has a harder variant."""
    return VARIANTS if preset.hard_data is not None else VARIANTS[:1]


def for_run(preset: Preset, variant: str = "table1", teacher_set: str = "2") -> Preset:
    """The preset of one run: the main run (Table 1, two teachers) as given; a side run (every other teacher
    set, and all of Table 2) with what ``preset.side`` changes: the cheaper teacher schedule ``side.teacher``
    (the DenseNets' generic stage no longer than it), a pool of ``side.pool_images`` training images plus
    the held-out slice, all of which every block and the fine-tuning use, and the branch-out rule
    ``side.branch_tolerance``. :func:`side_run_changes` says what that changes."""
    if (variant, teacher_set) == ("table1", "2"):
        return preset
    changes = {"branch_tolerance": preset.side.branch_tolerance}
    if preset.side.teacher is not None:
        generic = preset.pretraining.generic
        changes.update(teacher=preset.side.teacher, generic=dataclasses.replace(
            generic, epochs=min(generic.epochs, preset.side.teacher.epochs)) if teacher_set == "dense" else generic)
    if preset.side.pool_images is not None:   # training images, with the held-out slice of L_i^k on top
        changes.update(pool_images=preset.side.pool_images + preset.student.loss_slice, block_images=0,
                       finetune_images=0)
    return preset.replace(**changes)


def side_run_changes(preset: Preset, variant: str, teacher_set: str) -> str:
    """One line for the start of a run: which preset fields a side run changes, from what to what (a
    user's ``--set`` of one of these fields does not reach the side runs; set ``side.*`` instead)."""
    changed = changes(preset, for_run(preset, variant, teacher_set))
    return ", ".join(f"{name} {old} -> {new}" for name, (old, new) in changed.items()) or "nothing"


# the data of one table: :func:`kalib.runs.data.load_data`, under the name the notebooks call it by
load_variant = load_data


def teachers_dir(out_dir: str | Path, variant: str = "table1") -> Path:
    return Path(out_dir) / variant / "teachers"


def run_dir(out_dir: str | Path, variant: str = "table1", teacher_set: str = "2") -> Path:
    return Path(out_dir) / variant / f"amalgamation-{teacher_set}"


def ensure_teachers(preset: Preset, bench, out_dir: str | Path, variant: str = "table1",
                    teacher_set: str = "2", seed: int | None = None, log=print, device=None) -> list[Path]:
    """Pretrain (or re-use) the generic backbone and the teachers of ``teacher_set`` (Eq. 2). Paper
    presets start from ImageNet weights instead of a generic stage (``kalib.models.pretrained``).

    Table 2 re-uses Table 1's generic backbone, as the paper's VOC 2007 and VOC 2012 teachers start from
    the same ImageNet weights: it is copied from Table 1's teacher directory. Table 2's teachers start from
    Table 1's teachers of the same set (same labels; trained first where missing) and are fine-tuned on
    the harder variant with the side schedule: the CPU budget has no room to train seven more teachers
    from the generic stage (README, "Results")."""
    run_preset = for_run(preset, variant, teacher_set)
    seed = preset.seed if seed is None else seed
    generic_bench = warm_start = None
    if variant != "table1" and preset.nets.init == "generic":
        generic_bench = load_data(preset, "table1")
        warm_start = ensure_teachers(preset, generic_bench, out_dir, "table1", teacher_set, seed, log, device)
        _, arch, _ = preset.teacher_set(teacher_set)
        shared = teachers_dir(out_dir, "table1")
        dst = teachers_dir(out_dir, variant)
        dst.mkdir(parents=True, exist_ok=True)
        for name in (f"generic-{arch}.pt", f"generic-{arch}.json"):    # weights first: the JSON marks it done
            if not (dst / name).is_file():
                shutil.copyfile(shared / name, dst / name)
    return pretrain_set(run_preset, bench, teacher_set, teachers_dir(out_dir, variant), seed, log=log,
                        device=device, generic_bench=generic_bench, warm_start=warm_start)


def ensure_amalgamation(preset: Preset, bench, out_dir: str | Path, variant: str = "table1",
                        teacher_set: str = "2", seed: int | None = None, log=print, device=None) -> dict:
    """Teachers, then block-wise amalgamation with C = A, branch-out, TargetNet and fine-tuning
    (Alg. 1); finished blocks and runs are re-used. The branch-out curves (Fig. 3, the Target b1…b4 rows)
    are measured for the two-teacher runs only. Returns the run record (also in ``run.json``)."""
    ensure_teachers(preset, bench, out_dir, variant, teacher_set, seed, log, device)
    if (variant, teacher_set) != ("table1", "2"):
        log(f"{variant} {ROW_OF_SET[teacher_set]} (a side run) changes: {side_run_changes(preset, variant, teacher_set)}")
    return run(bench, for_run(preset, variant, teacher_set), teachers_dir(out_dir, variant),
               run_dir(out_dir, variant, teacher_set), teacher_set=teacher_set, seed=seed, log=log, device=device,
               branch_curves=teacher_set == "2")


def fig3_dir(out_dir: str | Path, pair: str) -> Path:
    return Path(out_dir) / "table1" / f"fig3-{pair}"


def ensure_fig3(preset: Preset, bench, out_dir: str | Path, seed: int | None = None, log=print,
                device=None) -> dict[str, dict]:
    """Fig. 3 as the paper runs it (§4.2): for each pair of ``preset.labels.pairs`` (one task from each teacher)
    its own amalgamation with C = the pair: block-wise training, converged losses, Eq. 9 and the branch-out
    curves. Only the curves and the branch-out are drawn, so the two-task TargetNets are assembled but not
    fine-tuned; each block trains on ``preset.student.pair_block_images`` pool images where the preset sets it.
    Returns pair name -> run record."""
    preset.labels.check_pairs()
    ensure_teachers(preset, bench, out_dir, "table1", "2", seed, log, device)
    pair_preset = preset.replace(finetune=dataclasses.replace(preset.student.finetune, epochs=0),
                                 block_images=preset.student.pair_block_images or preset.student.block_images)
    jobs = [lambda pair=pair, tasks=tasks: run(bench, pair_preset, teachers_dir(out_dir), fig3_dir(out_dir, pair),
                                               tasks=list(tasks), seed=seed, log=log, device=device)
            for pair, tasks in preset.labels.pairs.items()]
    records = run_parallel(jobs, device=device, on_done=lambda i, r: log(
        f"Fig. 3 student for C = {{{', '.join(r['tasks'])}}}: Eq. 9 blocks {r['chosen_block']}"))
    return dict(zip(preset.labels.pairs, records))


def baselines_dir(out_dir: str | Path, variant: str = "table1") -> Path:
    return Path(out_dir) / variant / "baselines"


def baseline_jobs(preset: Preset, bench, out_dir: str | Path, variant: str = "table1", seed: int | None = None,
                  log=print, device=None) -> dict[str, Callable[[], dict]]:
    """The KD and Supervised baselines of one table (:mod:`kalib.runs.baselines`) as independent jobs; their
    teachers, and for KD the table's main amalgamation (its budget), must exist. Table 2's supervised network
    starts from Table 1's (as its teachers do)."""
    seed = preset.seed if seed is None else seed
    run_preset = for_run(preset, variant, "2")
    tdir, bdir = teachers_dir(out_dir, variant), baselines_dir(out_dir, variant)
    warm = baselines_dir(out_dir, "table1") / "Supervised.pt" if variant != "table1" else None
    return {"KD": lambda: kd_run(run_preset, bench, tdir, bdir, seed, device, log,
                                 main_record=load_run(out_dir, variant, "2")),
            "Supervised": lambda: supervised_run(run_preset, bench, tdir, bdir, seed, device, log, warm_start=warm),
            "Merge": lambda: merge_run(run_preset, bench, tdir, bdir, device, log)}


def ensure_baselines(preset: Preset, bench, out_dir: str | Path, variant: str = "table1", seed: int | None = None,
                     log=print, device=None) -> dict[str, dict]:
    """The table's main amalgamation (KD's budget), then the rows ``KD``, ``Supervised`` (trained side by side, or
    re-used) and ``Ensemble`` of one table: row -> record with ``test_ap`` and ``val_ap``."""
    ensure_amalgamation(preset, bench, out_dir, variant, "2", seed, log, device)
    jobs = baseline_jobs(preset, bench, out_dir, variant, seed, log, device)
    records = dict(zip(jobs, run_parallel(list(jobs.values()), device=device)))
    records["Ensemble"] = _ensemble(preset, bench, out_dir, variant, device)
    return records


def _ensemble(preset: Preset, bench, out_dir: str | Path, variant: str, device=None) -> dict:
    """The ``Ensemble`` row of one table: its two teachers side by side (nothing to train)."""
    return ensemble_run(for_run(preset, variant, "2"), bench, teachers_dir(out_dir, variant), device)


def side_jobs(preset: Preset, bench, out_dir: str | Path, variant: str, seed: int | None = None, log=print,
              device=None, done=()) -> dict[tuple[str, str], Callable[[], dict]]:
    """The independent runs of one table, keyed (variant, teacher set or row), in the order they are
    started: the amalgamations of every teacher set whose key is not in ``done`` (Table 1's main run is
    notebook 02's; each side run trains its own teachers first), then the baselines (KD, Supervised, Merge).
    Longest first: at equal training MACs KD is shorter than a side run with its teachers (replayed on the
    committed seconds, docs/performance.md). The table's teachers of set 2 must exist."""
    jobs = {(variant, s): (lambda s=s: ensure_amalgamation(preset, bench, out_dir, variant, s, seed, log, device))
            for s in TEACHER_SETS if (variant, s) not in done}
    jobs.update({(variant, row): job for row, job in baseline_jobs(preset, bench, out_dir, variant, seed, log,
                                                                    device).items()})
    return jobs


def ensure_tables(preset: Preset, benches: dict, out_dir: str | Path, seed: int | None = None, log=print,
                  device=None) -> dict[tuple[str, str], dict]:
    """Every run of Tables 1 and 2: (variant, teacher set) -> amalgamation run record, and (variant, row) ->
    baseline record for the rows ``KD``, ``Supervised`` and ``Ensemble``. Per table its main run first (Table 1's
    is notebook 02's; KD's budget is its training MACs), then its baselines and side runs side by side
    (:func:`side_jobs`); Table 2 after Table 1 (its teachers start from Table 1's); independent runs share the CPU cores (:func:`kalib.runs.parallel.run_parallel`)."""
    runs = {}
    for variant in variants(preset):
        # the table's main run first: the KD baseline trains at its training MACs
        runs[variant, "2"] = ensure_amalgamation(preset, benches[variant], out_dir, variant, "2", seed, log, device)
        jobs = side_jobs(preset, benches[variant], out_dir, variant, seed, log, device, done=runs)
        todo = list(jobs)
        records = run_parallel(list(jobs.values()), device=device, on_done=lambda i, r: log(
            f"{todo[i][0]} {ROW_OF_SET.get(todo[i][1], todo[i][1])}: " + (
                f"TargetNet {table_map(r['target_ap']):.1f} mAP, teachers {table_map(r['teacher_ap']):.1f}"
                if "target_ap" in r else f"{table_map(r['test_ap']):.1f} mAP")))
        runs.update(zip(todo, records))
        runs[variant, "Ensemble"] = _ensemble(preset, benches[variant], out_dir, variant, device)
    return runs


def load_run(out_dir: str | Path, variant: str = "table1", teacher_set: str = "2") -> dict:
    """The record ``run.json`` of a finished amalgamation."""
    path = run_dir(out_dir, variant, teacher_set) / "run.json"
    if not path.is_file():
        raise MissingFileError(f"{path} not found: run the amalgamation first (notebook 02 or "
                                f"`python -m kalib amalgamate`)")
    return json.loads(path.read_text())


def load_trained(preset: Preset, out_dir: str | Path, variant: str = "table1", teacher_set: str = "2"):
    """The trained student, filters f_n^k, frozen teachers and task plan of a finished amalgamation
    (for looking inside: filter weights, features)."""
    return load_blocks(preset, teachers_dir(out_dir, variant), run_dir(out_dir, variant, teacher_set), teacher_set)


def load_blocks(preset: Preset, teachers: str | Path, amalgamation: str | Path, teacher_set: str = "2"):
    """:func:`load_trained` for explicit directories: the teachers' and the amalgamation run's."""
    arch, paths, generic_path = teacher_files(preset, teachers, teacher_set)
    teachers, labels = load_teachers(paths)
    record = json.loads((Path(amalgamation) / "run.json").read_text())
    plan = task_plan(record["tasks"], labels)
    last = Path(amalgamation) / "blocks" / f"block{teachers[0].num_blocks:02d}.pt"
    state = load_state(last)
    student = init_student("teacher1", teachers).with_new_head(state["student"]["head.fc.weight"].shape[0])
    filters = make_filters(student, teachers, preset.student.filter_reduction)
    student.load_state_dict(state["student"])
    filters.load_state_dict(state["filters"])
    return student.eval(), filters.eval(), teachers, plan


def target_scores(out_dir: str | Path, images: torch.Tensor, variant: str = "table1",
                  teacher_set: str = "2", device=None, eq9: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Logits of the fine-tuned TargetNet of a finished run on ``images`` and its task names: the run's own
    rule, or with ``eq9`` its Eq. 9 TargetNet (where the run's rule is another, ``targetnet-eq9.pt``)."""
    directory = run_dir(out_dir, variant, teacher_set)
    path = directory / "targetnet-eq9.pt" if eq9 and (directory / "targetnet-eq9.pt").is_file() else \
        directory / "targetnet.pt"
    net, meta = load_target(path)
    return predict(net, images, device=device), list(net.tasks)


def row_name(teacher_set: str, record: dict) -> str:
    """The table row of a teacher set's TargetNet, with the branch-out rule its run used (``Target (tolerance
    0.02)``, ``Target-3 (Eq. 9)``, ...; :func:`kalib.report.results.target_row`)."""
    return target_row(ROW_OF_SET[teacher_set], record)


def row_networks(preset: Preset, out_dir: str | Path) -> dict[str, torch.nn.Module]:
    """The network behind every row of Table 1 that has one, for :func:`kalib.report.efficiency.efficiency`: each
    teacher, the Ensemble, KD, Supervised, Target b1…b4 (every task branching at the end of stage k, Eq. 10),
    every TargetNet under its row name (Target (Eq. 9), and kalib's tolerance TargetNet where the preset has
    one; Target-3 and TargetDenseNet with their rules). Rows whose runs are missing are left out."""
    student, filters, teachers, plan = load_trained(preset, out_dir)
    nets = {f"Teacher {n}": t for n, t in enumerate(teachers, start=1)}
    nets["Ensemble"] = TeacherEnsemble(teachers, plan)
    for row in ("KD", "Supervised", "Merge"):
        path = baselines_dir(out_dir) / f"{row}.pt"
        if path.is_file():
            nets[row] = load_model(path)[0]
    for stage in student.stage_ends:
        nets[f"Target {stage}"] = assemble(student, filters, teachers, plan,
                                           forced_branch_points(student, stage, len(plan.tasks)))
    main = run_dir(out_dir)
    if (main / "targetnet-eq9.pt").is_file():
        nets[EQ9_ROW] = load_target(main / "targetnet-eq9.pt")[0]
    for teacher_set in ("2", "3", "dense"):
        path = run_dir(out_dir, "table1", teacher_set) / "targetnet.pt"
        if path.is_file():
            nets[row_name(teacher_set, load_run(out_dir, "table1", teacher_set))] = load_target(path)[0]
    return nets
