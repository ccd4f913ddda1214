"""Choose the side runs' branch-out rule on the validation split (docs/levers.md): Target-3, TargetDenseNet and
Table 2's two-teacher run, each amalgamated once with the main run's tolerance rule; where that rule and
Eq. 9 choose different blocks, the run also fine-tunes Eq. 9's TargetNet, so one run scores both rules.

    python benchmarks/side_rule.py --out runs/quick --levers runs/levers/side-rule

Teachers are pretrained (or re-used) in ``--out`` as `make reproduce` lays them out; the amalgamations go to
``--levers`` (evaluated on the validation split, so they never mix with the reproduction's test-split runs).
Prints a markdown table and writes ``side_rule.json`` there.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kalib.runs import experiments
from kalib.runs.amalgamation import run
from kalib.runs.parallel import run_parallel
from kalib.runs.presets import get_preset

SIDE_RUNS = (("table1", "3"), ("table1", "dense"), ("table2", "2"))


def side_rule(preset_name: str, out: Path, levers: Path) -> dict:
    preset = get_preset(preset_name)
    tolerance = preset.student.branch_tolerance
    benches = {v: experiments.load_variant(preset, v) for v in experiments.variants(preset)}
    for variant, teacher_set in SIDE_RUNS:
        experiments.ensure_teachers(preset, benches[variant], out, variant, teacher_set)

    def one(variant: str, teacher_set: str) -> dict:
        side = experiments.for_run(preset, variant, teacher_set).replace(branch_tolerance=tolerance)
        record = run(benches[variant], side, experiments.teachers_dir(out, variant), levers / f"{variant}-{teacher_set}",
                     teacher_set=teacher_set, eval_split="val", branch_curves=False, log=lambda *_: None)
        eq9 = record.get("eq9", record)                    # the same TargetNet where both rules agree
        return {"side run": f"{variant}/{teacher_set}", "teachers": record["teacher_ap"]["mAP"],
                f"tolerance {tolerance}": record["target_ap"]["mAP"], "Eq. 9": eq9["target_ap"]["mAP"],
                f"tolerance {tolerance} params": record["params"]["targetnet"],
                "Eq. 9 params": eq9["params"]["targetnet"], "teacher params": record["params"]["teachers"]}
    rows = run_parallel([lambda v=v, s=s: one(v, s) for v, s in SIDE_RUNS])
    mean = {rule: round(sum(r[rule] for r in rows) / len(rows), 2) for rule in (f"tolerance {tolerance}", "Eq. 9")}
    return {"rows": rows, "mean": mean, "chosen": max(mean, key=mean.get)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--out", type=Path, default=Path("runs/quick"))
    parser.add_argument("--levers", type=Path, default=Path("runs/levers/side-rule"))
    args = parser.parse_args()
    result = side_rule(args.preset, args.out, args.levers)
    rules = list(result["mean"])
    print("| side run | teachers | " + " | ".join(rules) + " | parameters (" + " / ".join(rules) + ", teachers) |")
    print("|---|---:|" + "---:|" * len(rules) + "---|")
    for r in result["rows"]:
        print(f"| {r['side run']} | {r['teachers']:.1f} | " + " | ".join(f"{r[k]:.1f}" for k in rules)
              + f" | {r[rules[0] + ' params']:,} / {r['Eq. 9 params']:,} / {r['teacher params']:,} |")
    print(f"| mean | | " + " | ".join(f"{result['mean'][k]:.1f}" for k in rules) + " | |")
    print(f"\nchosen on validation: {result['chosen']}")
    args.levers.mkdir(parents=True, exist_ok=True)
    (args.levers / "side_rule.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
