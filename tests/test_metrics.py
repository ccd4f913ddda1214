"""PASCAL AP / mAP and top-k multi-label metrics (docs/design.md §3; Ye et al. 2019 §4)."""
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve

from kalib.metrics import ap_area, ap_voc07, mean_ap, topk_metrics

# Three classes on 5 images (columns):
#   A: plain ranking P N P N P.
#   B: the two -1 rows (one ranked first) must be dropped; left: P N P.
#   C: no positive (its only "positive-looking" row is -1) -> NaN.
SCORES = np.array([[0.9, 0.9, 0.5],
                   [0.8, 0.8, 0.4],
                   [0.7, 0.7, 0.3],
                   [0.6, 0.6, 0.2],
                   [0.5, 0.95, 0.1]])
TARGETS = np.array([[1, -1, 0],
                    [0, 1, -1],
                    [1, 0, 0],
                    [0, 1, 0],
                    [1, -1, 0]])
# A: (precision, recall) at thresholds = (1,1/3) (1/2,1/3) (2/3,2/3) (1/2,2/3) (3/5,1).
#    interpolated: 1 on (0,1/3], 2/3 on (1/3,2/3], 3/5 on (2/3,1].
#    area  = (1 + 2/3 + 3/5) / 3                    = 34/45  = 75.5556 %
#    voc07 = (4 t's * 1 + 3 t's * 2/3 + 4 t's * 3/5) / 11 = 8.4/11 = 76.3636 %
# B: ranking 0.8 P, 0.7 N, 0.6 P -> (1,1/2) (1/2,1/2) (2/3,1).
#    area  = 1/2 * 1 + 1/2 * 2/3                    = 5/6    = 83.3333 %
#    voc07 = (6 t's (0..0.5) * 1 + 5 t's * 2/3) / 11 = 28/33 = 84.8485 %
#    (-1 taken as negative: N P N P N -> area 50 %; as positive: different again.)
AP_AREA = [100 * 34 / 45, 100 * 5 / 6, np.nan]
AP_VOC07 = [100 * 8.4 / 11, 100 * 28 / 33, np.nan]


def test_ap_hand_computed():
    np.testing.assert_allclose(ap_area(SCORES, TARGETS), AP_AREA, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ap_voc07(SCORES, TARGETS), AP_VOC07, rtol=0, atol=1e-9)


def test_mean_ap_skips_classes_without_positives():
    # area: (34/45 + 5/6) / 2 = 143/180; voc07: (8.4/11 + 28/33) / 2 = 53.2/66
    assert mean_ap(SCORES, TARGETS, metric="area") == pytest.approx(100 * 143 / 180, abs=1e-9)
    assert mean_ap(SCORES, TARGETS) == pytest.approx(100 * 53.2 / 66, abs=1e-9)
    assert np.isnan(mean_ap(SCORES[:, 2:], TARGETS[:, 2:]))


def test_ap_tied_scores_enter_together():
    # 0.5 P, 0.5 N, 0.2 P: the tie gives one point (P=1/2, R=1/2), then (2/3, 1);
    # interpolated precision is 2/3 everywhere -> both APs 66.667 %.
    # Rank-by-row would give P=1 at R=1/2 for this row order (area 83.3 %).
    s, t = np.array([0.5, 0.5, 0.2]), np.array([1, 0, 1])
    for fn in (ap_area, ap_voc07):
        assert fn(s, t) == pytest.approx([200 / 3], abs=1e-9)
        assert fn(s[[1, 0, 2]], t[[1, 0, 2]]) == pytest.approx([200 / 3], abs=1e-9)


def test_voc07_recall_exactly_on_grid():
    # 10 positives: P P P N P P P P P P P. Precision 1 up to recall 0.3, then the max over
    # recall >= 0.4 is 10/11 (last point). voc07 = (4 * 1 + 7 * 10/11) / 11 = 114/121.
    # (Thresholds from np.arange(0, 1.1, 0.1) have 0.30000000000000004 > 3/10 -> 113/121.)
    t = np.array([1, 1, 1, 0] + [1] * 7)
    s = -np.arange(t.size, dtype=float)
    assert ap_voc07(s, t) == pytest.approx([100 * 114 / 121], abs=1e-9)


def _tie_free(rng, n=300, c=8):
    s = rng.random((n, c))
    t = (rng.random((n, c)) < 0.3).astype(int)
    t[rng.random((n, c)) < 0.05] = -1
    return s, t


