"""Metrics of multi-label recognition: pure functions of ``scores (N, C)`` and ``targets (N, C)``.

Conventions shared by every function here:

* ``targets`` follow :mod:`mlrkit.labels`: ``1`` positive, ``-1`` negative, ``0`` unknown.
  An entry whose target is ``0`` is **ignored**: it is neither a true nor a false positive,
  it does not count as a positive to be found, and it does not occupy a rank in AP (it is
  removed from the ranking, which gives the same AP as the VOC devkit's "difficult" handling).
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from .labels import validate_targets

__all__ = [
    "AP_MODES",
    "EvaluationReport",
    "ZeroShotReport",
    "average_precision",
    "evaluate",
    "mean_average_precision",
    "threshold_metrics",
    "topk_prf",
    "zero_shot_metrics",
]

APMode = Literal["sklearn", "voc", "voc11"]
AP_MODES: tuple[str, ...] = ("sklearn", "voc", "voc11")
Empty = Literal["nan", "zero"]

# VOC2007 11-point recall levels, computed as k * 0.1 in float64 exactly like the devkit's
# ``np.arange(0., 1.1, 0.1)`` (so 0.30000000000000004, not 0.3).
_VOC11_LEVELS = torch.arange(11, dtype=torch.float64) * 0.1


# ----------------------------------------------------------------------------- input checks
def _as_scores(scores: Any, name: str = "scores") -> torch.Tensor:
    s = torch.as_tensor(np.asarray(scores) if not isinstance(scores, torch.Tensor) else scores)
    s = s.detach().cpu()
    if s.dim() != 2:
        raise ValueError(f"{name}: expected shape (N, C), got {tuple(s.shape)}")
    if s.numel() == 0:
        raise ValueError(f"{name}: empty input of shape {tuple(s.shape)}; need at least one "
                         "image and one class")
    if s.dtype == torch.bool or not (s.is_floating_point() or s.dtype in (
            torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise ValueError(f"{name}: expected real-valued scores, got dtype {s.dtype}")
    if not s.is_floating_point():
        s = s.to(torch.float64)
    if s.dtype in (torch.float16, torch.bfloat16):
        s = s.float()
    # a finite float64 sum proves every value finite (NaN / inf propagate into it)
    if not bool(torch.isfinite(s.sum(dtype=torch.float64))) and not bool(
            torch.isfinite(s).all()):
        finite = torch.isfinite(s)
        r, c = (~finite).nonzero()[0].tolist()
        raise ValueError(f"{name}: non-finite value {s[r, c].item()} at row {r}, column {c}; "
                         "scores must be finite (check the model output for NaN/inf)")
    return s


def _check_pair(scores: Any, targets: Any) -> tuple[torch.Tensor, torch.Tensor]:
    s = _as_scores(scores)
    t = targets if isinstance(targets, torch.Tensor) else torch.as_tensor(np.asarray(targets))
    t = t.detach().cpu()
    if t.dtype == torch.int8 and t.dim() == 2 and t.numel() > 0:
        lo, hi = torch.aminmax(t)  # int8 in [-1, 1] is exactly {-1, 0, 1}: fast path
        if int(lo) < -1 or int(hi) > 1:
            t = validate_targets(t)
    else:
        t = validate_targets(t)
    if t.shape != s.shape:
        raise ValueError(f"scores have shape {tuple(s.shape)} but targets have shape "
                         f"{tuple(t.shape)}; both must be (N, C) for the same images and classes")
    return s, t


def _check_probs(s: torch.Tensor) -> None:
    lo, hi = float(s.min()), float(s.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"scores: values in [{lo:.4g}, {hi:.4g}] are not probabilities; pass "
                         "scores_are='logits' (or apply a sigmoid first)")


def _check_threshold(threshold: float) -> None:
    if not 0.0 < float(threshold) < 1.0:
        raise ValueError(f"threshold must be a probability strictly between 0 and 1, "
                         f"got {threshold}")


def _predicted(s: torch.Tensor, threshold: float, scores_are: str) -> torch.Tensor:
    """Boolean (N, C): score at or above the probability threshold."""
    _check_threshold(threshold)
    if scores_are == "probs":
        _check_probs(s)
        return s >= threshold
    if scores_are == "logits":
        # sigmoid(x) >= t  <=>  x >= log(t / (1 - t)); exact for t = 0.5 (ML-GCN's ``x >= 0``)
        return s >= math.log(threshold / (1.0 - threshold))
    raise ValueError(f"scores_are must be 'probs' or 'logits', got {scores_are!r}")


# ----------------------------------------------------------------------- average precision
def _ap_sorted(s: torch.Tensor, t: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class AP (C,) and the number of positives (C,), vectorized over classes.

    Only two sorts per column are needed: the positive scores and the negative scores (unknown
    entries are in neither). At a positive with score v, every threshold statistic is a count:
    ``TP(v) = #{positives >= v}``, ``FP(v) = #{negatives >= v}`` (``>=`` makes tied scores one
    threshold, as in scikit-learn), found with a batched binary search.
    """
    sc = s.t().contiguous()
    tc = t.t().contiguous()
    n = sc.shape[1]
    pos = tc == 1
    npos = pos.sum(1)
    m = int(npos.max())
    if m == 0:
        return torch.zeros(sc.shape[0], dtype=torch.float64), npos
    neg_inf = torch.tensor(-math.inf, dtype=sc.dtype)
    # ascending sorts (numpy's sort is several times faster than torch.sort on CPU); the
    # positives of every class end up in the last m columns, -inf padding in front of them
    ps = np.sort(torch.where(pos, sc, neg_inf).numpy(), axis=1)[:, n - m:]
    ps = torch.from_numpy(np.ascontiguousarray(ps))
    ns = torch.from_numpy(np.sort(torch.where(tc == -1, sc, neg_inf).numpy(), axis=1))
    real = torch.arange(m).unsqueeze(0) >= (m - npos).unsqueeze(1)  # (C, m): not padding
    tp = (m - torch.searchsorted(ps, ps, side="left")).to(torch.float64)
    fp = (n - torch.searchsorted(ns, ps, side="left")).to(torch.float64)
    prec = torch.where(real, tp / (tp + fp), torch.zeros_like(tp))
    npos_f = npos.clamp_min(1).to(torch.float64)
    if mode == "sklearn":
        # AP = sum_k (R_k - R_{k-1}) P_k: each positive adds P at its threshold / #positives
        return prec.sum(1) / npos_f, npos
    # precision envelope: max precision at this or any lower threshold (higher recall);
    # lower scores sit at lower column indices, so it is a running max along the columns
    envelope = torch.cummax(prec, dim=1).values
    if mode == "voc":
        # VOC devkit VOCap: sum over recall steps of (r_i - r_{i-1}) * envelope_i
        return (envelope * real).sum(1) / npos_f, npos
    # VOC2007 11-point: mean over t of max_{R >= t} P; R is non-increasing along the columns
    # (padding gets R = inf), so the points with R >= t are a prefix of the row
    recall = torch.where(real, tp / npos_f.unsqueeze(1), torch.full_like(tp, math.inf))
    levels = _VOC11_LEVELS.unsqueeze(0).expand(recall.shape[0], -1).contiguous()
    count = torch.searchsorted((-recall).contiguous(), -levels, side="right")
    p_at = torch.gather(envelope, 1, (count - 1).clamp_min(0))
    return torch.where(count > 0, p_at, torch.zeros_like(p_at)).sum(1) / 11.0, npos


