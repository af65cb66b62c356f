"""Losses of multi-label recognition behind one signature: ``loss(logits, targets) -> scalar``.

``create_loss(name, reduction="mean" | "sum", **options)`` builds one; ``list_losses()`` names
them. ``logits`` are (B, C) real scores before the sigmoid; ``targets`` are (B, C) in
{1, -1, 0} (:mod:`mlrkit.labels`). Every loss states what it does with the unknown ``0``
entries. A loss that ignores an entry multiplies its term by an exact 0 mask, so no gradient
reaches the ignored logit. Log-probabilities come from ``logsigmoid`` (stable for any logit).

``reduction="mean"`` divides by the unit each loss is defined over (stated per loss, following
its paper / reference code); ``"sum"`` is the plain sum of the same terms.

Two entries differ from the signature above: ``l1_distill`` is ``loss(student, teacher)``
(two embeddings), and ``em_apl`` takes ``index=`` (dataset row numbers) once it has
pseudo-labels, because those live across epochs inside the loss.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .labels import validate_targets
from .registry import Registry

__all__ = ["LOSSES", "MLRLoss", "create_loss", "list_losses"]

LOSSES = Registry("loss")

_REDUCTIONS = ("mean", "sum")


def list_losses() -> list[str]:
    """Names accepted by :func:`create_loss`."""
    return LOSSES.names()


def create_loss(name: str, reduction: str = "mean", **options: Any) -> MLRLoss:
    """Build the loss registered as ``name`` with ``reduction`` and its keyword ``options``."""
    cls = LOSSES.get(name)
    params = inspect.signature(cls.__init__).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        allowed = [p for p in params if p not in ("self", "reduction")]
        raise ValueError(f"loss {name!r}: unknown option(s) {unknown}; accepted: "
                         f"{', '.join(allowed) or 'none'}")
    return cls(reduction=reduction, **options)


class MLRLoss(nn.Module):
    """Base class: checks the inputs and applies the reduction."""

    #: what the loss does with unknown (0) targets, in words
    unknown_targets: ClassVar[str] = ""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: reduction must be 'mean' or 'sum', "
                             f"got {reduction!r}")
        self.reduction = reduction

    def _inputs(self, logits: torch.Tensor, targets: Any) -> tuple[torch.Tensor, ...]:
        """Return logits and float masks (positive, negative, unknown) on the logits' device."""
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            raise ValueError(f"{type(self).__name__}: logits must be a floating-point tensor")
        if logits.dim() != 2:
            raise ValueError(f"{type(self).__name__}: logits must be (B, C), got "
                             f"{tuple(logits.shape)}")
        t = targets if isinstance(targets, torch.Tensor) else torch.as_tensor(targets)
        t = validate_targets(t.detach())
        if t.shape != logits.shape:
            raise ValueError(f"{type(self).__name__}: logits {tuple(logits.shape)} and targets "
                             f"{tuple(t.shape)} must have the same (B, C) shape")
        t = t.to(logits.device)
        dt = logits.dtype
        return logits, (t == 1).to(dt), (t == -1).to(dt), (t == 0).to(dt)

    def _reduce(self, total: torch.Tensor, count: torch.Tensor | float) -> torch.Tensor:
        # the unit count of the last call: the trainer sums it over DDP ranks so that a
        # mean over the global batch is the same on N ranks as on one process
        self.last_count = count
        if self.reduction == "sum":
            return total
        if isinstance(count, torch.Tensor):
            return total / count.clamp_min(1)
        return total / max(float(count), 1.0)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


def _log_p(x: torch.Tensor) -> torch.Tensor:
    return F.logsigmoid(x)  # log sigmoid(x)


def _log_1mp(x: torch.Tensor) -> torch.Tensor:
    return F.logsigmoid(-x)  # log(1 - sigmoid(x))


# ------------------------------------------------------------------------- full labels
@LOSSES.register("bce")
class BCELoss(MLRLoss):
    """Binary cross-entropy on the known labels: ``-[y log p + (1-y) log(1-p)]``.

    Unknown (0): ignored. ``mean``: average over the known entries of the batch (equals
    ``F.binary_cross_entropy_with_logits`` when no label is unknown).
    """

    unknown_targets = "ignored"

    def forward(self, logits: torch.Tensor, targets: Any) -> torch.Tensor:
        x, pos, neg, _ = self._inputs(logits, targets)
        known = pos + neg
        per = F.binary_cross_entropy_with_logits(x, pos, reduction="none") * known
        return self._reduce(per.sum(), known.sum())


