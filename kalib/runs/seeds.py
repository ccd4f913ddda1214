"""The main rows of Table 1 and Fig. 3's branch-out over several seeds, their spread, and the paper's claims
checked on every seed (``python -m kalib reproduce --seeds 0,1,2``).

A seed changes everything random: the canvases (and the glyphs they are drawn from), the generic stage, the
teachers, the students and the baselines; the label split stays fixed. The preset's own seed is the main run
(its output directory); every other seed runs in ``OUT/seeds/seed-N``. A finished seed keeps its summary in
``summary.json`` and is re-used while its preset is unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from pathlib import Path

from ..report.results import table_rows
from . import experiments
from .config import digest
from .data import load_data
from .presets import Preset
from .records import read_record, verify

MAIN_ROWS = ("Teacher", "Ensemble", "KD", "Supervised", "Target b1", "Target b2", "Target b3", "Target b4")
TARGET_ROWS = ("Target (", "Target-3 (")         # every two- and three-teacher TargetNet, named by its rule


def seed_preset(preset: Preset, seed: int) -> Preset:
    """``preset`` with everything random drawn from ``seed``: the training seed and the canvases (a seed
    equal to the preset's own leaves it unchanged)."""
    if seed == preset.seed:
        return preset
    return preset.replace(seed=seed, data=dataclasses.replace(preset.data, seed=seed, glyph_seed=None))


def seed_dir(out_dir: str | Path, preset: Preset, seed: int) -> Path:
    """Where a seed's runs live: the main output directory for the preset's own seed."""
    return Path(out_dir) if seed == preset.seed else Path(out_dir) / "seeds" / f"seed-{seed}"


def summarise_seed(runs: dict, baselines: dict, pair_runs: dict) -> dict:
    """One seed's numbers: mAP of every main row (and of kalib's tolerance row where the preset has one), how
    many tasks Eq. 9 sends to their AP-best block, and how many blocks each Fig. 3 pair shares."""
    main = runs["2"]
    rows = table_rows(main, runs.get("3"), None, baselines)
    out = {"rows": {name: round(row["mAP"], 3) for name, row in rows.items() if name in MAIN_ROWS or
                    name.startswith(TARGET_ROWS)}}
    chosen, best = main["chosen_block"], main["ap_best_block"]
    out["eq9_ap_best"] = {"tasks": len(chosen), "matching": sum(chosen[t] == best[t] for t in chosen)}
    out["eq9_ap_regret"] = eq9_regret(main)
    out["fig3_shared_blocks"] = {pair: _shared_blocks(record) for pair, record in pair_runs.items()}
    return out


def eq9_regret(record: dict) -> float:
    """The AP Eq. 9's choice gives away: per task, its test AP at the AP-best block minus its AP at the block
    Eq. 9 chose (both before fine-tuning, from the branch-out curves), averaged over the tasks of C."""
    curves, chosen = record["branch_ap"], record["chosen_block"]
    return round(statistics.fmean(max(curves[t].values()) - curves[t][chosen[t]] for t in chosen), 3)


def _shared_blocks(record: dict) -> int:
    """Blocks a two-task student shares between its tasks under Eq. 9: up to the earlier branch-out block."""
    blocks = record["blocks"]
    return min(blocks.index(record["chosen_block"][t]) + 1 for t in record["tasks"])


def summary_key(preset: Preset) -> str:
    """The key of a seed's summary: the digest of its whole preset, without ``precision`` when it is fp32 (the
    keys of summaries written before presets had a precision)."""
    fields = dataclasses.asdict(preset)
    if fields.get("precision") == "fp32":
        del fields["precision"]
    return digest(fields)


def run_seed(preset: Preset, seed: int, out_dir: str | Path, log=print, device=None) -> dict:
    """The main rows of one seed: the two-teacher C = A run, Target-3, the baselines and the Fig. 3 pairs;
    returns (and keeps in ``summary.json``) :func:`summarise_seed`'s numbers."""
    p = seed_preset(preset, seed)
    out = seed_dir(out_dir, preset, seed)
    path = out / "seeds-summary.json"
    key = summary_key(p)
    saved = read_record(path)
    if saved is not None and verify(saved.get("key"), key).valid:     # a summary names no files: its key only
        log(f"seed {seed}: re-using {path}")
        return saved["summary"]
    bench = load_data(p, "table1")
    runs = {s: experiments.ensure_amalgamation(p, bench, out, "table1", s, seed, log, device) for s in ("2", "3")}
    baselines = experiments.ensure_baselines(p, bench, out, "table1", seed, log, device)
    pair_runs = experiments.ensure_fig3(p, bench, out, seed, log, device)
    summary = summarise_seed(runs, baselines, pair_runs)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "seed": seed, "summary": summary}, indent=1))
    return summary


def spread(per_seed: dict[int, dict]) -> dict:
    """``seeds.json``: the per-seed summaries and, for every row, its values, mean and sample standard
    deviation over the seeds."""
    names = [r for r in next(iter(per_seed.values()))["rows"] if all(r in s["rows"] for s in per_seed.values())]
    rows = {}
    for name in names:
        values = [per_seed[s]["rows"][name] for s in per_seed]
        rows[name] = {"values": values, "mean": round(statistics.fmean(values), 3),
                      "std": round(statistics.stdev(values), 3) if len(values) > 1 else 0.0}
    return {"seeds": list(per_seed), "per_seed": {str(s): v for s, v in per_seed.items()}, "rows": rows}


def run_seeds(preset: Preset, seeds, out_dir: str | Path, log=print, device=None) -> dict:
    """:func:`run_seed` for every seed, then :func:`spread`."""
    per_seed = {}
    for seed in seeds:
        log(f"seed {seed}: {seed_dir(out_dir, preset, seed)}")
        per_seed[seed] = run_seed(preset, seed, out_dir, log, device)
    return spread(per_seed)
