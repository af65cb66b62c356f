"""``MultiLabelMetrics``: :func:`mlrkit.evaluate` as a ``torchmetrics.Metric``.

It keeps every batch's scores and targets (states reduced by concatenation, so under DDP
``compute()`` gathers all processes' rows first) and hands the whole set to
:func:`mlrkit.metrics.evaluate`: mAP is a ranking over all images and cannot be summed from
per-batch parts, so the rows themselves are kept, (N, C) scores and int8 targets.

::

    metric = MultiLabelMetrics(scores_are="logits", top_k=3)
    for x, y in loader:
        metric.update(model(x).logits, y)
    metric.compute()  # {"mAP": ..., "CP": ..., ..., "OF1_top3": ...}, fractions in [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from ..labels import validate_targets
from ..metrics import AP_MODES, EvaluationReport, evaluate


class MultiLabelMetrics(Metric):
    """mAP and CP, CR, CF1, OP, OR, OF1 (and their top-k variants) over all batches.

    The arguments are those of :func:`mlrkit.metrics.evaluate` and mean the same:
    ``threshold`` (one probability, or one per class), ``top_k``, ``ap_mode`` (``sklearn``,
    ``voc``, ``voc11``), ``scores_are`` (``probs`` or ``logits``), ``empty`` (a class
    without positives is left out of mAP, ``nan``, or counts as 0, ``zero``) and
    ``zero_means`` (what a 0 target is when there is no -1 anywhere: ``None`` refuses such
    targets, ``unknown`` or ``negative``); targets are 1 / -1 / 0, 0 ignored. ``num_classes``
    is optional and checks every batch. Other keyword arguments go to ``torchmetrics.Metric``
    (``compute_on_cpu=True`` keeps the rows on the CPU, ``sync_on_compute``,
    ``process_group``, ...).

    ``compute()`` returns :meth:`EvaluationReport.to_dict` of ``evaluate`` on the
    concatenated rows (under DDP, those of every process); the full report of the last
    ``compute()`` (per-class AP, settings) is kept as ``self.report``. Every process must
    call ``update`` at least once before ``compute``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    scores: list[torch.Tensor] | torch.Tensor
    targets: list[torch.Tensor] | torch.Tensor

    def __init__(self, num_classes: int | None = None,
                 threshold: float | Sequence[float] | np.ndarray = 0.5,
                 top_k: int | None = None, ap_mode: str = "sklearn",
                 scores_are: str = "probs", empty: str = "nan",
                 zero_means: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if ap_mode not in AP_MODES:
            raise ValueError(f"ap_mode: unknown {ap_mode!r}; choose one of {', '.join(AP_MODES)}")
        if scores_are not in ("probs", "logits"):
            raise ValueError(f"scores_are must be 'probs' or 'logits', got {scores_are!r}")
        if empty not in ("nan", "zero"):
            raise ValueError(f"empty must be 'nan' or 'zero', got {empty!r}")
        if zero_means not in (None, "unknown", "negative"):
            raise ValueError(f"zero_means must be 'unknown', 'negative' or None, "
                             f"got {zero_means!r}")
        if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 1):
            raise ValueError(f"top_k must be a positive integer, got {top_k!r}")
        thr = np.asarray(threshold, dtype=np.float64)
        if thr.ndim > 1 or (thr.ndim == 1 and num_classes is not None
                            and thr.shape[0] != num_classes):
            raise ValueError(f"threshold: one number or one per class ({num_classes}), got "
                             f"shape {thr.shape}")
        self.num_classes = num_classes
        self.threshold = float(thr) if thr.ndim == 0 else thr
        self.top_k = None if top_k is None else int(top_k)
        self.ap_mode, self.scores_are = ap_mode, scores_are
        self.empty, self.zero_means = empty, zero_means
        self.report: EvaluationReport | None = None
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("targets", default=[], dist_reduce_fx="cat")

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """Add a batch: ``scores`` (B, C) (probabilities or logits, as ``scores_are``
        says) and ``targets`` (B, C) in {1, -1, 0}."""
        s = torch.as_tensor(scores).detach()
        if s.dim() != 2:
            raise ValueError(f"scores: expected shape (B, C), got {tuple(s.shape)}")
        t = validate_targets(torch.as_tensor(targets).detach(), self.num_classes)
        if t.shape != s.shape:
            raise ValueError(f"scores have shape {tuple(s.shape)} but targets have shape "
                             f"{tuple(t.shape)}; both must be (B, C) for the same images")
        if not s.is_floating_point() or s.dtype in (torch.float16, torch.bfloat16):
            s = s.float()  # what evaluate does with them too
        self.scores.append(s)
        self.targets.append(t.to(s.device))

    def compute(self) -> dict[str, float]:
        """``evaluate(...).to_dict()`` on every row given so far (all processes')."""
        if isinstance(self.scores, list) and not self.scores:
            raise ValueError("MultiLabelMetrics.compute: no batch was given to update()")
        scores = dim_zero_cat(self.scores)
        targets = dim_zero_cat(self.targets).to(torch.int8)
        self.report = evaluate(scores, targets, threshold=self.threshold, top_k=self.top_k,
                               ap_mode=self.ap_mode, scores_are=self.scores_are,  # type: ignore[arg-type]
                               empty=self.empty, zero_means=self.zero_means)  # type: ignore[arg-type]
        return self.report.to_dict()


__all__ = ["MultiLabelMetrics"]
