"""Does bf16 training change the quick preset's numbers? Table 1's main rows over seeds in bf16 against the
committed fp32 ``figures/seeds.json``, row by row, as a markdown table.

    python benchmarks/precision_accuracy.py runs/quick-bf16/figures/seeds.json [--fp32 figures/seeds.json]
                                            [--out PATH]

Both files are ``seeds.json`` as ``kalib reproduce --seeds`` writes it (:func:`kalib.runs.seeds.run_seeds`):
per row, the test mAP of every seed, their mean and sample standard deviation. For every row in both, the
table gives fp32 and bf16 as mean ± std, the difference of the means (bf16 − fp32), that difference in units
of fp32's standard deviation over the seeds (the seed-to-seed spread bf16 has to stay within), and, over the
seeds both files have, the mean and standard deviation of the paired per-seed differences (the same seed
draws the same canvases, label split and batch order in both). Rows are matched by name; a row renamed since
the fp32 file was written is matched through :data:`ALIASES` or, for the side runs, by the name before its
rule in parentheses. The bf16 run: ``python -m kalib reproduce --preset quick --precision bf16 --seeds 0,1,2
--out runs/quick-bf16`` (docs/performance.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# row names of seeds.json files written before the rows were named by their branch-out rule
ALIASES = {"Target": "Target (Eq. 9)"}


def _base(name: str) -> str:
    return name.split(" (")[0]


def match_rows(fp32: dict, bf16: dict) -> list[tuple[str, str]]:
    """(fp32 row, bf16 row) pairs: the same name, an alias, or for ``Target-3``/``TargetDenseNet`` the one row
    of that name before its parentheses on each side."""
    pairs = []
    for name in bf16:
        candidates = [name] + [old for old, new in ALIASES.items() if new == name] + \
                     [new for old, new in ALIASES.items() if old == name]
        found = next((c for c in candidates if c in fp32), None)
        if found is None and _base(name) in ("Target-3", "TargetDenseNet"):
            same = [r for r in fp32 if _base(r) == _base(name)]
            found = same[0] if len(same) == 1 and sum(_base(r) == _base(name) for r in bf16) == 1 else None
        if found is not None:
            pairs.append((found, name))
    return pairs


def compare(fp32: dict, bf16: dict) -> list[dict]:
    """One entry per matched row: means, standard deviations, the difference of means, it over fp32's std,
    and the paired per-seed differences over the seeds both have."""
    seeds32, seeds16 = [str(s) for s in fp32["seeds"]], [str(s) for s in bf16["seeds"]]
    common = [s for s in seeds16 if s in seeds32]
    out = []
    for a, b in match_rows(fp32["rows"], bf16["rows"]):
        ra, rb = fp32["rows"][a], bf16["rows"][b]
        diff = rb["mean"] - ra["mean"]
        paired = [rb["values"][seeds16.index(s)] - ra["values"][seeds32.index(s)] for s in common]
        out.append({"row": b if a == b else f"{b} (fp32: {a})", "fp32_mean": ra["mean"], "fp32_std": ra["std"],
                    "bf16_mean": rb["mean"], "bf16_std": rb["std"], "diff": diff,
                    "diff_over_std": diff / ra["std"] if ra["std"] > 0 else float("nan"),
                    "paired_mean": statistics.fmean(paired) if paired else float("nan"),
                    "paired_std": statistics.stdev(paired) if len(paired) > 1 else float("nan"),
                    "seeds": len(common)})
    return out


def markdown(rows: list[dict], fp32_path, bf16_path) -> str:
    lines = [f"bf16 ({bf16_path}) against fp32 ({fp32_path}), test mAP %, mean ± sample std over the seeds", "",
             "| row | fp32 | bf16 | bf16 − fp32 | ÷ fp32 std | paired Δ per seed (mean ± std) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['row']} | {r['fp32_mean']:.2f} ± {r['fp32_std']:.2f} | {r['bf16_mean']:.2f} ± "
                     f"{r['bf16_std']:.2f} | {r['diff']:+.2f} | {r['diff_over_std']:+.1f} | "
                     f"{r['paired_mean']:+.2f} ± {r['paired_std']:.2f} ({r['seeds']} seeds) |")
    outside = [r["row"] for r in rows if abs(r["diff_over_std"]) > 1]
    far = [r["row"] for r in rows if abs(r["diff_over_std"]) > 2]
    lines += ["", f"{len(rows)} rows; the difference of means exceeds fp32's standard deviation in {len(outside)}"
                  + (f" ({', '.join(outside)})" if outside else "") + f", twice it in {len(far)}"
                  + (f" ({', '.join(far)})" if far else "") + "."]
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bf16", type=Path, help="seeds.json of the bf16 run (runs/quick-bf16/figures/seeds.json)")
    parser.add_argument("--fp32", type=Path, default=ROOT / "figures" / "seeds.json",
                        help="seeds.json of fp32 (default: the committed figures/seeds.json)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args(argv)
    fp32, bf16 = (json.loads(p.read_text()) for p in (args.fp32, args.bf16))
    text = markdown(compare(fp32, bf16), args.fp32, args.bf16)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return text


if __name__ == "__main__":
    main()