def average_precision(scores: Any, targets: Any, mode: APMode = "sklearn",
                      empty: Empty = "nan") -> torch.Tensor:
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
    Vectorized over classes: two sorts per column and a batched binary search, no loop over C.
    """
    if mode not in AP_MODES:
        raise ValueError(f"unknown AP mode {mode!r}; choose one of {', '.join(AP_MODES)}")
    if empty not in ("nan", "zero"):
        raise ValueError(f"empty must be 'nan' or 'zero', got {empty!r}")
    s, t = _check_pair(scores, targets)
    ap, npos = _ap_sorted(s, t, mode)
    fill = math.nan if empty == "nan" else 0.0
    return torch.where(npos > 0, ap, torch.full_like(ap, fill))


def mean_average_precision(scores: Any, targets: Any, mode: APMode = "sklearn",
                           empty: Empty = "nan") -> float:
    """mAP (fraction in [0, 1]): mean of :func:`average_precision` over the classes with at
    least one positive (``empty="nan"``), or over all classes with empty ones as 0
    (``empty="zero"``). Raises ``ValueError`` when no class has a positive."""
    ap = average_precision(scores, targets, mode=mode, empty=empty)
    return _mean_valid(ap, targets)


def _mean_valid(ap: torch.Tensor, targets: Any) -> float:
    t = targets if isinstance(targets, torch.Tensor) else torch.as_tensor(np.asarray(targets))
    if not bool((t == 1).any()):
        raise ValueError("mAP is undefined: no class has a positive target (1); check that the "
                         "targets use 1 for present labels")
    return float(ap[~torch.isnan(ap)].mean())


# ----------------------------------------------------------------------- threshold metrics
def _f1(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2.0 * p * r / (p + r)


def _prf_from_pred(pred: torch.Tensor, t: torch.Tensor) -> dict[str, float]:
    known = t != 0
    pos = t == 1
    pred = pred & known
    nc = (pred & pos).sum(0).to(torch.float64)  # correct predictions per class
    np_ = pred.sum(0).to(torch.float64)  # predictions per class
    ng = pos.sum(0).to(torch.float64)  # positives per class
    valid = ng > 0
    if not bool(valid.any()):
        raise ValueError("CP/CR are undefined: no class has a positive target (1)")
    # ML-GCN: a class with no prediction has precision Nc / 1 = 0
    cp = float((nc / np_.clamp_min(1.0))[valid].mean())
    cr = float((nc / ng.clamp_min(1.0))[valid].mean())
    tot_p = float(np_.sum())
    op = float(nc.sum()) / tot_p if tot_p > 0 else 0.0
    or_ = float(nc.sum()) / float(ng.sum())
    return {"CP": cp, "CR": cr, "CF1": _f1(cp, cr), "OP": op, "OR": or_, "OF1": _f1(op, or_)}


def _topk_mask(s: torch.Tensor, k: int) -> torch.Tensor:
    if not 1 <= int(k) <= s.shape[1]:
        raise ValueError(f"top-k: k must be between 1 and the number of classes ({s.shape[1]}), "
                         f"got {k}")
    idx = torch.topk(s, int(k), dim=1).indices
    mask = torch.zeros_like(s, dtype=torch.bool)
    mask.scatter_(1, idx, True)
    return mask


def threshold_metrics(scores: Any, targets: Any, threshold: float = 0.5,
                      top_k: int | None = None,
                      scores_are: Literal["probs", "logits"] = "probs") -> dict[str, float]:
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

    Entries whose target is 0 are ignored (a prediction there is neither right nor wrong).
    """
    s, t = _check_pair(scores, targets)
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
        return {"ap_mode": self.ap_mode, "threshold": self.threshold, "top_k": self.top_k,
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
        lines.append(f"(AP mode {self.ap_mode}, threshold {self.threshold:g}"
                     + (f", top-{self.top_k}" if self.top_k else "")
                     + f", {self.num_images} images, {self.num_classes_with_positives}/"
                     f"{self.num_classes} classes with positives; 0 targets ignored)")
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


def evaluate(scores: Any, targets: Any, threshold: float = 0.5, top_k: int | None = None,
             ap_mode: APMode = "sklearn",
             scores_are: Literal["probs", "logits"] = "probs",
             empty: Empty = "nan") -> EvaluationReport:
    """mAP and CP, CR, CF1, OP, OR, OF1 (and their top-k variants) in one report.

    ``scores`` (N, C) are probabilities (``scores_are="probs"``, checked to lie in [0, 1]) or
    logits (``scores_are="logits"``); ``targets`` (N, C) in {1, -1, 0}, 0 ignored everywhere.
    All values are fractions in [0, 1]. ``top_k`` adds ``CP_top{k}`` ... ``OF1_top{k}``
    (k highest scores of each image that also pass ``threshold``).
    """
    s, t = _check_pair(scores, targets)
    pred = _predicted(s, threshold, scores_are)
    ap = average_precision(s, t, mode=ap_mode, empty=empty)
    summary = {"mAP": _mean_valid(ap, t)}
    summary.update(_prf_from_pred(pred, t))
    if top_k is not None:
        topk = _prf_from_pred(pred & _topk_mask(s, top_k), t)
        summary.update({f"{k}_top{int(top_k)}": v for k, v in topk.items()})
    npos = int(((t == 1).sum(0) > 0).sum())
    return EvaluationReport(
        summary=summary, per_class_ap=ap.numpy(), ap_mode=ap_mode, threshold=float(threshold),
        top_k=None if top_k is None else int(top_k), scores_are=scores_are,
        empty_classes=empty, num_images=int(s.shape[0]), num_classes=int(s.shape[1]),
        num_classes_with_positives=npos,
        choices={"class_averages": "CP/CR over classes with >= 1 positive",
                 "no_prediction_precision": "N_c / max(N_p, 1) (ML-GCN)"})


# ------------------------------------------------------------------------------ zero-shot
def topk_prf(scores: Any, targets: Any, k: int) -> tuple[float, float, float]:
    """Micro precision, recall and F1 (fractions) of the top-``k`` labels of every image.

    The BiAM / SigRL "overall" convention: each image predicts its ``k`` highest-scoring labels
    (any real scores; ties at the k-th place broken by ``torch.topk``), pooled over all images:
    ``P = TP / #predictions``, ``R = TP / #positives``, ``F1 = 2PR / (P + R)``. A prediction on
    an unknown (0) entry is not counted; with full labels ``#predictions = N k`` as in BiAM.
    """
    s, t = _check_pair(scores, targets)
    pred = _topk_mask(s, k) & (t != 0)
    tp = float((pred & (t == 1)).sum())
    npred = float(pred.sum())
    npos = float((t == 1).sum())
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
                      ap_mode: APMode = "sklearn", empty: Empty = "zero") -> ZeroShotReport:
    """Zero-shot evaluation (BiAM / SigRL convention) over all images given.

    ``scores`` / ``targets`` (N, C) cover every label (seen and unseen); ``unseen`` is a
    boolean mask (C,). ZSL uses only the unseen columns (e.g. the 81 NUS-WIDE concepts), GZSL
    all columns (925 + 81). For each: ``mAP`` and, for each k in ``ks``, top-k micro
    ``P@k, R@k, F1@k`` (:func:`topk_prf`). By default a class without any positive counts
    as AP 0 in the mean (``empty="zero"``, as BiAM's ``compute_AP`` does); ``empty="nan"``
    leaves such classes out instead. Values are fractions in [0, 1].
    """
    s, t = _check_pair(scores, targets)
    m = torch.as_tensor(np.asarray(unseen) if not isinstance(unseen, torch.Tensor) else unseen)
    if m.dtype != torch.bool:
        raise ValueError(f"unseen: expected a boolean mask of length {s.shape[1]}, got dtype "
                         f"{m.dtype}")
    if m.shape != (s.shape[1],):
        raise ValueError(f"unseen: mask has shape {tuple(m.shape)}, scores have "
                         f"{s.shape[1]} classes")
    if not bool(m.any()):
        raise ValueError("unseen: the mask selects no class; ZSL needs at least one unseen label")

    def block(sc: torch.Tensor, tg: torch.Tensor) -> dict[str, float]:
        ap = average_precision(sc, tg, mode=ap_mode, empty=empty)
        out = {"mAP": _mean_valid(ap, tg)}
        for k in ks:
            p, r, f = topk_prf(sc, tg, int(k))
            out.update({f"P@{k}": p, f"R@{k}": r, f"F1@{k}": f})
        return out

    return ZeroShotReport(zsl=block(s[:, m], t[:, m]), gzsl=block(s, t),
                          ks=tuple(int(k) for k in ks), ap_mode=ap_mode, empty_classes=empty,
                          num_unseen=int(m.sum()), num_classes=int(s.shape[1]))