def test_ap_area_matches_sklearn_interpolated_curve():
    """Checks ap_area = sum_i (R_i - R_{i-1}) * max_{j: R_j >= R_i} P_j, with (P, R) taken from
    sklearn.metrics.precision_recall_curve (distinct thresholds, so ties included), after
    dropping -1 rows; the interpolation is written out as a loop here."""
    rng = np.random.default_rng(0)
    s = rng.integers(0, 6, (120, 6)) / 5.0  # heavy ties
    t = (rng.random((120, 6)) < 0.4).astype(int)
    t[rng.random((120, 6)) < 0.1] = -1
    expected = []
    for c in range(s.shape[1]):
        keep = t[:, c] != -1
        p, r, _ = precision_recall_curve(t[keep, c], s[keep, c])
        p, r = p[:-1][::-1], r[:-1][::-1]  # drop sklearn's (P=1, R=0) end point; high threshold first
        ap, prev = 0.0, 0.0
        for i in range(len(r)):
            ap += (r[i] - prev) * max(p[j] for j in range(len(r)) if r[j] >= r[i])
            prev = r[i]
        expected.append(100 * ap)
    np.testing.assert_allclose(ap_area(s, t), expected, rtol=0, atol=1e-9)


def test_ap_area_equals_sklearn_ap_when_precision_is_monotone():
    """sklearn's average_precision_score is the NON-interpolated sum_n (R_n - R_{n-1}) P_n;
    ap_area uses max_{m >= n} P_m instead of P_n. They coincide iff the precision at every
    recall step is already >= all later precisions. On tie-free data precision only drops
    between positives, so it suffices that the precision at successive positives is
    non-increasing: k / (k + S_{k-1}) with S the cumulative negatives, which holds whenever
    the number of negatives before each positive (gap) is non-decreasing. We build such
    rankings (random, tie-free, rows shuffled), assert that precondition, and compare."""
    rng = np.random.default_rng(1)
    cols_s, cols_t = [], []
    n = 400
    for _ in range(5):
        n_pos = int(rng.integers(5, 20))
        gaps = np.sort(rng.integers(0, 8, n_pos))
        ranked = np.concatenate([np.r_[np.zeros(g, int), 1] for g in gaps])
        ranked = np.r_[ranked, np.zeros(n - ranked.size, int)]
        prec_at_pos = (np.cumsum(ranked) / np.arange(1, n + 1))[ranked == 1]
        assert np.all(np.diff(prec_at_pos) <= 1e-15)  # precondition
        score = np.sort(rng.random(n))[::-1]
        perm = rng.permutation(n)
        cols_s.append(score[perm])
        cols_t.append(ranked[perm])
    s, t = np.stack(cols_s, 1), np.stack(cols_t, 1)
    sk = [100 * average_precision_score(t[:, c], s[:, c]) for c in range(s.shape[1])]
    np.testing.assert_allclose(ap_area(s, t), sk, rtol=0, atol=1e-6)


def test_ap_area_is_interpolated_unlike_sklearn():
    # N P P: precision at the positives 1/2, 2/3 (rising).
    # sklearn: 1/2 * 1/2 + 1/2 * 2/3 = 7/12 = 58.33 %; interpolated: 2/3 * 1 = 66.67 %.
    s, t = np.array([0.9, 0.8, 0.7]), np.array([0, 1, 1])
    assert 100 * average_precision_score(t, s) == pytest.approx(700 / 12)
    assert ap_area(s, t) == pytest.approx([200 / 3], abs=1e-9)


def test_ap_voc07_matches_devkit_loop():
    """Reference in the style of VOCdevkit VOCevalcls.m (its gt: 1 pos, -1 neg, 0 difficult)."""
    s, t = _tie_free(np.random.default_rng(2))
    expected = []
    for c in range(s.shape[1]):
        gt = np.select([t[:, c] == 1, t[:, c] == 0], [1, -1], 0)
        si = np.argsort(-s[:, c])
        tp, fp = np.cumsum(gt[si] > 0), np.cumsum(gt[si] < 0)
        rec, prec = tp / np.sum(gt > 0), tp / (fp + tp)
        ap = 0.0
        for k in range(11):
            th = k / 10  # devkit's 0:0.1:1, exact grid values
            p = prec[rec >= th]
            ap += (p.max() if p.size else 0.0) / 11
        expected.append(100 * ap)
    np.testing.assert_allclose(ap_voc07(s, t), expected, rtol=0, atol=1e-9)


