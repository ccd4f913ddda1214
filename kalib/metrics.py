"""Multi-label evaluation metrics (docs/design.md §3).

The paper (Ye et al., IJCAI 2019, §4) reports "AP and mAP complying with the PASCAL
challenge protocols"; this module implements both PASCAL definitions plus the
top-k protocol used by multi-label work on MS-COCO / NUS-WIDE:

* ``ap_voc07``: VOC2007 11-point interpolated AP.
* ``ap_area``: VOC2010+ AP, the area under the interpolated precision-recall curve.
* ``mean_ap``: mean over classes of either; ``ap_dict``: per-label APs and their mAP, the one
  rule every mAP kalib reports follows; ``mean_of``: that mean over APs already computed.
* ``topk_metrics``: CP, CR, CF1, OP, OR, OF1 of Wang et al. 2016 (CNN-RNN), as in
  megvii-research/ML-GCN ``util.py``.

Conventions shared by every function:

* ``scores`` and ``targets`` have shape ``(n_images, n_classes)``; a 1-D pair is one class.
  Torch tensors are accepted (detached, moved to CPU). Results are numpy, in percent.
* ``targets`` are 1 (positive), 0 (negative) or -1 (ignored, VOC "difficult"): an ignored
  entry is dropped for that class only, as if the image did not exist for it.
* Tied scores: precision and recall are evaluated only at distinct score thresholds (every
  image with a tied score enters together, like ``sklearn.metrics.precision_recall_curve``),
  so the APs do not depend on the row order.
* Bad input (shape mismatch, > 2-D, targets outside {-1, 0, 1}, NaN scores) is a ``ValueError``.

Labels without positives (after dropping -1 entries), the one rule: their AP is undefined, so it is NaN and
is reported as such per label; mAP is the mean over the labels that have positives, and NaN if no label has
any. Where every label has positives this is the plain mean. A plain ``ap.mean()`` would instead turn one
such label into a NaN mAP, which is why every mAP in kalib comes from :func:`mean_ap`, :func:`ap_dict` or
:func:`mean_of`.
"""
import numpy as np

_METRICS = ("voc07", "area")