@LOSSES.register("multilabel_soft_margin")
class MultiLabelSoftMarginLoss(MLRLoss):
    """Per image, the mean over its known labels of the binary cross-entropy (the
    ``torch.nn.MultiLabelSoftMarginLoss`` form).

    Unknown (0): ignored; an image's mean runs over its known labels only, and an image with
    no known label contributes nothing. ``mean``: average over the images that have a known
    label (equals ``torch.nn.MultiLabelSoftMarginLoss`` with full labels); ``sum``: their sum.
    """

    unknown_targets = "ignored (per-image mean over known labels)"

    def forward(self, logits: torch.Tensor, targets: Any) -> torch.Tensor:
        x, pos, neg, _ = self._inputs(logits, targets)
        known = pos + neg
        per = F.binary_cross_entropy_with_logits(x, pos, reduction="none") * known
        k = known.sum(1)
        per_image = per.sum(1) / k.clamp_min(1)
        return self._reduce(per_image.sum(), (k > 0).sum())


def _asl_terms(x: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor, gamma_pos: float,
               gamma_neg: float, clip: float, eps: float, detach: bool) -> torch.Tensor:
    """Element-wise asymmetric loss (ASL eq. 1-4), zero where neither mask is set.

    ``L+ = (1-p)^g+ log(p)``; ``L- = p_m^g- log(1-p_m)`` with the shifted probability
    ``p_m = max(p - m, 0)``; logs are floored at ``log(eps)`` like the reference code.
    """
    log_floor = math.log(eps) if eps > 0 else -math.inf
    log_p = _log_p(x).clamp_min(log_floor)
    if clip > 0:
        p = torch.sigmoid(x)
        one_minus_pm = (torch.sigmoid(-x) + clip).clamp(max=1.0)  # ASL eq. 3: 1 - p_m
        log_neg = torch.log(one_minus_pm.clamp_min(eps) if eps > 0 else one_minus_pm)
        pm = (p - clip).clamp_min(0.0)  # p_m = max(p - m, 0)
    else:
        log_neg = _log_1mp(x).clamp_min(log_floor)
        pm = torch.sigmoid(x)
    w_pos = torch.sigmoid(-x).pow(gamma_pos) if gamma_pos != 0 else None  # (1 - p)^g+
    w_neg = pm.pow(gamma_neg) if gamma_neg != 0 else None  # p_m^g-
    if detach:
        w_pos = None if w_pos is None else w_pos.detach()
        w_neg = None if w_neg is None else w_neg.detach()
    lp = log_p if w_pos is None else w_pos * log_p
    ln = log_neg if w_neg is None else w_neg * log_neg
    return -(pos * lp + neg * ln)  # ASL eq. 2: L = -y L+ - (1 - y) L-


