"""Label groups A_n of the teachers and customized task sets C (paper Eq. 1, docs/design.md §2).

Like the paper's VOC setting, the 20 labels are split at random, with a fixed seed, into two teachers of
10 labels (Table 1) and three teachers of 7/7/6 (Target-3); the Fig. 3 pairs take one task from each of
two teachers: one visually related pair, one visually unrelated pair.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError

GARMENTS = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")
RELATED_PAIRS = (("shirt", "t-shirt"), ("coat", "pullover"), ("pullover", "shirt"), ("coat", "shirt"),
                 ("sandal", "sneaker"), ("sneaker", "boot"), ("three", "eight"), ("four", "nine"))


def seeded_split(labels: Sequence[str], sizes: Sequence[int], seed: int) -> tuple[tuple[str, ...], ...]:
    """Split ``labels`` into groups of ``sizes`` by a seeded permutation (order inside a group kept)."""
    if sum(sizes) != len(labels):
        raise ConfigError(f"group sizes {list(sizes)} do not add up to {len(labels)} labels")
    order = np.random.default_rng(seed).permutation(len(labels))
    groups, start = [], 0
    for n in sizes:
        groups.append(tuple(labels[i] for i in sorted(order[start:start + n])))
        start += n
    return tuple(groups)


def fig3_pairs(groups: Sequence[Sequence[str]]) -> dict[str, tuple[str, str]]:
    """The two Fig. 3 pairs for a two-teacher split: first related pair across the teachers, and a
    garment of teacher 1 with a digit of teacher 2 (visually unrelated)."""
    g1, g2 = set(groups[0]), set(groups[1])
    related = next(((a, b) if a in g1 else (b, a)) for a, b in RELATED_PAIRS
                   if (a in g1 and b in g2) or (a in g2 and b in g1))
    garment = next(n for n in groups[0] if n in GARMENTS)
    digit = next(n for n in groups[1] if n not in GARMENTS)
    return {"unrelated": (garment, digit), "related": related}


