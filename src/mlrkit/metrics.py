"""Metrics of multi-label recognition: pure functions of ``scores (N, C)`` and ``targets (N, C)``.

Conventions shared by every function here:

* ``targets`` follow :mod:`mlrkit.labels`: ``1`` positive, ``-1`` negative, ``0`` unknown.
  An entry whose target is ``0`` is **ignored**: it is neither a true nor a false positive,
  it does not count as a positive to be found, and it does not occupy a rank in AP (it is
  removed from the ranking, which gives the same AP as the VOC devkit's "difficult" handling).
* 0/1 targets (scikit-learn's convention) would read as "positives and unknowns, no
  negatives" and give meaningless numbers (mAP 1.0 for random scores). So targets that hold
  a ``0`` but not a single ``-1`` are refused with ``ValueError`` unless the caller says what
  0 means: ``zero_means="negative"`` (0 is read as -1, scikit-learn style) or
  ``zero_means="unknown"`` (0 ignored as above; for partial labels that happen to have no
  negative). Targets of only ``1`` and ``-1``, or only ``1``, need no such word.
* Every metric value is a **fraction in [0, 1]** (not percent). ``EvaluationReport.format_table``
  is the one place that prints them multiplied by 100, with ``(%)`` in the header.
* Scores may be torch tensors or numpy arrays. Ranking metrics (AP, top-k) take any real
  scores (logits or probabilities rank the same, but float32 probabilities saturate to exact
  ties at 0 or 1 for large |logit|, so pass logits for ranking when you have them).
  Threshold metrics say which they take.
* Bad input (shape mismatch, NaN/inf scores, targets outside {1, 0, -1}, empty input) raises
  ``ValueError`` with the row/column and what to do; no reported metric is ever a silent NaN.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from .labels import validate_targets

__all__ = [
    "AP_MODES",
    "EvaluationReport",
    "PointingReport",
    "SPMLReport",
    "ZeroShotReport",
    "average_precision",
    "centre_prior_map",
    "choose_thresholds",
    "evaluate",
    "mean_average_precision",
    "pointing_baselines",
    "pointing_game",
    "spml_metrics",
    "threshold_metrics",
    "topk_prf",
    "zero_shot_metrics",
]

APMode = Literal["sklearn", "voc", "voc11"]
AP_MODES: tuple[str, ...] = ("sklearn", "voc", "voc11")
Empty = Literal["nan", "zero"]
ZeroMeans = Literal["unknown", "negative"]

# VOC2007 11-point recall levels, computed as k * 0.1 in float64 exactly like the devkit's
# ``np.arange(0., 1.1, 0.1)`` (so 0.30000000000000004, not 0.3).
# threads for large AP computations (blocks of classes)
_WORKERS = max(1, min(4, os.cpu_count() or 1))

_VOC11_LEVELS = np.arange(11, dtype=np.float64) * 0.1


# ----------------------------------------------------------------------------- input checks
# Internally everything runs on numpy views of CPU data (zero-copy from torch): on CPU numpy's
# sorts, searches and reductions are several times faster than torch's for these shapes.
def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return x.numpy()
    return np.asarray(x)


def _as_scores(scores: Any, name: str = "scores") -> np.ndarray:
    s = _to_numpy(scores)
    if s.ndim != 2:
        raise ValueError(f"{name}: expected shape (N, C), got {tuple(s.shape)}")
    if s.size == 0:
        raise ValueError(f"{name}: empty input of shape {tuple(s.shape)}; need at least one "
                         "image and one class")
    if s.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected real-valued scores, got dtype {s.dtype}")
    if s.dtype.kind in "iu":
        s = s.astype(np.float64)
    elif s.dtype == np.float16 or not s.flags.writeable:  # torch views need writable memory
        s = s.astype(np.float32 if s.dtype == np.float16 else s.dtype)
    finite = np.isfinite(s)
    if not finite.all():
        r, c = np.argwhere(~finite)[0].tolist()
        raise ValueError(f"{name}: non-finite value {s[r, c]} at row {r}, column {c}; "
                         "scores must be finite (check the model output for NaN/inf)")
    return s


def _check_pair(scores: Any, targets: Any, zero_means: ZeroMeans | None = None,
                ) -> tuple[np.ndarray, np.ndarray]:
    s = _as_scores(scores)
    t = _to_numpy(targets)
    lo: int | None = None
    if t.dtype == np.int8 and t.ndim == 2 and t.size > 0:
        lo = int(t.min())
        if lo < -1 or int(t.max()) > 1:  # int8 in [-1, 1] is exactly {-1, 0, 1}
            validate_targets(torch.from_numpy(t))
    else:
        t = validate_targets(torch.as_tensor(t)).numpy()
    if t.shape != s.shape:
        raise ValueError(f"scores have shape {tuple(s.shape)} but targets have shape "
                         f"{tuple(t.shape)}; both must be (N, C) for the same images and classes")
    return s, _read_zeros(t, int(t.min()) if lo is None else lo, zero_means)


def _read_zeros(t: np.ndarray, lo: int, zero_means: ZeroMeans | None) -> np.ndarray:
    """Apply ``zero_means`` to valid int8 targets whose smallest value is ``lo``.

    ``lo == 0`` means: some 0 and no -1, the look of 0/1 labels; refused unless
    ``zero_means`` says how to read the 0s.
    """
    if zero_means is None:
        if lo == 0:
            raise ValueError(
                "targets: they contain 0 but no -1, so they look like 0/1 labels; mlrkit reads "
                "1 / -1 / 0 as positive / negative / unknown, and 0/1 labels would leave no "
                "negatives to score. Pass zero_means='negative' to read 0 as negative "
                "(scikit-learn style), zero_means='unknown' if the 0s really are unknown, or "
                "use -1 for negatives")
        return t
    if zero_means == "unknown":
        return t
    if zero_means == "negative":
        return np.where(t == 0, np.int8(-1), t) if lo <= 0 else t
    raise ValueError(f"zero_means must be 'unknown', 'negative' or None, got {zero_means!r}")


def _check_probs(s: np.ndarray) -> None:
    lo, hi = float(s.min()), float(s.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"scores: values in [{lo:.4g}, {hi:.4g}] are not probabilities; pass "
                         "scores_are='logits' (or apply a sigmoid first)")


def _check_threshold(threshold: float) -> None:
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be a probability strictly between 0 and 1, "
                         f"got {threshold}")


def _cut(s: np.ndarray, threshold: Any, scores_are: str) -> Any:
    """The score value at which a label counts as predicted (``s >= cut``): a number, or a
    (C,) array for one probability threshold per class."""
    thr = np.asarray(threshold, dtype=np.float64)
    if thr.ndim == 0:
        _check_threshold(float(thr))
        threshold = float(thr)
    else:
        if thr.shape != (s.shape[1],):
            raise ValueError(f"threshold: expected one number or one per class "
                             f"({s.shape[1]}), got shape {thr.shape}")
        bad = np.flatnonzero(~((thr > 0) & (thr < 1)))
        if bad.size:
            raise ValueError(f"threshold: class {int(bad[0])} has {thr[bad[0]]}; every "
                             "threshold must lie strictly between 0 and 1")
        threshold = thr
    if scores_are == "probs":
        _check_probs(s)
        return threshold
    if scores_are == "logits":
        # sigmoid(x) >= t  <=>  x >= log(t / (1 - t)); exact for t = 0.5 (ML-GCN's ``x >= 0``)
        return np.log(threshold / (1.0 - threshold)) if thr.ndim else math.log(
            threshold / (1.0 - threshold))
    raise ValueError(f"scores_are must be 'probs' or 'logits', got {scores_are!r}")


def choose_thresholds(scores: Any, targets: Any, default: float = 0.5,
                      scores_are: Literal["probs", "logits"] = "probs",
                      zero_means: ZeroMeans | None = None) -> np.ndarray:
    """One probability threshold per class (C,), each maximizing that class's F1 on
    ``scores`` / ``targets`` (meant for a validation split, never the split reported).

    For class c the candidates are its distinct known scores ``v`` (predict ``s >= v``); the
    chosen threshold lies halfway between the best ``v`` and the next lower known score, so
    it separates the same validation images but sits between them. Classes without a
    known positive, or whose best F1 is 0, keep ``default``.
    """
    s, t = _check_pair(scores, targets, zero_means)
    p = s.astype(np.float64)
    if scores_are == "logits":
        p = 1.0 / (1.0 + np.exp(-p))
    elif scores_are == "probs":
        _check_probs(s)
    else:
        raise ValueError(f"scores_are must be 'probs' or 'logits', got {scores_are!r}")
    c = p.shape[1]
    known = (t != 0).T  # (C, N)
    sc = np.where(known, p.T, -np.inf)
    order = np.argsort(-sc, axis=1, kind="stable")
    ss = np.take_along_axis(sc, order, axis=1)  # descending, unknown (-inf) last
    pos = np.take_along_axis((t == 1).T, order, axis=1)
    tp = np.cumsum(pos, axis=1)
    npred = np.arange(1, p.shape[0] + 1)[None, :]
    npos = pos.sum(1, keepdims=True)
    nxt = np.concatenate([ss[:, 1:], np.full((c, 1), -np.inf)], axis=1)
    end = (ss != nxt) & np.isfinite(ss)  # the last row of each group of tied known scores
    f1 = np.where(end, 2.0 * tp / (npred + np.maximum(npos, 1)), -1.0)
    best = f1.argmax(axis=1)
    rows = np.arange(c)
    v, lower = ss[rows, best], nxt[rows, best]
    thr = np.where(np.isfinite(lower), (v + lower) / 2.0, v / 2.0)
    ok = (npos[:, 0] > 0) & (f1[rows, best] > 0)
    return np.clip(np.where(ok, thr, default), 1e-6, 1.0 - 1e-6)


def _predicted(s: np.ndarray, threshold: Any, scores_are: str) -> np.ndarray:
    """Boolean (N, C): score at or above the probability threshold."""
    return s >= _cut(s, threshold, scores_are)


# ----------------------------------------------------------------------- average precision
def _transpose(a: np.ndarray, rows: int = 256) -> np.ndarray:
    """(N, C) -> contiguous (C, N), copied in blocks of ``rows`` rows that stay in cache
    (2-3x faster here than one strided copy by numpy or torch)."""
    n, c = a.shape
    out = np.empty((c, n), dtype=a.dtype)
    for i in range(0, n, rows):
        out[:, i:i + rows] = a[i:i + rows].T
    return out


def _count(mask: np.ndarray, axis: int) -> np.ndarray:
    """Number of True entries along ``axis`` (int64)."""
    return mask.view(np.uint8).sum(axis=axis, dtype=np.int64)


def _searchsorted(rows: np.ndarray, values: np.ndarray, side: str) -> np.ndarray:
    """Row-wise ``searchsorted`` (C, M) x (C, K) -> (C, K), fastest for ascending ``values``.

    One numpy call per row, each vectorized over the row's K values: with ascending values
    numpy narrows every search from the previous one, which measured 1.5x faster than torch's
    batched ``searchsorted`` on 40 x 40,504 rows, and it does not start OpenMP teams inside
    the worker threads (benchmarks/bench_metrics.py).
    """
    out = np.empty(values.shape, dtype=np.int64)
    for r in range(rows.shape[0]):
        out[r] = np.searchsorted(rows[r], values[r], side=side)
    return out


_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    """The module's worker threads, made once and reused by every call."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(_WORKERS, thread_name_prefix="mlrkit-metrics")
    return _POOL