@LOSSES.register("asl")
class AsymmetricLoss(MLRLoss):
    """Asymmetric loss (Ridnik et al. 2021, ASL eq. 1-4) on the known labels.

    Defaults are the paper's: ``gamma_pos=0``, ``gamma_neg=4``, probability margin
    ``clip=0.05``, ``eps=1e-8``. ``detach_focal_weight=True`` keeps the focusing weights out of
    the gradient (the reference code's ``disable_torch_grad_focal_loss``, as its training
    script sets it). Unknown (0): ignored. ``sum``: the reference code's ``-loss.sum()``;
    ``mean``: that sum over the number of known entries.
    """

    unknown_targets = "ignored"

    def __init__(self, reduction: str = "mean", gamma_pos: float = 0.0, gamma_neg: float = 4.0,
                 clip: float = 0.05, eps: float = 1e-8, detach_focal_weight: bool = True) -> None:
        super().__init__(reduction)
        if gamma_pos < 0 or gamma_neg < 0 or not 0 <= clip < 1 or eps < 0:
            raise ValueError("asl: need gamma_pos, gamma_neg >= 0, 0 <= clip < 1, eps >= 0")
        self.gamma_pos, self.gamma_neg = float(gamma_pos), float(gamma_neg)
        self.clip, self.eps = float(clip), float(eps)
        self.detach_focal_weight = bool(detach_focal_weight)

    def forward(self, logits: torch.Tensor, targets: Any) -> torch.Tensor:
        x, pos, neg, _ = self._inputs(logits, targets)
        per = _asl_terms(x, pos, neg, self.gamma_pos, self.gamma_neg, self.clip, self.eps,
                         self.detach_focal_weight)
        return self._reduce(per.sum(), self._count(x, pos, neg))

    def _count(self, x: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> Any:
        """What ``mean`` divides by: the known entries."""
        return (pos + neg).sum()


# ---------------------------------------------------------------------- partial labels
@LOSSES.register("partial_bce")
class PartialBCELoss(MLRLoss):
    """Partial-BCE (Durand et al. 2019, eq. 3): per image
    ``-(g(p_y) / C) * sum_{known c} [y_c log p_c + (1 - y_c) log(1 - p_c)]``,
    where ``p_y`` is the image's fraction of known labels and ``g(p) = alpha p^gamma + beta``.

    Defaults follow the paper: ``gamma=1`` and alpha, beta fixed by ``g(0.1) = 5`` and
    ``g(1) = 1`` (so alpha = -4/0.9, beta = 1 + 4/0.9); pass ``alpha`` and ``beta`` to set them
    directly. Unknown (0): ignored. ``mean``: average over the images of the batch.
    """

    unknown_targets = "ignored; the image's known fraction sets the weight g(p)"

    def __init__(self, reduction: str = "mean", gamma: float = 1.0, alpha: float | None = None,
                 beta: float | None = None) -> None:
        super().__init__(reduction)
        if (alpha is None) != (beta is None):
            raise ValueError("partial_bce: give both alpha and beta, or neither")
        if alpha is None:
            if gamma == 0:
                raise ValueError("partial_bce: gamma=0 makes g constant; give alpha and beta")
            # g(0.1) = 5 and g(1) = 1  ->  alpha (0.1^gamma - 1) = 4
            alpha = 4.0 / (0.1 ** gamma - 1.0)
            beta = 1.0 - alpha
        self.gamma, self.alpha, self.beta = float(gamma), float(alpha), float(beta)

    def forward(self, logits: torch.Tensor, targets: Any) -> torch.Tensor:
        x, pos, neg, _ = self._inputs(logits, targets)
        c = x.shape[1]
        known = pos + neg
        frac = known.sum(1) / c
        # an image with no known label has an empty sum; evaluate g away from p = 0 there
        g = self.alpha * frac.clamp_min(1.0 / c).pow(self.gamma) + self.beta  # Durand eq. 4
        per = F.binary_cross_entropy_with_logits(x, pos, reduction="none") * known
        per_image = g / c * per.sum(1)  # Durand eq. 3
        return self._reduce(per_image.sum(), x.shape[0])


@LOSSES.register("partial_asl")
class PartialAsymmetricLoss(AsymmetricLoss):
    """Partial asymmetric loss (SD-CSP eq. 10-11): the ASL terms on the known labels only,
    ``L = -sum_{c: y=1} (1-p)^g+ log p - sum_{c: y=-1} p_m^g- log(1 - p_m)``,
    ``p_m = max(p - m, 0)``.

    Defaults ``gamma_pos=1``, ``gamma_neg=2``, ``clip=m=0.05``, focusing weights detached
    (as the DualCoOp / SD-CSP code). Unknown (0): ignored. ``mean``: the per-image sums
    averaged over the batch (the reference code's ``-loss.sum() / batch_size``).
    """

    def __init__(self, reduction: str = "mean", gamma_pos: float = 1.0, gamma_neg: float = 2.0,
                 clip: float = 0.05, eps: float = 1e-8, detach_focal_weight: bool = True) -> None:
        super().__init__(reduction, gamma_pos, gamma_neg, clip, eps, detach_focal_weight)

    def _count(self, x: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> Any:
        return x.shape[0]


# ------------------------------------------------------------------ single positive labels
#: the constant the single-positive reference code adds inside its logs: ``-log(p + 1e-5)``
#: (``LOG_EPSILON`` of Cole et al. 2021 and of SPML-AckTheUnknown / SigRL, which copy it)
SPL_REFERENCE_LOG_EPS = 1e-5


def _spl_logs(x: torch.Tensor, log_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p, log(1-p))`` of ``p = sigmoid(x)``; with ``log_eps > 0`` the reference code's
    floored form ``(log(p + eps), log(1 - p + eps))``.

    The floor bounds every ``-log`` term by ``-log(eps)`` (11.5 at 1e-5) and makes its
    gradient ``p(1-p) / (p + eps)`` vanish where ``p << eps``: a confidently wrong score
    stops being pushed. ``1 - p`` is taken as ``sigmoid(-x)`` (no cancellation near p = 1).
    """
    if log_eps == 0:
        return _log_p(x), _log_1mp(x)
    return (torch.log(torch.sigmoid(x) + log_eps),  # Cole et al. neg_log(p)
            torch.log(torch.sigmoid(-x) + log_eps))  # Cole et al. neg_log(1 - p)


class _SPLLoss(MLRLoss):
    """Single-positive losses: a per-entry loss matrix; ``mean`` divides its sum by B * C
    (Cole et al. 2021 / Zhou et al. 2022 reference code). Targets: 1 = observed positive,
    0 = unobserved, -1 = a negative that is known (absent in the pure single-positive setting).

    ``log_eps``: 0 (default) uses the exact ``log sigmoid``; ``1e-5``
    (:data:`SPL_REFERENCE_LOG_EPS`) reproduces the reference code's ``-log(p + 1e-5)`` and
    ``-log(1 - p + 1e-5)`` in every term, which bounds each term by ``-log(eps)`` and stops
    the gradient of confidently wrong scores.
    """

    def __init__(self, reduction: str = "mean", log_eps: float = 0.0) -> None:
        super().__init__(reduction)
        if not (math.isfinite(log_eps) and 0 <= log_eps < 1):
            raise ValueError(f"{type(self).__name__}: log_eps must be in [0, 1), got {log_eps}")
        self.log_eps = float(log_eps)

    def _logs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _spl_logs(x, self.log_eps)

    def _finish(self, per: torch.Tensor) -> torch.Tensor:
        return self._reduce(per.sum(), per.numel())

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", log_eps={self.log_eps}" if self.log_eps else "")


@LOSSES.register("an")
class AssumeNegativeLoss(_SPLLoss):
    """AN (Cole et al. 2021): BCE with every unobserved label taken as negative.

    Unknown (0): treated as negative.
    """

    unknown_targets = "treated as negative"

    def forward(self, logits: torch.Tensor, targets: Any) -> torch.Tensor:
        x, pos, _, _ = self._inputs(logits, targets)
        log_p, log_1mp = self._logs(x)
        return self._finish(-(pos * log_p + (1 - pos) * log_1mp))


@LOSSES.register("an_ls")
class AssumeNegativeLSLoss(_SPLLoss):
    """AN-LS (Cole et al. 2021): AN with label smoothing ``ls_coef`` (default 0.1): positives
    are fit to ``1 - ls_coef``, the rest to ``ls_coef``. Unknown (0): treated as negative."""

    unknown_targets = "treated as negative (smoothed)"

    def __init__(self, reduction: str = "mean", ls_coef: float = 0.1,
                 log_eps: float = 0.0) -> None:
        super().__init__(reduction, log_eps)
        if not 0 <= ls_coef < 0.5:
            raise ValueError(f"an_ls: ls_coef must be in [0, 0.5), got {ls_coef}")
        self.ls_coef = float(ls_coef)

    def forward(self, logits: torch.Tensor, targets: Any) -> torch.Tensor:
        x, pos, _, _ = self._inputs(logits, targets)
        e = self.ls_coef
        soft = pos * (1 - e) + (1 - pos) * e
        log_p, log_1mp = self._logs(x)
        return self._finish(-(soft * log_p + (1 - soft) * log_1mp))


@LOSSES.register("wan")
class WeakAssumeNegativeLoss(_SPLLoss):
    """WAN (Cole et al. 2021): AN with the assumed negatives down-weighted by
    ``weight = 1 / (C - 1)`` (default). Unknown (0): negative with that weight; a known
    negative (-1) keeps weight 1."""

    unknown_targets = "treated as negative with weight 1/(C-1)"

    def __init__(self, reduction: str = "mean", weight: float | None = None,
                 log_eps: float = 0.0) -> None:
        super().__init__(reduction, log_eps)
        self.weight = weight

    def forward(self, logits: torch.Tensor, targets: Any) -> torch.Tensor:
        x, pos, neg, unk = self._inputs(logits, targets)
        c = x.shape[1]
        if self.weight is None and c < 2:
            raise ValueError("wan: the default weight 1/(C-1) needs at least 2 classes")
        w = 1.0 / (c - 1) if self.weight is None else float(self.weight)
        log_p, log_1mp = self._logs(x)
        return self._finish(-(pos * log_p + (neg + w * unk) * log_1mp))


@LOSSES.register("iun")
class IgnoreUnobservedNegativesLoss(_SPLLoss):
    """IUN (Cole et al. 2021): BCE on the observed positives and the true negatives only.

    It is the oracle baseline: the targets must mark every true negative with -1 and leave
    the unobserved positives at 0. Unknown (0): ignored. ``mean`` divides by B * C as Cole
    et al. do (``bce`` divides by the number of known entries instead).
    """

    unknown_targets = "ignored"

    def forward(self, logits: torch.Tensor, targets: Any) -> torch.Tensor:
        x, pos, neg, _ = self._inputs(logits, targets)
        log_p, log_1mp = self._logs(x)
        return self._finish(-(pos * log_p + neg * log_1mp))


def _entropy(x: torch.Tensor, log_p: torch.Tensor, log_1mp: torch.Tensor) -> torch.Tensor:
    """Binary entropy of sigmoid(x): ``-(p log p + (1-p) log(1-p))`` with the given logs
    (exact or floored), finite for any x."""
    return -(torch.sigmoid(x) * log_p + torch.sigmoid(-x) * log_1mp)


@LOSSES.register("em")
class EntropyMaximizationLoss(_SPLLoss):
    """EM (Zhou et al. 2022, eq. 5): ``-log p`` on observed positives and ``-alpha H(p)`` on
    unobserved labels (maximizing their entropy), ``alpha`` default 0.1 (their COCO / NUS
    value; 0.2 on VOC). Unknown (0): the entropy term. A known negative (-1): ``-log(1-p)``.
    ``log_eps=1e-5`` floors the logs (entropy term included) as the reference does.
    """

    unknown_targets = "entropy maximization (-alpha H(p))"

    def __init__(self, reduction: str = "mean", alpha: float = 0.1,
                 log_eps: float = 0.0) -> None:
        super().__init__(reduction, log_eps)
        self.alpha = float(alpha)

    def forward(self, logits: torch.Tensor, targets: Any) -> torch.Tensor:
        x, pos, neg, unk = self._inputs(logits, targets)
        log_p, log_1mp = self._logs(x)
        per = -(pos * log_p + neg * log_1mp)
        per = per - self.alpha * unk * _entropy(x, log_p, log_1mp)  # Zhou eq. 5
        return self._finish(per)


@LOSSES.register("em_apl")
class EMAPLLoss(_SPLLoss):
    """EM with asymmetric pseudo-labels (Zhou et al. 2022, eq. 5-7).

    Terms: observed positive ``-log p``; known negative ``-log(1-p)``; pseudo-negative with
    soft label ``s`` (the prediction when it was chosen) ``beta [s(-log p) + (1-s)(-log(1-p))]``;
    any other unobserved label ``-alpha H(p)``.

    State across epochs (kept in ``state_dict`` through ``get_extra_state``):

    * ``set_epoch(e)`` with ``e`` counting from 1 (the epoch that has just been trained);
    * ``update_pseudo_labels(probs, targets)`` after each training epoch, with the whole
      training set's probabilities (N, C) and observed targets. From epoch ``warmup_epochs``
      on, for every class it marks the ``int(neg_proportion * U_c / (num_epochs -
      warmup_epochs))`` unobserved, not yet pseudo-labeled entries of lowest probability as
      pseudo-negatives (``U_c``: unobserved entries of class c at the first call);
    * ``forward(logits, targets, index=rows)`` with the dataset rows of the batch once any
      pseudo-label exists.

    Defaults are the reference COCO setting (SPML-AckTheUnknown ``main.py``: alpha 0.1,
    beta 0.9, warm-up 5 of 10 epochs, neg_proportion 0.9); VOC: alpha 0.2, beta 0.02, warm-up
    5; NUS-WIDE: alpha 0.1, beta 0.2, warm-up 4; CUB: alpha 0.01, beta 0.4, warm-up 3 (all
    neg_proportion 0.9 of 10 epochs). The reference labels after every epoch ``e >= warm-up``
    (1-based), so rounds run at epochs 5..10 there. ``log_eps=1e-5`` floors the logs as the
    reference does (:class:`_SPLLoss`). Unknown (0): entropy term, or the pseudo-negative term
    once chosen.
    """

    unknown_targets = "entropy maximization, or soft pseudo-negative once selected"

    def __init__(self, reduction: str = "mean", alpha: float = 0.1, beta: float = 0.9,
                 warmup_epochs: int = 5, num_epochs: int = 10,
                 neg_proportion: float = 0.9, log_eps: float = 0.0) -> None:
        super().__init__(reduction, log_eps)
        if num_epochs <= warmup_epochs:
            raise ValueError(f"em_apl: num_epochs ({num_epochs}) must exceed warmup_epochs "
                             f"({warmup_epochs})")
        if not 0 <= neg_proportion <= 1:
            raise ValueError(f"em_apl: neg_proportion must be in [0, 1], got {neg_proportion}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.warmup_epochs, self.num_epochs = int(warmup_epochs), int(num_epochs)
        self.neg_proportion = float(neg_proportion)
        self.epoch = 0
        self.pseudo_mask: torch.Tensor | None = None  # (N, C) bool: pseudo-negative chosen
        self.pseudo_value: torch.Tensor | None = None  # (N, C) float: its soft label s
        self.unlabeled_count: torch.Tensor | None = None  # (C,) U_c

    def set_epoch(self, epoch: int) -> None:
        """Record the epoch just trained (counting from 1)."""
        self.epoch = int(epoch)

    def get_extra_state(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pseudo_mask": self.pseudo_mask,
                "pseudo_value": self.pseudo_value, "unlabeled_count": self.unlabeled_count}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.epoch = int(state["epoch"])
        self.pseudo_mask = state["pseudo_mask"]
        self.pseudo_value = state["pseudo_value"]
        self.unlabeled_count = state["unlabeled_count"]

    @torch.no_grad()
    def update_pseudo_labels(self, probs: torch.Tensor, targets: Any,
                             epoch: int | None = None) -> int:
        """Choose this epoch's pseudo-negatives (class-aware, lowest probabilities first);
        return how many were added. Does nothing before ``warmup_epochs``."""
        if epoch is not None:
            self.set_epoch(epoch)
        p = torch.as_tensor(probs).detach().float().cpu()
        t = validate_targets(torch.as_tensor(targets).detach().cpu())
        if p.shape != t.shape:
            raise ValueError(f"em_apl: probs {tuple(p.shape)} and targets {tuple(t.shape)} "
                             "must both be (N, C) over the whole training set")
        if not bool(torch.isfinite(p).all()) or float(p.min()) < 0 or float(p.max()) > 1:
            raise ValueError("em_apl: probs must be probabilities in [0, 1] (apply a sigmoid)")
        if self.pseudo_mask is None:
            self.pseudo_mask = torch.zeros(t.shape, dtype=torch.bool)
            self.pseudo_value = torch.zeros(t.shape, dtype=torch.float32)
            self.unlabeled_count = (t == 0).sum(0)
        elif self.pseudo_mask.shape != t.shape:
            raise ValueError(f"em_apl: pseudo-labels cover {tuple(self.pseudo_mask.shape)} "
                             f"entries, got {tuple(t.shape)}")
        if self.epoch < self.warmup_epochs:
            return 0
        eligible = (t == 0) & ~self.pseudo_mask
        quota = (self.neg_proportion * self.unlabeled_count.double()
                 / (self.num_epochs - self.warmup_epochs)).floor().long()  # per class
        key = torch.where(eligible, p, torch.full_like(p, math.inf))
        order = torch.argsort(key, dim=0, stable=True)  # ascending probability per class
        rank = torch.empty_like(order)
        rank.scatter_(0, order, torch.arange(p.shape[0]).unsqueeze(1).expand_as(order))
        chosen = eligible & (rank < quota.unsqueeze(0))
        self.pseudo_mask |= chosen
        self.pseudo_value[chosen] = p[chosen]
        return int(chosen.sum())

    def forward(self, logits: torch.Tensor, targets: Any,
                index: torch.Tensor | None = None) -> torch.Tensor:
        x, pos, neg, unk = self._inputs(logits, targets)
        if self.pseudo_mask is not None and bool(self.pseudo_mask.any()):
            if index is None:
                raise ValueError("em_apl: pseudo-labels exist; pass index= (the dataset rows "
                                 "of this batch) to the loss")
            idx = torch.as_tensor(index, dtype=torch.long).cpu()
            pm = self.pseudo_mask[idx].to(x.device, x.dtype) * unk
            s = self.pseudo_value[idx].to(x.device, x.dtype)
        else:
            pm = torch.zeros_like(x)
            s = torch.zeros_like(x)
        rest = unk - pm
        log_p, log_1mp = self._logs(x)
        per = -(pos * log_p + neg * log_1mp)
        per = per - self.alpha * rest * _entropy(x, log_p, log_1mp)  # Zhou eq. 5
        per = per - self.beta * pm * (s * log_p + (1 - s) * log_1mp)  # Zhou eq. 7
        return self._finish(per)


# --------------------------------------------------------------------------------- SigRL
@LOSSES.register("ranking")
class RankingLoss(MLRLoss):
    """Pairwise hinge ranking loss (SigRL eq. 15): for each image, every positive p against
    every negative n, ``max(0, margin + s_n - s_p)``, margin 1.

    ``normalize``: ``"violations"`` (default; the SigRL / BiAM code divides each image's sum
    by its number of violating pairs), ``"pairs"`` (by its number of positive-negative pairs)
    or ``"none"``. Unknown (0): ignored (in no pair). ``mean``: average over the images of the
    batch. Memory is B x C x C.
    """

    unknown_targets = "ignored"

    def __init__(self, reduction: str = "mean", margin: float = 1.0,
                 normalize: str = "violations") -> None:
        super().__init__(reduction)
        if normalize not in ("violations", "pairs", "none"):
            raise ValueError(f"ranking: normalize must be 'violations', 'pairs' or 'none', "
                             f"got {normalize!r}")
        self.margin, self.normalize = float(margin), normalize

    def forward(self, logits: torch.Tensor, targets: Any) -> torch.Tensor:
        x, pos, neg, _ = self._inputs(logits, targets)
        pair = pos.unsqueeze(2) * neg.unsqueeze(1)  # (B, P, N)
        hinge = F.relu(self.margin + x.unsqueeze(1) - x.unsqueeze(2)) * pair  # SigRL eq. 15
        total = hinge.sum((1, 2))
        if self.normalize == "violations":
            total = total / (hinge > 0).sum((1, 2)).clamp_min(1)
        elif self.normalize == "pairs":
            total = total / pair.sum((1, 2)).clamp_min(1)
        return self._reduce(total.sum(), x.shape[0])


@LOSSES.register("l1_distill")
class L1DistillLoss(MLRLoss):
    """L1 distillation (SigRL eq. 16): ``|f_student - f_teacher|`` between two embeddings of
    the same shape, called as ``loss(student, teacher)``. The teacher is detached by default.

    No targets, so nothing unknown. ``mean``: average over all elements (``F.l1_loss``).
    """

    unknown_targets = "not applicable (no targets)"

    def __init__(self, reduction: str = "mean", detach_teacher: bool = True) -> None:
        super().__init__(reduction)
        self.detach_teacher = bool(detach_teacher)

    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        if not isinstance(student, torch.Tensor) or not isinstance(teacher, torch.Tensor):
            raise ValueError("l1_distill: student and teacher must be tensors")
        if student.shape != teacher.shape:
            raise ValueError(f"l1_distill: student {tuple(student.shape)} and teacher "
                             f"{tuple(teacher.shape)} must have the same shape")
        t = teacher.detach() if self.detach_teacher else teacher
        diff = (student - t.to(student.dtype)).abs()  # SigRL eq. 16
        return self._reduce(diff.sum(), diff.numel())
