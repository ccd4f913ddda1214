"""Amalgamate, distil, merge, or keep the teachers? The crossover study, version 2 (``kalib study crossover``;
docs/design.md §9).

Every arm sees the same N unlabelled pool images of a seed; networks are compared by test mAP beside their
parameters, inference MACs and training MACs; KD trains at an amalgamation arm's training MACs; every setting
is chosen on the validation split with the first seed; differences are paired by seed, with Holm-adjusted
intervals and one word each. :mod:`~kalib.runs.crossover.protocol` fixes the protocol,
:mod:`~kalib.runs.crossover.arms` runs the arms, :mod:`~kalib.runs.crossover.records` keeps one JSON record per
finished run (committed; a killed study, or one started on another machine, re-uses them all), and
:mod:`~kalib.runs.crossover.study` runs the jobs and writes the summary (:mod:`kalib.report.crossover`).
"""

from .protocol import ARMS, CODE_PATH, PROTOCOL_COMMIT, STUDIES, Cell, Grids, Study
from .records import Context, finished_or_run, grid_step, load_context, records_of, tuned
from .study import jobs, load_contexts, run_study, summarise, write_summary

__all__ = ["ARMS", "CODE_PATH", "PROTOCOL_COMMIT", "STUDIES", "Cell", "Context", "Grids", "Study", "finished_or_run",
           "grid_step", "jobs", "load_context", "load_contexts", "records_of", "run_study", "summarise", "tuned",
           "write_summary"]