def _to_numpy(x):
    if hasattr(x, "detach"):  # torch tensor, possibly on GPU / requiring grad
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _validate(scores, targets):
    """Return float64 ``(n_images, n_classes)`` scores and int8 targets, or raise ValueError."""
    try:
        s = _to_numpy(scores).astype(np.float64)
        t = _to_numpy(targets).astype(np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"scores and targets must be numeric arrays: {e}") from None
    if s.shape != t.shape:
        raise ValueError(f"scores shape {s.shape} != targets shape {t.shape}")
    if s.ndim == 1:
        s, t = s[:, None], t[:, None]
    if s.ndim != 2:
        raise ValueError(f"scores/targets must be 1-D or 2-D (n_images, n_classes), got shape {s.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    bad = ~np.isin(t, (-1, 0, 1))
    if bad.any():
        raise ValueError(f"targets must be in {{-1, 0, 1}}, found {np.unique(t[bad])[:5].tolist()}")
    return s, t.astype(np.int8)


def _pr_at_thresholds(score, target):
    """Precision and recall of one class at each distinct score threshold, highest first.

    Entries with target -1 are dropped. Returns ``(precision, recall)`` (recall ends at 1),
    or ``None`` if the class has no positive example.
    """
    keep = target != -1
    score, pos = score[keep], target[keep] == 1
    n_pos = pos.sum()
    if n_pos == 0:
        return None
    order = np.argsort(-score, kind="stable")
    score, pos = score[order], pos[order]
    tp = np.cumsum(pos)
    last_of_tie = np.r_[score[1:] != score[:-1], True]  # close each group of equal scores
    tp = tp[last_of_tie]
    n_pred = np.flatnonzero(last_of_tie) + 1
    return tp / n_pred, tp / n_pos


def _per_class(scores, targets, summarise):
    s, t = _validate(scores, targets)
    out = np.full(s.shape[1], np.nan)
    for c in range(s.shape[1]):
        pr = _pr_at_thresholds(s[:, c], t[:, c])
        if pr is not None:
            out[c] = 100.0 * summarise(*pr)
    return out


def _voc07(precision, recall):
    # t = k/10 exactly (not np.arange(0, 1.1, 0.1), whose 0.30000000000000004 would miss recall 3/10)
    t = np.arange(11) / 10.0
    return np.where(recall[None, :] >= t[:, None], precision[None, :], 0.0).max(axis=1).mean()


def _area(precision, recall):
    interp = np.maximum.accumulate(precision[::-1])[::-1]  # max precision at recall >= r
    return np.sum(np.diff(recall, prepend=0.0) * interp)


def ap_voc07(scores, targets):
    """PASCAL VOC2007 11-point interpolated AP per class, in percent.

    AP = mean over t in {0, 0.1, ..., 1} of max(precision at recall >= t), 0 if none.
    A class with no positive example (after dropping -1 entries) gets NaN.
    """
    return _per_class(scores, targets, _voc07)


def ap_area(scores, targets):
    """PASCAL VOC2010+ AP per class, in percent: area under the interpolated PR curve.

    The precision is first made monotone non-increasing from the right (the value at
    recall r is the max precision at any recall >= r), then integrated as a step function
    over recall. Unlike ``sklearn.metrics.average_precision_score``, which sums
    ``(R_n - R_{n-1}) * P_n`` without interpolation, this is never lower than sklearn's value.
    A class with no positive example (after dropping -1 entries) gets NaN.
    """
    return _per_class(scores, targets, _area)


def mean_of(ap) -> float:
    """mAP of per-label APs (percent) already computed: the mean over the labels whose AP is not NaN (the
    labels with positives); NaN when every AP is NaN or there are none. Values are in label order, so where
    no AP is NaN the result is exactly ``ap.mean()``."""
    ap = np.asarray(ap, dtype=np.float64).ravel()
    defined = ap[~np.isnan(ap)]
    return float(defined.mean()) if defined.size else float("nan")


def average_precision(scores, targets, metric="voc07"):
    """Per-label AP in percent (NaN for a label without positives), ``metric`` in {"voc07", "area"}."""
    if metric not in _METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {_METRICS}")
    return (ap_voc07 if metric == "voc07" else ap_area)(scores, targets)


def mean_ap(scores, targets, metric="voc07"):
    """Mean per-class AP in percent, ``metric`` in {"voc07", "area"}.

    Classes with no positive example have AP NaN and are left out of the mean; if no class
    has a positive example the result is NaN (:func:`mean_of`).
    """
    return mean_of(average_precision(scores, targets, metric))


def ap_dict(names, scores, targets, metric="voc07", digits=None) -> dict:
    """``{name: AP, ..., "mAP": mean}`` in percent for the labels ``names`` (the columns of ``scores`` and
    ``targets``): what kalib reports for a network. A label without positives keeps its NaN AP and is left
    out of the mAP (:func:`mean_of`). ``digits``: round every value to that many decimals."""
    ap = average_precision(scores, targets, metric)
    if len(names) != len(ap):
        raise ValueError(f"{len(names)} label names for {len(ap)} score columns")
    out = {n: float(a) for n, a in zip(names, ap)}
    out["mAP"] = mean_of(ap)
    return out if digits is None else {k: round(v, digits) for k, v in out.items()}


def _f1(p, r):
    if np.isnan(p) or np.isnan(r):
        return float("nan")
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def topk_metrics(scores, targets, k=3, threshold=None):
    """Top-k multi-label metrics CP, CR, CF1, OP, OR, OF1 in percent (Wang et al. 2016).

    Protocol of megvii-research/ML-GCN ``util.py``:

    * For each image the ``k`` highest-scoring labels are predicted positive (all labels if
      ``k >= n_classes``); with ``threshold`` a label must also have score >= threshold.
      Ties among equal scores are broken deterministically: the lower class index wins
      (stable sort on the negated scores).
    * Entries with target -1 are ignored: they count neither as TP, FP nor FN (they can still
      occupy one of the k slots of their image).
    * CP, CR: per-class precision and recall averaged over classes. A class never predicted
      has precision 0 (it still counts in the CP average); CR is averaged over the classes
      with at least one positive (recall is undefined otherwise).
    * OP, OR: precision and recall pooled over all (image, class) predictions.
    * CF1 = harmonic mean of CP and CR (not the mean of per-class F1); OF1 likewise from
      OP and OR. An F1 with P + R = 0 is 0. With no positive at all, CR, OR and the
      F1s are NaN.
    """
    s, t = _validate(scores, targets)
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    k = min(int(k), s.shape[1])
    top = np.argsort(-s, axis=1, kind="stable")[:, :k]
    pred = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(pred, top, True, axis=1)
    if threshold is not None:
        pred &= s >= threshold
    valid = t != -1
    pred &= valid
    pos = t == 1
    n_correct = (pred & pos).sum(axis=0)
    n_pred = pred.sum(axis=0)
    n_pos = pos.sum(axis=0)

    cp = np.mean(n_correct / np.maximum(n_pred, 1))  # never predicted -> precision 0
    has_pos = n_pos > 0
    cr = np.mean(n_correct[has_pos] / n_pos[has_pos]) if has_pos.any() else float("nan")
    op = n_correct.sum() / max(n_pred.sum(), 1)
    orr = n_correct.sum() / n_pos.sum() if n_pos.sum() else float("nan")
    out = {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "OP": op, "OR": orr, "OF1": _f1(op, orr)}
    return {key: float(100.0 * v) for key, v in out.items()}