def _forget_pool() -> None:
    # a forked child has none of the parent's threads: it must make its own pool
    global _POOL
    _POOL = None


os.register_at_fork(after_in_child=_forget_pool)


def _class_blocks(npos: np.ndarray, workers: int) -> list[np.ndarray]:
    """Class indices cut into blocks of similar positive counts, at least ``workers`` of them.

    A block pads every class to its largest positive count, so classes are grouped by
    ``floor(log_1.5(npos / 64))``: within a block counts differ by at most 1.5x (or are all
    below 64), and COCO's "person" does not pad 79 other classes to its ~18k positives.
    """
    level = np.floor(np.log(np.maximum(npos, 64) / 64.0) / math.log(1.5)).astype(np.int64)
    order = np.argsort(level, kind="stable")
    bounds = np.flatnonzero(np.diff(level[order])) + 1
    blocks = np.split(order, bounds)
    while len(blocks) < workers and max(len(b) for b in blocks) > 1:
        i = max(range(len(blocks)), key=lambda k: len(blocks[k]))
        half = len(blocks[i]) // 2
        blocks[i:i + 1] = [blocks[i][:half], blocks[i][half:]]
    return blocks


def _class_stats(s: np.ndarray, t: np.ndarray, mode: str, cut: float | None = None,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Per-class AP (C,), positives (C,) and, when ``cut`` is given, correct predictions and
    predictions (C,) of ``score >= cut``, from image-major (N, C) scores and targets.

    The inputs are copied once to class-major (C, N) rows. Classes are independent: large
    inputs are cut into blocks (:func:`_class_blocks`) that run on threads (numpy's copies,
    sorts, searches and reductions release the GIL); each block is vectorized over positions.
    """
    c = s.shape[1]
    if s.size < 1 << 20 or c == 1:
        return _ap_block(_transpose(s), _transpose(t), mode, cut)
    pool = _pool()
    sc_job = pool.submit(_transpose, s)
    tc = _transpose(t)
    npos = _count(tc == 1, axis=1)
    sc = sc_job.result()
    blocks = _class_blocks(npos, _WORKERS)
    parts = list(pool.map(lambda idx: _ap_block(*_rows(sc, tc, idx), mode, cut, npos[idx]),
                          blocks))
    order = np.concatenate(blocks)
    out = []
    for k in range(4):
        if parts[0][k] is None:
            out.append(None)
            continue
        v = np.empty(c, dtype=parts[0][k].dtype)
        v[order] = np.concatenate([p[k] for p in parts])
        out.append(v)
    return out[0], out[1], out[2], out[3]


def _rows(sc: np.ndarray, tc: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``idx`` of both arrays: views when ``idx`` is a run of consecutive rows."""
    if (np.diff(idx) == 1).all():
        return sc[idx[0]:idx[-1] + 1], tc[idx[0]:idx[-1] + 1]
    return sc[idx], tc[idx]


def _ap_block(sc: np.ndarray, tc: np.ndarray, mode: str, cut: float | None = None,
              npos: np.ndarray | None = None,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """AP, positives and (with ``cut``) correct predictions and predictions for a (C, N)
    block of class rows.

    Two sorts per row: the positive scores, and the known scores (unknown entries are removed).
    At a positive with score v every threshold statistic is a count, ``TP(v) = #{positives
    >= v}`` and ``TP(v) + FP(v) = #{known >= v}`` (``>=`` makes tied scores one threshold, as
    in scikit-learn); the second comes from binary searches in the sorted rows, and so do the counts
    at ``cut`` (so a prediction on an unknown entry, sent to -inf, counts nowhere).
    """
    c, n = sc.shape
    pos = tc == 1
    if npos is None:  # positives per row, when the caller has not counted them
        npos = _count(pos, axis=1)
    m = int(npos.max()) if c else 0
    neg_inf = sc.dtype.type(-np.inf)
    if m == 0:
        if cut is None:
            return np.zeros(c), npos, None, None
        pred = (sc >= cut) & (tc != 0)
        return np.zeros(c), npos, np.zeros(c, dtype=np.int64), _count(pred, axis=1)
    # positives of each row, gathered into a (C, m) array (-inf padding) and sorted ascending:
    # the real ones end up in the last npos columns
    offsets = np.cumsum(npos) - npos
    within = np.arange(int(npos.sum())) - np.repeat(offsets, npos)
    ps = np.full((c, m), neg_inf, dtype=sc.dtype)
    ps[np.repeat(np.arange(c), npos), within] = sc[pos]
    ps.sort(axis=1)
    # known scores sorted ascending (unknown entries sent to -inf, below every real score)
    known = sc if not (tc == 0).any() else np.where(tc != 0, sc, neg_inf)
    ks = np.sort(known, axis=1)
    real = np.arange(m)[None, :] >= (m - npos)[:, None]  # (C, m): not padding
    # TP(v) = m - (first column holding v): the start of v's tie group, by a running max
    starts = np.ones(ps.shape, dtype=bool)
    starts[:, 1:] = ps[:, 1:] != ps[:, :-1]
    first = np.maximum.accumulate(np.where(starts, np.arange(m), 0), axis=1)
    tp = (m - first).astype(np.float64)
    n_at = (n - _searchsorted(ks, ps, "left")).astype(np.float64)  # TP + FP at v
    if cut is None:
        nc = npred = None
    else:  # counts at the threshold: the same searches, one value per row
        at = np.full((c, 1), cut, dtype=sc.dtype)
        nc = m - _searchsorted(ps, at, "left")[:, 0]
        npred = n - _searchsorted(ks, at, "left")[:, 0]
    ap = _ap_from_counts(tp, n_at, real, npos, mode)
    return ap, npos, nc, npred


def _ap_from_counts(tp: np.ndarray, n_at: np.ndarray, real: np.ndarray, npos: np.ndarray,
                    mode: str) -> np.ndarray:
    """AP (C,) from TP and TP + FP at each positive, (C, m) rows ascending in score."""
    c = tp.shape[0]
    prec = np.where(real, tp / np.maximum(n_at, 1.0), 0.0)
    npos_f = np.maximum(npos, 1).astype(np.float64)
    if mode == "sklearn":
        # AP = sum_k (R_k - R_{k-1}) P_k: each positive adds P at its threshold / #positives
        return prec.sum(1) / npos_f
    # precision envelope: max precision at this or any lower threshold (higher recall);
    # lower scores sit at lower column indices, so it is a running max along the columns
    envelope = np.maximum.accumulate(prec, axis=1)
    if mode == "voc":
        # VOC devkit VOCap: sum over recall steps of (r_i - r_{i-1}) * envelope_i
        return np.where(real, envelope, 0.0).sum(1) / npos_f
    # VOC2007 11-point: mean over t of max_{R >= t} P; R is non-increasing along the columns
    # (padding gets R = inf), so the points with R >= t are a prefix of the row
    recall = np.where(real, tp / npos_f[:, None], np.inf)
    levels = np.tile(-_VOC11_LEVELS, (c, 1))
    count = _searchsorted(np.ascontiguousarray(-recall), levels, "right")
    p_at = np.take_along_axis(envelope, np.maximum(count - 1, 0), axis=1)
    return np.where(count > 0, p_at, 0.0).sum(1) / 11.0


def _average_precision(s: np.ndarray, t: np.ndarray, mode: str, empty: str) -> np.ndarray:
    if mode not in AP_MODES:
        raise ValueError(f"unknown AP mode {mode!r}; choose one of {', '.join(AP_MODES)}")
    if empty not in ("nan", "zero"):
        raise ValueError(f"empty must be 'nan' or 'zero', got {empty!r}")
    ap, npos, _, _ = _class_stats(s, t, mode)
    return np.where(npos > 0, ap, math.nan if empty == "nan" else 0.0)


def average_precision(scores: Any, targets: Any, mode: APMode = "sklearn",
                      empty: Empty = "nan", zero_means: ZeroMeans | None = None,
                      ) -> torch.Tensor:
    """Per-class average precision, a float64 tensor (C,) of fractions in [0, 1].

    ``scores``: any real scores (logits or probabilities), higher = more likely present.
    ``targets``: 1 / -1 / 0; entries with 0 are removed from that class's ranking.

    Modes (all use one point per distinct score, so tied scores form one threshold):

    * ``"sklearn"`` — non-interpolated AP, ``AP = sum_k (R_k - R_{k-1}) P_k`` over the
      thresholds; equals ``sklearn.metrics.average_precision_score`` (ML-GCN / ASL evaluation).
    * ``"voc"`` — all-point AP under the precision envelope ``P~(r) = max_{r' >= r} P(r')``
      (VOC2010+ devkit ``VOCap``; SSGRL / Query2Label evaluation).
    * ``"voc11"`` — VOC2007 11-point AP: mean over ``t in {0, 0.1, ..., 1}`` of
      ``max_{R >= t} P`` (0 when no point reaches ``t``).

    Classes without a positive target are NaN (``empty="nan"``) or 0 (``empty="zero"``).
    ``zero_means``: how to read 0 targets when there is no -1 (module notes; None refuses).
    Two sorts per class and binary searches in the sorted rows; see :func:`_ap_block`.
    """
    s, t = _check_pair(scores, targets, zero_means)
    return torch.from_numpy(_average_precision(s, t, mode, empty))


def mean_average_precision(scores: Any, targets: Any, mode: APMode = "sklearn",
                           empty: Empty = "nan", zero_means: ZeroMeans | None = None,
                           ) -> float:
    """mAP (fraction in [0, 1]): mean of :func:`average_precision` over the classes with at
    least one positive (``empty="nan"``), or over all classes with empty ones as 0
    (``empty="zero"``). Raises ``ValueError`` when no class has a positive. ``zero_means``
    as in :func:`average_precision`."""
    s, t = _check_pair(scores, targets, zero_means)
    return _mean_valid(_average_precision(s, t, mode, empty))


def _mean_valid(ap: np.ndarray) -> float:
    """Mean over the classes that have a positive; NaN marks the others (``empty="nan"``)."""
    if np.isnan(ap).all():
        raise ValueError("mAP is undefined: no class has a positive target (1); check that the "
                         "targets use 1 for present labels")
    return float(np.nanmean(ap))


# ----------------------------------------------------------------------- threshold metrics
def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


def _prf_from_pred(pred: np.ndarray, t: np.ndarray) -> dict[str, float]:
    """CP..OF1 from a boolean (N, C) prediction matrix."""
    pos = t == 1
    unknown = t == 0
    if unknown.any():  # a prediction on an unknown entry counts nowhere: drop it
        pred = pred & ~unknown
    return _prf_from_counts(_count(pred & pos, axis=0), _count(pred, axis=0),
                            _count(pos, axis=0))


def _prf_from_counts(nc: np.ndarray, np_: np.ndarray, ng: np.ndarray) -> dict[str, float]:
    """CP..OF1 from per-class counts: correct predictions ``nc``, predictions ``np_`` and
    positives ``ng`` (each (C,))."""
    nc, np_, ng = (np.asarray(v, dtype=np.float64) for v in (nc, np_, ng))
    valid = ng > 0
    if not valid.any():
        raise ValueError("CP/CR are undefined: no class has a positive target (1)")
    # ML-GCN: a class with no prediction has precision Nc / 1 = 0
    cp = float((nc / np.maximum(np_, 1.0))[valid].mean())
    cr = float((nc / np.maximum(ng, 1.0))[valid].mean())
    tot_p = float(np_.sum())
    op = float(nc.sum()) / tot_p if tot_p > 0 else 0.0
    or_ = float(nc.sum()) / float(ng.sum())
    return {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "OP": op, "OR": or_, "OF1": _f1(op, or_)}


def _topk_mask(s: np.ndarray, k: int) -> np.ndarray:
    if not 1 <= int(k) <= s.shape[1]:
        raise ValueError(f"top-k: k must be between 1 and the number of classes ({s.shape[1]}), "
                         f"got {k}")
    k = int(k)
    t = torch.from_numpy(s)
    if k == s.shape[1]:
        return np.ones(s.shape, dtype=bool)
    vals, idx = torch.topk(t, k + 1, dim=1)
    # ties across the k-th place: the lower class index first (a stable sort), so the
    # choice is defined and does not depend on torch.topk's internals
    tied = (vals[:, k - 1] == vals[:, k]).nonzero().squeeze(1)
    idx = idx[:, :k].clone()
    if len(tied):
        idx[tied] = torch.sort(t[tied], dim=1, descending=True, stable=True).indices[:, :k]
    idx = idx.numpy()
    mask = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(mask, idx, True, axis=1)
    return mask


def threshold_metrics(scores: Any, targets: Any, threshold: float = 0.5,
                      top_k: int | None = None,
                      scores_are: Literal["probs", "logits"] = "probs",
                      zero_means: ZeroMeans | None = None) -> dict[str, float]:
    """CP, CR, CF1, OP, OR, OF1 (fractions in [0, 1]) at a probability ``threshold``.

    ``scores`` are probabilities (``scores_are="probs"``) or logits (compared with
    ``log(t / (1 - t))``). A label is predicted when its probability is ``>= threshold``; with
    ``top_k`` it must also be among the image's ``k`` highest scores (ML-GCN's top-3 on COCO).
    Per class c: ``N_c`` correct predictions, ``N_p`` predictions, ``N_g`` positives.

    * ``CP = mean_c N_c / max(N_p, 1)``, ``CR = mean_c N_c / N_g`` over the classes with
      ``N_g > 0``; ``CF1 = 2 CP CR / (CP + CR)`` (ML-GCN / the papers' definition: F1 of the
      averages, not the average of per-class F1).
    * ``OP = sum N_c / sum N_p`` (0 when nothing is predicted), ``OR = sum N_c / sum N_g``,
      ``OF1 = 2 OP OR / (OP + OR)``.

    Entries whose target is 0 are ignored (a prediction there is neither right nor wrong);
    ``zero_means="negative"`` reads them as negatives instead (needed to accept 0/1 targets).
    """
    s, t = _check_pair(scores, targets, zero_means)
    pred = _predicted(s, threshold, scores_are)
    if top_k is not None:
        pred = pred & _topk_mask(s, top_k)
    return _prf_from_pred(pred, t)


# -------------------------------------------------------------------------------- report
@dataclass
class EvaluationReport:
    """What :func:`evaluate` measured. All values are fractions in [0, 1].

    ``summary`` holds mAP, CP, CR, CF1, OP, OR, OF1 and the ``*_top{k}`` variants;
    ``per_class_ap`` is (C,) with NaN for classes without a positive (``empty="nan"``).
    """

    summary: dict[str, float]
    per_class_ap: np.ndarray
    ap_mode: str
    threshold: float
    top_k: int | None
    scores_are: str
    empty_classes: str
    num_images: int
    num_classes: int
    num_classes_with_positives: int
    units: str = "fraction"
    unknown_targets: str = "ignored (0 entries count in no metric)"
    thresholds: list[float] | None = None  # one per class, when evaluated with those
    choices: dict[str, str] = field(default_factory=dict)

    def __getitem__(self, key: str) -> float:
        return self.summary[key]

    @property
    def mAP(self) -> float:  # noqa: N802 - the field's usual spelling
        return self.summary["mAP"]

    def to_dict(self) -> dict[str, float]:
        """The summary metrics: ``mAP, CP, CR, CF1, OP, OR, OF1`` (+ ``CP_top3`` ...), as
        fractions in [0, 1]."""
        return dict(self.summary)

    def settings(self) -> dict[str, Any]:
        """The recorded choices behind the numbers (AP mode, threshold, units, what 0 meant)."""
        return {"ap_mode": self.ap_mode, "threshold": self.threshold,
                "thresholds": self.thresholds, "top_k": self.top_k,
                "scores_are": self.scores_are, "empty_classes": self.empty_classes,
                "units": self.units, "unknown_targets": self.unknown_targets,
                "num_images": self.num_images, "num_classes": self.num_classes,
                "num_classes_with_positives": self.num_classes_with_positives, **self.choices}

    def format_table(self, label_names: Sequence[str] | None = None) -> str:
        """A printable table of the summary metrics in percent; with ``label_names``, one AP
        line per class as well (``-`` for a class without positives)."""
        keys = list(self.summary)
        width = max(8, *(len(k) for k in keys))
        lines = [f"{'metric':<{width}}  value (%)", f"{'-' * width}  ---------"]
        lines += [f"{k:<{width}}  {100.0 * v:9.2f}" for k, v in self.summary.items()]
        thr = (f"per-class thresholds (mean {np.mean(self.thresholds):.3g})"
               if self.thresholds is not None else f"threshold {self.threshold:g}")
        lines.append(f"(AP mode {self.ap_mode}, {thr}"
                     + (f", top-{self.top_k}" if self.top_k else "")
                     + f", {self.num_images} images, {self.num_classes_with_positives}/"
                     f"{self.num_classes} classes with positives; 0 targets "
                     + ("read as negative)" if self.unknown_targets.startswith("read as negative")
                        else "ignored)"))
        if label_names is not None:
            names = list(label_names)
            if len(names) != self.num_classes:
                raise ValueError(f"format_table: {len(names)} label names for "
                                 f"{self.num_classes} classes")
            nw = max(5, *(len(n) for n in names))
            lines += ["", f"{'class':<{nw}}  AP (%)", f"{'-' * nw}  ------"]
            for n, ap in zip(names, self.per_class_ap.tolist()):
                lines.append(f"{n:<{nw}}  " + ("     -" if math.isnan(ap) else f"{100 * ap:6.2f}"))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()


def evaluate(scores: Any, targets: Any, threshold: float | Sequence[float] | np.ndarray = 0.5,
             top_k: int | None = None,
             ap_mode: APMode = "sklearn",
             scores_are: Literal["probs", "logits"] = "probs",
             empty: Empty = "nan", zero_means: ZeroMeans | None = None) -> EvaluationReport:
    """mAP and CP, CR, CF1, OP, OR, OF1 (and their top-k variants) in one report.

    ``scores`` (N, C) are probabilities (``scores_are="probs"``, checked to lie in [0, 1]) or
    logits (``scores_are="logits"``); ``targets`` (N, C) in {1, -1, 0}, 0 ignored everywhere.
    All values are fractions in [0, 1]. ``threshold`` is one probability or one per class
    (C,) (e.g. from ``choose_thresholds`` on a validation split). ``top_k`` adds
    ``CP_top{k}`` ... ``OF1_top{k}`` (k highest scores of each image that also pass
    ``threshold``). Targets with 0 but no -1
    (0/1 labels) need ``zero_means``: ``"negative"`` (scikit-learn style) or ``"unknown"``.
    """
    s, t = _check_pair(scores, targets, zero_means)
    if ap_mode not in AP_MODES:
        raise ValueError(f"unknown AP mode {ap_mode!r}; choose one of {', '.join(AP_MODES)}")
    if empty not in ("nan", "zero"):
        raise ValueError(f"empty must be 'nan' or 'zero', got {empty!r}")
    cut = _cut(s, threshold, scores_are)
    per_class = np.ndim(cut) == 1
    ap, npos_c, nc, npred = _class_stats(s, t, ap_mode, None if per_class else cut)
    ap = np.where(npos_c > 0, ap, math.nan if empty == "nan" else 0.0)
    summary = {"mAP": _mean_valid(ap)}
    if per_class:
        summary.update(_prf_from_pred(s >= cut[None, :], t))
    else:
        summary.update(_prf_from_counts(nc, npred, npos_c))
    if top_k is not None:
        topk = _prf_from_pred(_predicted(s, threshold, scores_are) & _topk_mask(s, top_k), t)
        summary.update({f"{k}_top{int(top_k)}": v for k, v in topk.items()})
    npos = int(np.count_nonzero(npos_c))
    return EvaluationReport(
        summary=summary, per_class_ap=ap, ap_mode=ap_mode,
        threshold=math.nan if per_class else float(threshold),
        thresholds=[float(v) for v in np.asarray(threshold).ravel()] if per_class else None,
        top_k=None if top_k is None else int(top_k), scores_are=scores_are,
        empty_classes=empty, num_images=int(s.shape[0]), num_classes=int(s.shape[1]),
        num_classes_with_positives=npos,
        unknown_targets=("read as negative (zero_means='negative')" if zero_means == "negative"
                         else EvaluationReport.unknown_targets),
        choices={"class_averages": "CP/CR over classes with >= 1 positive",
                 "no_prediction_precision": "N_c / max(N_p, 1) (ML-GCN)"})


# ------------------------------------------------------------------------------ zero-shot
def topk_prf(scores: Any, targets: Any, k: int, zero_means: ZeroMeans | None = None,
             ) -> tuple[float, float, float]:
    """Micro precision, recall and F1 (fractions) of the top-``k`` labels of every image.

    The BiAM / SigRL "overall" convention: each image predicts its ``k`` highest-scoring labels
    (any real scores; ties at the k-th place go to the lower class index), pooled over all
    images:
    ``P = TP / #predictions``, ``R = TP / #positives``, ``F1 = 2PR / (P + R)``. A prediction on
    an unknown (0) entry is not counted; with full labels ``#predictions = N k`` as in BiAM.
    ``zero_means`` as in :func:`evaluate` (needed for 0/1 targets).
    """
    s, t = _check_pair(scores, targets, zero_means)
    pred = _topk_mask(s, k) & (t != 0)
    tp = float(np.count_nonzero(pred & (t == 1)))
    npred = float(np.count_nonzero(pred))
    npos = float(np.count_nonzero(t == 1))
    if npos == 0:
        raise ValueError("top-k recall is undefined: no positive target (1) in the input")
    p = tp / npred if npred > 0 else 0.0
    r = tp / npos
    return p, r, _f1(p, r)


@dataclass
class ZeroShotReport:
    """ZSL (unseen labels only) and GZSL (seen + unseen) metrics, fractions in [0, 1]."""

    zsl: dict[str, float]
    gzsl: dict[str, float]
    ks: tuple[int, ...]
    ap_mode: str
    empty_classes: str
    num_unseen: int
    num_classes: int

    def to_dict(self) -> dict[str, float]:
        """Flat dict: ``ZSL_mAP``, ``ZSL_P@3``, ``ZSL_R@3``, ``ZSL_F1@3``, ... ``GZSL_...``."""
        out = {f"ZSL_{k}": v for k, v in self.zsl.items()}
        out.update({f"GZSL_{k}": v for k, v in self.gzsl.items()})
        return out

    def format_table(self) -> str:
        keys = list(self.zsl)
        lines = [f"{'':6}" + "".join(f"{k:>9}" for k in keys)]
        for name, d in (("ZSL", self.zsl), ("GZSL", self.gzsl)):
            lines.append(f"{name:6}" + "".join(f"{100 * d[k]:9.2f}" for k in keys))
        lines.append(f"(percent; {self.num_unseen} unseen of {self.num_classes} labels, AP "
                     f"{self.ap_mode}, classes without positives count as {self.empty_classes})")
        return "\n".join(lines)


def zero_shot_metrics(scores: Any, targets: Any, unseen: Any, ks: Sequence[int] = (3, 5),
                      ap_mode: APMode = "sklearn", empty: Empty = "zero",
                      zero_means: ZeroMeans | None = None,
                      zsl_scores: Any = None) -> ZeroShotReport:
    """Zero-shot evaluation (BiAM / SigRL convention) over all images given.

    ``scores`` / ``targets`` (N, C) cover every label (seen and unseen); ``unseen`` is a
    boolean mask (C,). ZSL uses only the unseen columns (e.g. the 81 NUS-WIDE concepts), GZSL
    all columns (925 + 81). For each: ``mAP`` and, for each k in ``ks``, top-k micro
    ``P@k, R@k, F1@k`` (:func:`topk_prf`). By default a class without any positive counts
    as AP 0 in the mean (``empty="zero"``, as BiAM's ``compute_AP`` does); ``empty="nan"``
    leaves such classes out instead. Values are fractions in [0, 1]. ``zero_means`` as in
    :func:`evaluate` (needed for 0/1 targets). ``zsl_scores`` (N, U): scores of the unseen
    labels from a separate forward over them alone (the reference evaluation runs ZSL that
    way; a head that mixes the scored label set scores differently); default: the unseen
    columns of ``scores``.
    """
    s, t = _check_pair(scores, targets, zero_means)
    m = _to_numpy(unseen)
    if m.dtype != np.bool_:
        raise ValueError(f"unseen: expected a boolean mask of length {s.shape[1]}, got dtype "
                         f"{m.dtype}")
    if m.shape != (s.shape[1],):
        raise ValueError(f"unseen: mask has shape {tuple(m.shape)}, scores have "
                         f"{s.shape[1]} classes")
    if not m.any():
        raise ValueError("unseen: the mask selects no class; ZSL needs at least one unseen label")

    def block(sc: np.ndarray, tg: np.ndarray) -> dict[str, float]:
        if not (tg == 1).any():
            raise ValueError("zero-shot metrics: no positive target (1) among these labels")
        out = {"mAP": float(np.nanmean(_average_precision(sc, tg, ap_mode, empty)))}
        for k in ks:
            # the targets are already read; a column subset may lack -1 by chance. With fewer
            # labels than k every label is predicted (k is capped at the label count)
            p, r, f = topk_prf(sc, tg, min(int(k), sc.shape[1]), zero_means="unknown")
            out.update({f"P@{k}": p, f"R@{k}": r, f"F1@{k}": f})
        return out

    zs = s[:, m]
    if zsl_scores is not None:
        zs = _as_scores(zsl_scores, "zsl_scores")
        if zs.shape != (s.shape[0], int(np.count_nonzero(m))):
            raise ValueError(f"zsl_scores: expected shape ({s.shape[0]}, "
                             f"{int(np.count_nonzero(m))}) (images, unseen labels), got "
                             f"{tuple(zs.shape)}")
    return ZeroShotReport(zsl=block(zs, t[:, m]), gzsl=block(s, t),
                          ks=tuple(int(k) for k in ks), ap_mode=ap_mode, empty_classes=empty,
                          num_unseen=int(np.count_nonzero(m)), num_classes=int(s.shape[1]))


# ------------------------------------------------------------------ single positive (SPML)
SPMLTies = Literal["split", "first"]
NoPositive = Literal["zero", "skip"]


@dataclass
class SPMLReport:
    """SPML test metrics as the single-positive papers report them, fractions in [0, 1]:
    ``mAP`` and, per k, ``P@k`` / ``R@k`` (per-image values averaged over images) and
    ``F1@k`` (the F1 of those two means)."""

    metrics: dict[str, float]
    ks: tuple[int, ...]
    ap_mode: str
    ties: str
    no_positive: str
    num_images: int
    num_without_positive: int

    def to_dict(self) -> dict[str, float]:
        """Flat dict: ``mAP``, ``P@3``, ``R@3``, ``F1@3``, ..."""
        return dict(self.metrics)

    def format_table(self) -> str:
        keys = list(self.metrics)
        return "\n".join([
            "".join(f"{k:>9}" for k in keys),
            "".join(f"{100 * self.metrics[k]:9.2f}" for k in keys),
            f"(percent; {self.num_images} images, {self.num_without_positive} without a "
            f"positive ({self.no_positive}), AP {self.ap_mode}, top-k ties {self.ties})"])


def _topk_hits(s: np.ndarray, pos: np.ndarray, known: np.ndarray, k: int,
               ties: str) -> np.ndarray:
    """Per image, the positives among its ``k`` highest-scoring known labels (float64 (N,)).

    Unknown entries leave the ranking. ``ties="first"``: equal scores in class order;
    ``"split"``: the expected count when the tie at the k-th place is broken at random.
    """
    sk = np.where(known, s, -np.inf)
    if ties == "first":
        top = np.argsort(-sk, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(pos, top, axis=1).sum(1).astype(np.float64)
    kth = -np.partition(-sk, k - 1, axis=1)[:, k - 1:k]  # the k-th largest score
    above, at = sk > kth, sk == kth
    slots = k - above.sum(1)  # places of the top k left for the tied block
    return ((pos & above).sum(1) + slots * (pos & at).sum(1) / at.sum(1)).astype(np.float64)


def spml_metrics(scores: Any, targets: Any, ks: Sequence[int] = (3, 5),
                 ap_mode: APMode = "sklearn", empty: Empty = "zero", ties: SPMLTies = "split",
                 no_positive: NoPositive = "zero",
                 zero_means: ZeroMeans | None = None) -> SPMLReport:
    """Single-positive multi-label (SPML) test metrics, as SigRL's Tables II-III and its code
    (inherited from Cole et al. 2021 / VLPL) compute them.

    * ``mAP``: mean per-class AP (``ap_mode``); a class without a positive counts 0
      (``empty="zero"``, the reference's ``compute_avg_precision``) or is left out (``"nan"``).
    * ``P@k`` = mean over images of ``hits_i / k``; ``R@k`` = mean over images of
      ``hits_i / #positives_i``, where ``hits_i`` counts the image's positives among its
      ``k`` highest-scoring labels (``ks`` default 3 and 5, the paper's columns).
    * ``F1@k = 2 P@k R@k / (P@k + R@k)``: the F1 of the two means, not a mean of F1s.

    An image without a positive scores P = R = 0 and stays in both means
    (``no_positive="zero"``, as the reference) or is left out (``"skip"``). Unknown (0)
    entries leave the image's ranking (they take no top-k place). Ties at the k-th place:
    ``"split"`` counts the expected hits under a random order of the tied labels; ``"first"``
    takes them in class order (the reference's ``np.argsort(...)[::-1]`` leaves this to
    NumPy's sort). Any real scores (logits or probabilities).
    """
    s, t = _check_pair(scores, targets, zero_means)
    if ties not in ("split", "first"):
        raise ValueError(f"ties must be 'split' or 'first', got {ties!r}")
    if no_positive not in ("zero", "skip"):
        raise ValueError(f"no_positive must be 'zero' or 'skip', got {no_positive!r}")
    c = s.shape[1]
    ks_ = tuple(int(k) for k in ks)
    for k in ks_:
        if not 1 <= k <= c:
            raise ValueError(f"spml_metrics: k must be between 1 and the number of classes "
                             f"({c}), got {k}")
    pos, known = t == 1, t != 0
    npos = pos.sum(1)
    has = npos > 0
    if not has.any():
        raise ValueError("spml_metrics: no positive target (1) in the input")
    rows = has if no_positive == "skip" else np.ones_like(has)
    out = {"mAP": _mean_valid(_average_precision(s, t, ap_mode, empty))}
    for k in ks_:
        hits = _topk_hits(s, pos, known, k, ties)
        p = float((hits / k)[rows].mean())
        r = float(np.where(has, hits / np.maximum(npos, 1), 0.0)[rows].mean())
        out.update({f"P@{k}": p, f"R@{k}": r, f"F1@{k}": _f1(p, r)})
    return SPMLReport(metrics=out, ks=ks_, ap_mode=ap_mode, ties=ties, no_positive=no_positive,
                      num_images=int(s.shape[0]), num_without_positive=int((~has).sum()))


# ------------------------------------------------------------------------- pointing game
# Does a class attention map peak on an object of that class? Conventions:
#
# * ``attention`` is (N, C, h, w): one map per image and class (``Output.attention``). A map
#   covers the whole image as the model saw it (mlrkit's eval transform is a square resize,
#   no crop), so map cell (i, j) stands for the point ((j + 0.5) / w, (i + 0.5) / h) in
#   normalized image coordinates: its centre, scaled by image size / map size. The map is
#   not upsampled: the peak is taken at the map's own resolution.
# * Boxes are normalized xyxy in [0, 1] (YOLO's frame: x right, y down, divided by the image
#   width / height), one row ``(class, x1, y1, x2, y2)`` per box; or pixels when
#   ``image_sizes`` (N, 2) ``(width, height)`` is given. A box holds the points with
#   ``x1 <= x < x2`` and ``y1 <= y < y2`` (half-open, as pixel boxes with an exclusive
#   right / bottom edge), so a point on the line between two adjacent boxes belongs to one.
# * A pair is an (image, class) with at least one box of that class in the image; it scores
#   1 when the peak falls inside any box of the class. Ties at the maximum:
#   ``ties="split"`` (default) scores the fraction of the tied cells that fall inside, the
#   expected score of a peak picked at random among them; ``ties="first"`` takes the first
#   maximal cell in row-major order (``argmax``).
# * A constant map ties everywhere, so under ``ties="split"`` it scores exactly the
#   fraction of map cells inside the boxes: the uniform (random-peak) baseline.
Ties = Literal["split", "first"]
BoxesLike = Any  # a sequence of N (K_i, 5) array-likes, or an (N, K, 5) padded array / tensor


@dataclass
class PointingReport:
    """What :func:`pointing_game` measured; rates are fractions in [0, 1].

    ``hit_rate`` = hits / pairs over all (image, class) pairs; ``class_mean`` = the mean of
    ``per_class`` (C,), the hit rate of each class over its pairs (NaN without a pair), over
    the classes that have pairs. ``pair_image``, ``pair_class``, ``pair_hit`` list every pair
    (sorted by image, then class) with its score (0 or 1; a fraction for split ties).
    """

    hit_rate: float
    class_mean: float
    per_class: np.ndarray
    pairs_per_class: np.ndarray
    hits: float
    num_pairs: int
    num_images: int
    num_classes: int
    map_size: tuple[int, int]
    ties: str
    pair_image: np.ndarray = field(repr=False)
    pair_class: np.ndarray = field(repr=False)
    pair_hit: np.ndarray = field(repr=False)

    def to_dict(self) -> dict[str, float]:
        """``hit_rate``, ``class_mean`` (fractions) and the counts behind them."""
        return {"hit_rate": self.hit_rate, "class_mean": self.class_mean, "hits": self.hits,
                "num_pairs": float(self.num_pairs), "num_images": float(self.num_images)}


def _pointing_boxes(boxes: BoxesLike, n: int, c: int, image_sizes: Any,
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked boxes as ``(image (M,), class (M,), xyxy (M, 4) normalized)``; padding rows
    (class < 0) dropped."""
    if isinstance(boxes, (torch.Tensor, np.ndarray)):
        arr = _to_numpy(boxes)
        if arr.ndim != 3 or arr.shape[-1] != 5:
            raise ValueError(f"boxes: a padded array must be (N, K, 5), got {tuple(arr.shape)}")
        rows = list(arr)
    else:
        rows = list(boxes)
    if len(rows) != n:
        raise ValueError(f"boxes: {len(rows)} images but attention has {n}; give one (K, 5) "
                         "list of (class, x1, y1, x2, y2) rows per image (K may be 0)")
    per = []
    for r, b in enumerate(rows):
        a = np.asarray(_to_numpy(b), dtype=np.float64)
        if a.size == 0:
            a = a.reshape(0, 5)
        if a.ndim != 2 or a.shape[1] != 5:
            raise ValueError(f"boxes[{r}]: expected (K, 5) rows (class, x1, y1, x2, y2), got "
                             f"shape {tuple(a.shape)}")
        per.append(a)
    counts = np.array([len(a) for a in per], dtype=np.int64)
    flat = np.concatenate(per, axis=0) if per else np.zeros((0, 5))
    img = np.repeat(np.arange(n), counts)
    keep = ~(flat[:, 0] < 0)  # padding rows; NaN classes stay and are refused below
    flat, img = flat[keep], img[keep]
    cls = flat[:, 0]
    bad = np.flatnonzero(~(np.isfinite(flat).all(1)) | (cls != np.round(cls)) | (cls >= c))
    if bad.size:
        k = int(bad[0])
        raise ValueError(f"boxes[{int(img[k])}]: row {flat[k].tolist()} has a class outside "
                         f"0..{c - 1} or a non-finite value (pad with class -1)")
    xyxy = flat[:, 1:]
    if image_sizes is not None:
        sz = np.asarray(_to_numpy(image_sizes), dtype=np.float64)
        if sz.shape != (n, 2):
            raise ValueError(f"image_sizes: expected (N, 2) = ({n}, 2) (width, height), got "
                             f"{tuple(sz.shape)}")
        if not (np.isfinite(sz).all() and (sz > 0).all()):
            raise ValueError("image_sizes: widths and heights must be finite and positive")
        xyxy = xyxy / np.tile(sz[img], 2)
    unit = "pixels (image_sizes)" if image_sizes is not None else "normalized"
    eps = 1e-6
    bad = np.flatnonzero((xyxy < -eps).any(1) | (xyxy > 1 + eps).any(1)
                         | (xyxy[:, 2] < xyxy[:, 0]) | (xyxy[:, 3] < xyxy[:, 1]))
    if bad.size:
        k = int(bad[0])
        hint = ("" if image_sizes is not None else
                "; pixel boxes need image_sizes=(N, 2) (width, height)")
        raise ValueError(f"boxes[{int(img[k])}]: {flat[k, 1:].tolist()} is not an x1 <= x2, "
                         f"y1 <= y2 box inside the image ({unit}){hint}")
    return img, cls.astype(np.int64), np.clip(xyxy, 0.0, 1.0)


def _point_scores(maps: Any, img: np.ndarray, cls: np.ndarray, xyxy: np.ndarray, c: int,
                  ties: str, check_finite: bool = True,
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-pair scores for maps broadcastable to (N, C, h, w): (pair image, class, score)."""
    n, _, h, w = maps.shape
    if img.size == 0:
        raise ValueError("pointing game: no (image, class) pair has a box; nothing to score")
    # cell centres in normalized coordinates, compared with the half-open boxes
    xs = (2 * np.arange(w) + 1) / (2 * w)
    ys = (2 * np.arange(h) + 1) / (2 * h)
    in_x = (xs >= xyxy[:, :1]) & (xs < xyxy[:, 2:3])  # (M, w)
    in_y = (ys >= xyxy[:, 1:2]) & (ys < xyxy[:, 3:4])  # (M, h)
    inside = (in_y[:, :, None] & in_x[:, None, :]).reshape(len(img), h * w)
    key = img * c + cls
    order = np.argsort(key, kind="stable")
    key, inside = key[order], inside[order]
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
    union = np.logical_or.reduceat(inside, starts, axis=0)  # (P, h w): any box of the class
    pimg, pcls = np.divmod(key[starts], c)
    rows = maps.reshape(n, -1, h * w)[pimg, pcls if maps.shape[1] > 1 else 0]  # (P, h w)
    if check_finite:
        finite = np.isfinite(rows).all(1)
        if not finite.all():
            k = int(np.flatnonzero(~finite)[0])
            raise ValueError(f"attention: non-finite value in the map of image {int(pimg[k])}, "
                             f"class {int(pcls[k])}; maps must be finite")
    if ties == "split":
        peak = rows == rows.max(axis=1, keepdims=True)
        score = np.count_nonzero(peak & union, axis=1) / np.count_nonzero(peak, axis=1)
    else:
        score = union[np.arange(len(rows)), rows.argmax(axis=1)].astype(np.float64)
    return pimg, pcls, score


def _pointing_report(pimg: np.ndarray, pcls: np.ndarray, score: np.ndarray, c: int,
                     map_size: tuple[int, int], ties: str) -> PointingReport:
    npairs = np.bincount(pcls, minlength=c)
    sums = np.bincount(pcls, weights=score, minlength=c)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(npairs > 0, sums / np.maximum(npairs, 1), math.nan)
    return PointingReport(
        hit_rate=float(score.mean()), class_mean=float(np.nanmean(per_class)),
        per_class=per_class, pairs_per_class=npairs, hits=float(score.sum()),
        num_pairs=int(score.size), num_images=int(np.unique(pimg).size), num_classes=c,
        map_size=map_size, ties=ties, pair_image=pimg, pair_class=pcls, pair_hit=score)


def _check_ties(ties: str) -> None:
    if ties not in ("split", "first"):
        raise ValueError(f"ties must be 'split' or 'first', got {ties!r}")


def pointing_game(attention: Any, boxes: BoxesLike, image_sizes: Any = None,
                  ties: Ties = "split") -> PointingReport:
    """Pointing-game hit rates of class attention maps against object boxes.

    ``attention`` (N, C, h, w) tensor or array; ``boxes`` one (K_i, 5) array-like of rows
    ``(class, x1, y1, x2, y2)`` per image (K_i may be 0), or an (N, K, 5) array padded with
    rows of class -1; coordinates normalized to [0, 1], or pixels with ``image_sizes``
    (N, 2) ``(width, height)``. Every (image, class) with a box is one pair; it is a hit when
    the peak of that map, at its cell centre, lies inside a box of the class (see the
    section's conventions for coordinates, half-open boxes and ``ties``).
    """
    _check_ties(ties)
    a = _to_numpy(attention)
    if a.ndim != 4 or 0 in a.shape:
        raise ValueError(f"attention: expected a non-empty (N, C, h, w) array, got shape "
                         f"{tuple(a.shape)}")
    if a.dtype.kind not in "fiu":
        raise ValueError(f"attention: expected real values, got dtype {a.dtype}")
    n, c, h, w = a.shape
    img, cls, xyxy = _pointing_boxes(boxes, n, c, image_sizes)
    pimg, pcls, score = _point_scores(a, img, cls, xyxy, c, ties)
    return _pointing_report(pimg, pcls, score, c, (h, w), ties)


def centre_prior_map(height: int, width: int, sigma: float = 0.25) -> np.ndarray:
    """(h, w) Gaussian of the distance of each cell centre to the image centre (normalized
    coordinates, std ``sigma``). Its peak is the centre cell; on an even side the two
    middle cells tie exactly (so 2 or 4 cells share the peak)."""
    if height < 1 or width < 1:
        raise ValueError(f"centre_prior_map: need height, width >= 1, got {height}, {width}")
    # (2 j + 1 - w) / (2 w): the offset from the centre, exactly symmetric in floating point
    dx = (2 * np.arange(width) + 1 - width) / (2 * width)
    dy = (2 * np.arange(height) + 1 - height) / (2 * height)
    d2 = dy[:, None] ** 2 + dx[None, :] ** 2
    return np.exp(-d2 / (2 * float(sigma) ** 2))


def pointing_baselines(boxes: BoxesLike, num_classes: int, map_size: tuple[int, int],
                       image_sizes: Any = None, ties: Ties = "split",
                       ) -> dict[str, PointingReport]:
    """The two reference rows of the pointing game at map size ``(h, w)``.

    ``"centre prior"``: every map is :func:`centre_prior_map` (the peak is the centre
    cell(s), ties handled by ``ties``); ``"uniform"``: a constant map, whose score is exactly
    the fraction of the map's cells inside the class's boxes (the expected hit rate of a
    uniformly random peak), whatever ``ties`` is.
    """
    _check_ties(ties)
    h, w = (int(v) for v in map_size)
    n = len(boxes)
    img, cls, xyxy = _pointing_boxes(boxes, n, num_classes, image_sizes)
    out = {}
    for name, m, t in (("centre prior", centre_prior_map(h, w), ties),
                       ("uniform", np.zeros((h, w)), "split")):
        maps = np.broadcast_to(m, (n, 1, h, w))  # the same map for every image and class
        pimg, pcls, score = _point_scores(maps, img, cls, xyxy, num_classes, t, False)
        out[name] = _pointing_report(pimg, pcls, score, num_classes, (h, w), t)
    return out