def test_row_permutation_invariance_with_ties():
    rng = np.random.default_rng(3)
    s = rng.integers(0, 4, (200, 10)) / 3.0  # 4 distinct values: heavy ties
    t = (rng.random((200, 10)) < 0.3).astype(int)
    t[rng.random((200, 10)) < 0.1] = -1
    perm = rng.permutation(200)
    for fn in (ap_area, ap_voc07):
        np.testing.assert_allclose(fn(s[perm], t[perm]), fn(s, t), rtol=0, atol=1e-9)
    for kw in ({"k": 3}, {"k": 2, "threshold": 0.5}):
        a, b = topk_metrics(s, t, **kw), topk_metrics(s[perm], t[perm], **kw)
        assert a == pytest.approx(b, abs=1e-9)


# Top-k example, k = 2 (predicted sets): img0 {0,1}, img1 {1,2}, img2 {3,0}, img3 {2,1}.
TK_S = np.array([[0.9, 0.8, 0.1, 0.2],
                 [0.1, 0.7, 0.6, 0.3],
                 [0.6, 0.2, 0.3, 0.9],
                 [0.3, 0.4, 0.8, 0.1]])
TK_T = np.array([[1, 0, 0, 1],
                 [0, 1, -1, 0],
                 [1, 0, 0, 0],
                 [0, 1, 1, 0]])


def test_topk_hand_computed():
    # class 0: TP img0, img2          -> Nc=2 Np=2 Ng=2: P=1   R=1
    # class 1: FP img0, TP img1, img3 -> Nc=2 Np=3 Ng=2: P=2/3 R=1
    # class 2: img1 is -1 (ignored), TP img3 -> Nc=1 Np=1 Ng=1: P=1 R=1 (P=1/2 if -1 were a negative)
    # class 3: FP img2, FN img0       -> Nc=0 Np=1 Ng=1: P=0   R=0
    # CP = (1 + 2/3 + 1 + 0)/4 = 2/3; CR = 3/4; CF1 = 2 CP CR/(CP + CR) = 12/17
    #   (mean of per-class F1 would be (1 + .8 + 1 + 0)/4 = .7)
    # OP = 5/7; OR = 5/6; OF1 = 10/13
    m = topk_metrics(TK_S, TK_T, k=2)
    exp = {"CP": 2 / 3, "CR": 3 / 4, "CF1": 12 / 17, "OP": 5 / 7, "OR": 5 / 6, "OF1": 10 / 13}
    assert m == pytest.approx({k: 100 * v for k, v in exp.items()}, abs=1e-9)


def test_topk_threshold():
    # k=2 and score >= 0.65 keeps: img0 {0,1}, img1 {1}, img2 {3}, img3 {2}.
    # class 0: Nc=1 Np=1 Ng=2; class 1: Nc=1 Np=2 Ng=2; class 2: 1 1 1; class 3: 0 1 1.
    # CP = (1 + 1/2 + 1 + 0)/4 = 5/8; CR = (1/2 + 1/2 + 1 + 0)/4 = 1/2; CF1 = 5/9
    # OP = 3/5; OR = 3/6; OF1 = 6/11
    m = topk_metrics(TK_S, TK_T, k=2, threshold=0.65)
    exp = {"CP": 5 / 8, "CR": 1 / 2, "CF1": 5 / 9, "OP": 3 / 5, "OR": 1 / 2, "OF1": 6 / 11}
    assert m == pytest.approx({k: 100 * v for k, v in exp.items()}, abs=1e-9)


def test_topk_never_predicted_class_has_precision_zero():
    # k=1 predicts class 0 (img0, TP) and class 1 (img1, TP); class 2 is never predicted.
    # CP = (1 + 1 + 0)/3 (not 100 from skipping it, not NaN); CR = (1 + 1 + 0)/3; OP = 1; OR = 2/3.
    s = np.array([[0.9, 0.5, 0.1], [0.2, 0.8, 0.3]])
    t = np.array([[1, 0, 1], [0, 1, 0]])
    m = topk_metrics(s, t, k=1)
    assert m["CP"] == pytest.approx(200 / 3) and m["CR"] == pytest.approx(200 / 3)
    assert m["OP"] == pytest.approx(100) and m["OR"] == pytest.approx(200 / 3)


def test_topk_ties_lower_class_index_wins():
    s = np.array([[0.5, 0.5, 0.5], [0.2, 0.2, 0.1]])
    t = np.array([[1, 0, 0], [1, 0, 0]])
    assert topk_metrics(s, t, k=1)["OP"] == 100.0  # class 0 chosen on both rows
    assert topk_metrics(s[:, ::-1], t[:, ::-1], k=1)["OP"] == 0.0  # now class 0 is the true one


class _FakeTensor:
    """Stands in for a (GPU, requires_grad) torch tensor: importing torch here costs seconds."""

    def __init__(self, a):
        self.a = a

    def detach(self):
        return self

    def cpu(self):
        return self

    def numpy(self):
        return self.a

    def __array__(self, *args, **kwargs):
        raise TypeError("must go through .detach().cpu().numpy()")


