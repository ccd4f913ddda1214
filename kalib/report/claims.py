"""The paper's claims, checked on every seed of ``seeds.json`` (:mod:`kalib.runs.seeds`) and written as
``claims.md``. Each claim holds or does not on each seed; the numbers behind every verdict are printed."""

from __future__ import annotations

import json
from pathlib import Path

from .results import EQ9_ROW


def _compare(rows: dict, left: str, right: str) -> tuple[bool, str] | None:
    if left not in rows or right not in rows:
        return None
    a, b = rows[left], rows[right]
    return a >= b, f"{a:.1f} vs {b:.1f}"


def _eq9(summary: dict) -> tuple[bool, str]:
    counts = summary["eq9_ap_best"]
    return counts["matching"] == counts["tasks"], f"{counts['matching']} of {counts['tasks']} tasks"


def _fig3(summary: dict) -> tuple[bool, str] | None:
    shared = summary.get("fig3_shared_blocks", {})
    if not {"unrelated", "related"} <= set(shared):
        return None
    return shared["unrelated"] > shared["related"], f"unrelated {shared['unrelated']}, related {shared['related']}"


def _row(rows: dict, prefix: str) -> str | None:
    """The first row whose name starts with ``prefix`` (a side run named by its rule: ``Target-3 (Eq. 9)``)."""
    return next((r for r in rows if r.startswith(prefix)), None)


def claims(seeds: dict) -> list[dict]:
    """Every claim of the paper that the seeds can test: ``{"claim", "source", "per_seed": {seed: {"holds",
    "numbers"}}}``; a seed without the rows a claim needs is left out of that claim. Beside them, numbers
    that say how much rather than whether (``"kind": "number"``, ``per_seed: {seed: {"value", "numbers"}}``):
    the AP regret of Eq. 9's choice."""
    per_seed = seeds["per_seed"]
    rows = next(iter(per_seed.values()))["rows"]
    eq9, three = EQ9_ROW, _row(rows, "Target-3 (")
    tests = [
        (f"{eq9} ≥ Teacher (mAP)", "Tab. 1", lambda s: _compare(s["rows"], eq9, "Teacher")),
        ("Target b4 ≥ Teacher: the whole trunk shared costs nothing", "Tab. 1",
         lambda s: _compare(s["rows"], "Target b4", "Teacher")),
        ("Eq. 9 sends every task to the block where its AP is best", "Fig. 3", _eq9),
        ("The unrelated Fig. 3 pair shares more blocks than the related pair (Eq. 9)", "Fig. 3", _fig3),
        (f"{three} ≥ {eq9}: three teachers are no harder than two", "Tab. 1",
         lambda s: _compare(s["rows"], three, eq9) if three else None),
        (f"{eq9} ≥ KD: amalgamation beats plain multi-teacher distillation", "beyond the paper",
         lambda s: _compare(s["rows"], eq9, "KD")),
    ]
    tolerance = _row(rows, "Target (tolerance")
    if tolerance:
        tests += [(f"{tolerance} ≥ Teacher", "kalib's branch-out", lambda s: _compare(s["rows"], tolerance, "Teacher")),
                  (f"{tolerance} ≥ KD", "kalib's branch-out", lambda s: _compare(s["rows"], tolerance, "KD"))]
    out = []
    for text, source, test in tests:
        verdicts = {}
        for seed, summary in per_seed.items():
            result = test(summary)
            if result is not None:
                verdicts[seed] = {"holds": bool(result[0]), "numbers": result[1]}
        out.append({"claim": text, "source": source, "per_seed": verdicts})
    regret = {seed: {"value": s["eq9_ap_regret"], "numbers": f"{s['eq9_ap_regret']:.2f} AP"}
              for seed, s in per_seed.items() if "eq9_ap_regret" in s}
    if regret:
        out.append({"claim": "AP regret of Eq. 9's choice: AP at the AP-best block minus AP at Eq. 9's block, mean "
                             "over tasks (0 where Eq. 9 picks the AP-best block, as the paper claims)",
                    "source": "Fig. 3", "kind": "number", "per_seed": regret})
    return out


def claims_markdown(checked: list[dict], title: str = "") -> str:
    """``claims.md``: one row per claim, one column per seed (holds / does not hold, with the numbers), and
    on how many seeds it holds."""
    seeds = sorted({s for c in checked for s in c["per_seed"]}, key=int)
    lines = [f"{title}\n" if title else "",
             "| claim | source | " + " | ".join(f"seed {s}" for s in seeds) + " | holds on |",
             "|---|---|" + "---|" * len(seeds) + "---|"]
    for c in checked:
        values = [c["per_seed"].get(s) for s in seeds]
        if c.get("kind") == "number":
            cells = [v["numbers"] if v else "" for v in values]
            mean = sum(v["value"] for v in c["per_seed"].values()) / len(c["per_seed"])
            lines.append(f"| {c['claim']} | {c['source']} | " + " | ".join(cells) + f" | mean {mean:.2f} |")
            continue
        cells = [("holds" if v["holds"] else "**does not hold**") + f" ({v['numbers']})" if v else "" for v in values]
        held = sum(v["holds"] for v in c["per_seed"].values())
        lines.append(f"| {c['claim']} | {c['source']} | " + " | ".join(cells) + f" | {held} of {len(c['per_seed'])} |")
    return "\n".join(lines).lstrip("\n") + "\n"


def seeds_markdown(seeds: dict, title: str = "") -> str:
    """``seeds.md``: mAP of every row on every seed, with mean ± standard deviation."""
    header = "| row | " + " | ".join(f"seed {s}" for s in seeds["seeds"]) + " | mean ± std |"
    lines = [f"{title}\n" if title else "", header, "|---|" + "---|" * (len(seeds["seeds"]) + 1)]
    for name, row in seeds["rows"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v:.1f}" for v in row["values"]) +
                     f" | {row['mean']:.1f} ± {row['std']:.1f} |")
    return "\n".join(lines).lstrip("\n") + "\n"


def write_seed_files(seeds: dict, figures: str | Path, preset_name: str) -> list[Path]:
    """``seeds.json``, ``seeds.md`` and ``claims.md`` in ``figures``."""
    figures = Path(figures)
    figures.mkdir(parents=True, exist_ok=True)
    checked = claims(seeds)
    paths = [figures / "seeds.json", figures / "seeds.md", figures / "claims.md"]
    paths[0].write_text(json.dumps({**seeds, "claims": checked}, indent=1))
    paths[1].write_text(seeds_markdown(seeds, f"Table 1's main rows over seeds {', '.join(map(str, seeds['seeds']))} "
                                              f"(preset {preset_name}, test mAP %)"))
    paths[2].write_text(claims_markdown(checked, f"The paper's claims on every seed (preset {preset_name}; "
                                                 "computed by kalib.report.claims from seeds.json)"))
    return paths
