"""Label groups A_n and customized task sets C (Eq. 1): seeded splits, Fig. 3 pairs, task names."""

import pytest

from kalib.data import LABEL_NAMES, fig3_pairs, seeded_split
from kalib.data.groups import GARMENTS, RELATED_PAIRS
from kalib.errors import UnknownTaskError
from kalib.labels import resolve_tasks
from kalib.runs.presets import PRESETS, get_preset


@pytest.mark.parametrize("sizes", [(10, 10), (7, 7, 6)])
def test_seeded_split_is_a_fixed_partition(sizes):
    groups = seeded_split(LABEL_NAMES, sizes, seed=0)
    assert [len(g) for g in groups] == list(sizes)
    assert sorted(sum(groups, ())) == sorted(LABEL_NAMES)
    assert groups == seeded_split(LABEL_NAMES, sizes, seed=0)
    assert groups != seeded_split(LABEL_NAMES, sizes, seed=1)


def test_seeded_split_rejects_sizes_that_do_not_add_up():
    with pytest.raises(ValueError, match="do not add up"):
        seeded_split(LABEL_NAMES, (10, 9), seed=0)


@pytest.mark.parametrize("name", sorted(n for n in PRESETS if PRESETS[n].dataset == "embedded"))
def test_presets_name_groups_and_fig3_pairs_across_teachers(name):   # paper presets: test_paper_presets.py
    preset = get_preset(name)
    assert [len(g) for g in preset.labels.groups] == [10, 10] and [len(g) for g in preset.labels.groups3] == [7, 7, 6]
    (a, b), (c, d) = preset.labels.pairs["related"], preset.labels.pairs["unrelated"]
    assert a in preset.labels.groups[0] and b in preset.labels.groups[1]
    assert c in preset.labels.groups[0] and d in preset.labels.groups[1]
    assert (a, b) in RELATED_PAIRS or (b, a) in RELATED_PAIRS
    assert (c in GARMENTS) != (d in GARMENTS)


def test_fig3_pairs_follow_the_split():
    groups = (("coat", "zero"), ("pullover", "one"))
    assert fig3_pairs(groups) == {"unrelated": ("coat", "one"), "related": ("coat", "pullover")}


def test_resolve_tasks_by_name_list_or_string():
    assert resolve_tasks(["bag", "zero"], LABEL_NAMES) == [8, 10]
    assert resolve_tasks("bag, zero", LABEL_NAMES) == [8, 10]


def test_unknown_task_lists_valid_names_and_suggests_closest():
    with pytest.raises(UnknownTaskError, match=r"unknown task 'tshirt'.*Did you mean 't-shirt'.*Valid tasks: t-shirt"):
        resolve_tasks("tshirt", LABEL_NAMES)


@pytest.mark.parametrize("bad, message", [("", "empty"), ("bag,bag", "named twice")])
def test_empty_or_repeated_task_sets_are_rejected(bad, message):
    with pytest.raises(UnknownTaskError, match=message):
        resolve_tasks(bad, LABEL_NAMES)


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="valid presets: smoke, quick"):
        get_preset("huge")