def test_tensor_and_1d_input():
    np.testing.assert_allclose(ap_area(_FakeTensor(SCORES), _FakeTensor(TARGETS)), AP_AREA, atol=1e-9)
    assert ap_voc07(SCORES[:, 0], TARGETS[:, 0]).shape == (1,)
    assert ap_voc07(SCORES[:, 0], TARGETS[:, 0])[0] == pytest.approx(AP_VOC07[0])


@pytest.mark.parametrize("s, t, match", [
    (np.zeros((3, 2)), np.zeros((3, 3)), "shape"),
    (np.zeros((2, 2, 2)), np.zeros((2, 2, 2)), "2-D"),
    (np.zeros((3, 2)), np.full((3, 2), 2), "targets"),
    (np.zeros((3, 2)), np.full((3, 2), 0.5), "targets"),
    (np.array([[np.nan, 0.0]]), np.array([[1, 0]]), "NaN"),
])
def test_bad_input_raises(s, t, match):
    for fn in (ap_area, ap_voc07, topk_metrics, mean_ap):
        with pytest.raises(ValueError, match=match):
            fn(s, t)


def test_bad_metric_and_k_raise():
    with pytest.raises(ValueError, match="unknown metric"):
        mean_ap(SCORES, TARGETS, metric="auc")
    with pytest.raises(ValueError, match="k must be"):
        topk_metrics(TK_S, TK_T, k=0)


# ------------------------------------------------------------------- the one mAP rule (labels without positives)

def test_ap_dict_reports_a_label_without_positives_as_nan_and_leaves_it_out_of_the_map():
    from kalib.metrics import ap_dict
    ap = ap_dict(["a", "b", "c"], SCORES, TARGETS)
    assert list(ap) == ["a", "b", "c", "mAP"]
    assert ap["a"] == pytest.approx(100 * 8.4 / 11, abs=1e-9) and ap["b"] == pytest.approx(100 * 28 / 33, abs=1e-9)
    assert np.isnan(ap["c"])                                            # no positive: NaN, reported as such
    assert ap["mAP"] == pytest.approx(100 * 53.2 / 66, abs=1e-9)       # (8.4/11 + 28/33) / 2, not NaN
    area = ap_dict(["a", "b", "c"], SCORES, TARGETS, metric="area", digits=2)
    assert area["a"] == 75.56 and area["b"] == 83.33 and area["mAP"] == 79.44   # 143/180 = 79.444 %
    assert np.isnan(ap_dict(["c"], SCORES[:, 2:], TARGETS[:, 2:])["mAP"])        # no label has any: NaN
    with pytest.raises(ValueError, match="2 label names for 3"):
        ap_dict(["a", "b"], SCORES, TARGETS)


def test_mean_of_is_the_plain_mean_where_every_label_has_positives():
    from kalib.metrics import mean_of
    ap = np.array([76.0, 84.5, 91.25])
    assert mean_of(ap) == float(ap.mean()) == pytest.approx(251.75 / 3)
    assert mean_of([50.0, np.nan, 70.0]) == 60.0
    assert np.isnan(mean_of([np.nan, np.nan])) and np.isnan(mean_of([]))
    both = SCORES[:, :2], TARGETS[:, :2]                                  # labels a and b: both have positives
    assert mean_ap(*both) == float(ap_voc07(*both).mean())


def test_every_caller_uses_the_one_rule(smoke_bench):
    """teacher evaluation, the run record, the tables and the chance level: a label without positives is NaN
    and left out of the mAP."""
    import torch

    from kalib.method.teachers import evaluate
    from kalib.models import build_backbone
    from kalib.report.notebook import chance_map
    from kalib.report.results import _ap_row
    from kalib.runs.amalgamation import _ap_dict
    model = build_backbone("resnet18_narrow", 2, width=8)
    labels = smoke_bench.test_labels[:, [4, 15]].clone()
    labels[:, 1] = 0                                                      # label 'five' without positives
    ap = evaluate(model, smoke_bench.test_images[:64], labels[:64], ["coat", "five"])
    assert np.isnan(ap["five"]) and ap["mAP"] == ap["coat"]
    rec = _ap_dict(["a", "b", "c"], torch.tensor(SCORES), torch.tensor(TARGETS))
    assert np.isnan(rec["c"]) and rec["mAP"] == round(100 * 53.2 / 66, 3)
    assert _ap_row({"a": 50.0, "b": float("nan"), "c": 70.0}, ["a", "b", "c"])["mAP"] == 60.0
    assert not np.isnan(chance_map(TARGETS))
