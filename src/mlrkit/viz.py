"""Figures (PNG, matplotlib Agg) and attention overlays (PIL).

* :func:`plot_pr_curves`: every class's precision-recall curve on one set of axes.
* :func:`plot_pr_grid`: the same curves as small multiples, one small panel per class.
* :func:`plot_per_class_ap`: AP per class as sorted horizontal bars.
* :func:`plot_threshold_f1`: overall and per-class-averaged F1 against one global threshold.
* :func:`overlay`: an image beside its top classes' attention maps, as one PIL image.

Shared conventions: axes are in percent; precision-recall curves are step functions (the
precision at a score cut holds over the recall interval that cut adds, so the area under a
curve is the ``sklearn`` AP); target entries ``0`` (unknown) are left out; classes without a
positive are not drawn but listed under the figure; every figure takes ``context`` (e.g. the
split and the checkpoint) as a second title line. The figures stay readable from a handful of
classes to COCO's 80: legends are capped and move outside the axes, panels wrap into rows.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .metrics import _to_numpy as _np

__all__ = [
    "f1_vs_threshold",
    "overlay",
    "plot_per_class_ap",
    "plot_pr_curves",
    "plot_pr_grid",
    "plot_threshold_f1",
    "precision_recall_curve",
]

_DPI = 110
_GOOD = "#2b7bba"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt




def _percent_axis(axis: Any, decimals: int = 0) -> None:
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(1.0, decimals=decimals))


def _title(title: str, context: str | None) -> str:
    return f"{title}\n{context}" if context else title


def _short(name: str, n: int = 18) -> str:
    return name if len(name) <= n else name[:n - 1] + "…"


def _missing_note(names: Sequence[str], limit: int = 30) -> str:
    shown = ", ".join(names[:limit])
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return f"Not drawn, no positive in this split ({len(names)}): {shown}{more}"


def _footer(fig: Any, text: str, width_chars: int) -> None:
    fig.text(0.01, 0.005, "\n".join(textwrap.wrap(text, width_chars)), fontsize=7,
             color="#555555", va="bottom", ha="left")


def _save(fig: Any, path: str | Path, bottom: float = 0.0) -> Path:
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------- curves
def precision_recall_curve(scores: Any, targets: Any, c: int
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of class ``c`` at each distinct score cut, highest cut first
    (a label is predicted when its score is ``>=`` the cut, so tied scores form one cut).
    Entries whose target is 0 are left out. A class without positives has recall 0."""
    s, t = _np(scores)[:, c], _np(targets)[:, c]
    keep = t != 0
    s, pos = s[keep].astype(np.float64), t[keep] > 0
    if s.size == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-s, kind="stable")
    s, pos = s[order], pos[order]
    tp = np.cumsum(pos)
    k = np.arange(1, len(s) + 1)
    last = np.r_[s[1:] != s[:-1], True]  # the last row of each group of tied scores
    n_pos = max(int(pos.sum()), 1)
    return tp[last] / k[last], tp[last] / n_pos


def _step(prec: np.ndarray, rec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x, y for ``drawstyle="steps-pre"``: precision ``p_k`` over recall ``(r_{k-1}, r_k]``,
    starting at recall 0."""
    if prec.size == 0:
        return np.zeros(0), np.zeros(0)
    return np.r_[0.0, rec], np.r_[prec[0], prec]


def _curves(scores: Any, targets: Any, n: int) -> tuple[list[tuple[np.ndarray, np.ndarray]],
                                                       np.ndarray, np.ndarray]:
    """Per class: the step curve, the number of positives and the number of known entries."""
    t = _np(targets)
    npos = (t == 1).sum(0)
    nknown = (t != 0).sum(0)
    curves = [_step(*precision_recall_curve(scores, t, c)) for c in range(n)]
    return curves, npos, nknown


def _ap_from_curves(curves: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    out = np.full(len(curves), math.nan)
    for c, (x, y) in enumerate(curves):
        if x.size:
            out[c] = float(np.sum(np.diff(x) * y[1:]))
    return out


def plot_pr_curves(scores: Any, targets: Any, names: Sequence[str], path: str | Path,
                   title: str = "Precision-recall per class", *, context: str | None = None,
                   ap: Sequence[float] | None = None, max_legend: int = 12) -> Path:
    """All classes' precision-recall step curves on one set of axes (PNG at ``path``).

    ``scores`` (N, C) any real scores (probabilities or logits); ``targets`` (N, C) in
    {1, -1, 0}. ``ap``: AP per class as fractions (NaN for classes without positives) for
    the legend; by default the area under each step curve (the ``sklearn`` AP). With up to
    ``max_legend`` classes each curve has its own colour and legend entry; with more, all
    curves are drawn thin and grey and only the 5 best and 5 worst classes by AP are
    coloured and named. Classes without positives are not drawn; they are listed below.
    """
    plt = _plt()
    names = list(names)
    curves, npos, _ = _curves(scores, targets, len(names))
    aps = _np(ap).astype(float) if ap is not None else _ap_from_curves(curves)
    drawn = [c for c in range(len(names)) if npos[c] > 0]
    missing = [names[c] for c in range(len(names)) if npos[c] == 0]
    many = len(drawn) > max_legend
    if many:
        ranked = sorted(drawn, key=lambda c: -aps[c])
        named = ranked[:5] + [c for c in ranked[-5:] if c not in ranked[:5]]
    else:
        named = drawn
    legend_outside = len(named) > 8
    fig, ax = plt.subplots(figsize=(9.5 if legend_outside else 7, 6))
    cmap = plt.get_cmap("tab10" if len(named) <= 10 else "tab20")
    if many:
        for c in drawn:
            if c not in named:
                x, y = curves[c]
                ax.plot(x, y, drawstyle="steps-pre", lw=0.6, color="#b0b0b0", alpha=0.7)
    for i, c in enumerate(named):
        x, y = curves[c]
        ax.plot(x, y, drawstyle="steps-pre", lw=1.4, color=cmap(i % cmap.N),
                label=f"{_short(names[c], 22)} (AP {100 * aps[c]:.1f}%)")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    _percent_axis(ax.xaxis)
    _percent_axis(ax.yaxis)
    ax.grid(alpha=0.25)
    head = title
    if many:
        head += f" ({len(drawn) - len(named)} more classes in grey)"
    ax.set_title(_title(head, context), fontsize=10)
    if named:
        if legend_outside:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
                      title="5 best, 5 worst AP" if many else None, title_fontsize=7)
        else:
            ax.legend(fontsize=7, loc="lower left")
    bottom = 0.0
    if missing:
        _footer(fig, _missing_note(missing), 150 if legend_outside else 110)
        bottom = 0.07
    return _save(fig, path, bottom)


def plot_pr_grid(scores: Any, targets: Any, names: Sequence[str], path: str | Path,
                 title: str = "Precision-recall per class", *, context: str | None = None,
                 ap: Sequence[float] | None = None, ncols: int | None = None) -> Path:
    """Precision-recall step curves as small multiples: one panel per class with a
    positive, in the order given, each titled with the class name and AP (``ap`` as
    fractions, default the area under the step curve); the dashed line is the class's
    share of positives (the precision of random scores). Classes without positives get no
    panel; they are listed below the grid."""
    plt = _plt()
    from matplotlib.ticker import FixedFormatter, FixedLocator

    names = list(names)
    curves, npos, nknown = _curves(scores, targets, len(names))
    aps = _np(ap).astype(float) if ap is not None else _ap_from_curves(curves)
    drawn = [c for c in range(len(names)) if npos[c] > 0]
    missing = [names[c] for c in range(len(names)) if npos[c] == 0]
    n = max(len(drawn), 1)
    ncols = ncols or (n if n <= 5 else min(10, math.ceil(math.sqrt(n * 1.25))))
    nrows = math.ceil(n / ncols)
    # fixed margins in inches (tight_layout and shared axes cost O(panels^2) at 80 panels)
    panel_w, panel_h, left, right, top = 1.5, 1.45, 0.62, 0.15, 0.75
    bottom = 0.45 + (0.16 * len(textwrap.wrap(_missing_note(missing, 40),
                                              int(17 * (panel_w * ncols)))) + 0.1
                     if missing else 0.0)
    width = max(6.5, left + right + panel_w * ncols)  # at least the width of the title
    height = top + bottom + panel_h * nrows
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False)
    fig.subplots_adjust(left=left / width, right=1 - right / width, top=1 - top / height,
                        bottom=bottom / height, wspace=0.12, hspace=0.55)
    for i, ax in enumerate(axes.flat):
        if i >= len(drawn):
            ax.set_visible(False)
            continue
        c = drawn[i]
        r, col = divmod(i, ncols)
        x, y = curves[c]
        ax.fill_between(x, y, step="pre", color=_GOOD, alpha=0.18, lw=0)
        ax.plot(x, y, drawstyle="steps-pre", lw=1.1, color=_GOOD)
        ax.axhline(npos[c] / max(nknown[c], 1), color="#999999", lw=0.7, ls="--")
        ax.set_title(f"{_short(names[c])}\nAP {100 * aps[c]:.1f}%  ({int(npos[c])} pos)",
                     fontsize=7, pad=2)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.03)
        for axis in (ax.xaxis, ax.yaxis):  # "%" in the axis labels: no tick labels collide
            axis.set_major_locator(FixedLocator([0, 0.5, 1]))
            axis.set_major_formatter(FixedFormatter(["0", "50", "100"]))
        ax.tick_params(labelsize=6, length=2, pad=1)
        ax.grid(alpha=0.2)
        # tick labels on the outer panels only: the left column and each column's last panel
        if col == 0:
            ax.set_ylabel("precision (%)", fontsize=7)
        else:
            ax.tick_params(labelleft=False)
        if i + ncols < len(drawn):
            ax.tick_params(labelbottom=False)
        else:
            ax.set_xlabel("recall (%)", fontsize=7, labelpad=1)
    fig.suptitle(_title(title, context), fontsize=10, y=1 - 0.12 / height, va="top")
    if missing:
        _footer(fig, _missing_note(missing, 40), int(17 * (panel_w * ncols)))
    if not drawn:
        axes.flat[0].set_visible(True)
        axes.flat[0].text(0.5, 0.5, "no class has a positive", ha="center", va="center")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI)
    plt.close(fig)
    return path


def plot_per_class_ap(ap: Sequence[float], names: Sequence[str], path: str | Path,
                      title: str = "Average precision per class", *,
                      context: str | None = None, positives: Sequence[int] | None = None,
                      sort: bool = True) -> Path:
    """AP per class as horizontal bars, **in percent** (0-100, NaN for a class without
    positives), best first when ``sort``. A class without positives gets no bar (it is not
    an AP of 0): it is listed at the bottom as "no positives". The dashed line is the mean
    over the classes with positives (mAP). ``positives``: counts shown after the names."""
    plt = _plt()
    names = list(names)
    vals = _np(ap).astype(float)
    if vals.shape != (len(names),):
        raise ValueError(f"plot_per_class_ap: {vals.size} values for {len(names)} names")
    valid = [c for c in range(len(names)) if not math.isnan(vals[c])]
    empty = [c for c in range(len(names)) if math.isnan(vals[c])]
    if sort:
        valid.sort(key=lambda c: -vals[c])
    order = valid + empty
    label = [f"{_short(names[c], 24)}" + (f" ({int(positives[c])})" if positives is not None
                                          else "") for c in order]
    n = len(order)
    fs = 8 if n <= 40 else 7
    fig, ax = plt.subplots(figsize=(7.5, max(2.8, 0.19 * n + 1.5)))
    y = np.arange(n)
    ax.barh(y[:len(valid)], vals[valid] / 100.0, color=_GOOD, height=0.72)
    for i, c in enumerate(valid):
        ax.text(vals[c] / 100.0 + 0.008, i, f"{vals[c]:.1f}", va="center", fontsize=fs - 1)
    for i in range(len(valid), n):
        ax.text(0.01, i, "no positives (not scored)", va="center", fontsize=fs - 1,
                color="#777777", style="italic")
    xlabel = "average precision" + (" (positives in brackets)" if positives is not None
                                    else "")
    if valid:
        m = float(np.mean(vals[valid])) / 100.0
        ax.axvline(m, color="#c0392b", ls="--", lw=1)
        xlabel += (f"\nred dashed line: the mean over the {len(valid)} classes with "
                   f"positives, {100 * m:.1f}%")
    ax.set_yticks(y)
    ax.set_yticklabels(label, fontsize=fs)
    for tick, c in zip(ax.get_yticklabels(), order):
        if c in empty:
            tick.set_color("#777777")
    ax.set_ylim(n - 0.5, -0.7)
    ax.set_xlim(0, 1.08)
    ax.set_xticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    _percent_axis(ax.xaxis)
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.25)
    ax.set_title(_title(title, context), fontsize=10)
    return _save(fig, path)


# --------------------------------------------------------------------------- thresholds
def f1_vs_threshold(probs: Any, targets: Any, grid: Sequence[float] | np.ndarray | None = None
                    ) -> dict[str, np.ndarray]:
    """OP, OR, OF1 and CP, CR, CF1 (fractions) at each global probability threshold in
    ``grid`` (default 0.01 ... 0.99), with :func:`mlrkit.metrics.threshold_metrics`'s
    definitions (predicted when ``prob >= t``, 0 targets ignored, CP/CR over the classes
    with positives). Returns the arrays and ``"threshold"``, the grid."""
    p, t = _np(probs).astype(np.float64), _np(targets)
    g = np.asarray(np.linspace(0.01, 0.99, 99) if grid is None else grid, dtype=np.float64)
    c = p.shape[1]
    tp = np.zeros((c, g.size))
    npred = np.zeros((c, g.size))
    npos = (t == 1).sum(0).astype(np.float64)
    for j in range(c):
        known = np.sort(p[t[:, j] != 0, j])
        pos = np.sort(p[t[:, j] == 1, j])
        npred[j] = known.size - np.searchsorted(known, g, side="left")
        tp[j] = pos.size - np.searchsorted(pos, g, side="left")
    valid = npos > 0
    cp = (tp / np.maximum(npred, 1))[valid].mean(0) if valid.any() else np.zeros(g.size)
    cr = (tp / np.maximum(npos, 1)[:, None])[valid].mean(0) if valid.any() else np.zeros(g.size)
    tot = npred.sum(0)
    op = np.where(tot > 0, tp.sum(0) / np.maximum(tot, 1), 0.0)
    or_ = tp.sum(0) / max(npos.sum(), 1.0)

    def f1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.where(a + b > 0, 2 * a * b / np.maximum(a + b, 1e-12), 0.0)

    return {"threshold": g, "OP": op, "OR": or_, "OF1": f1(op, or_), "CP": cp, "CR": cr,
            "CF1": f1(cp, cr)}


def plot_threshold_f1(probs: Any, targets: Any, path: str | Path,
                      title: str = "F1 against one global threshold", *,
                      context: str | None = None, threshold: float | None = 0.5,
                      thresholds: Sequence[float] | None = None,
                      at_thresholds: dict[str, float] | None = None) -> Path:
    """Overall F1 (OF1, with OP and OR faint) and the class-averaged CF1 against a global
    probability threshold. ``threshold``: the global threshold in use (a vertical line).
    ``thresholds``: per-class thresholds, drawn as ticks along the bottom, with
    ``at_thresholds`` (``{"OF1": .., "CF1": ..}``, what the per-class thresholds reach) as
    dotted horizontal lines. The best global threshold for OF1 is marked."""
    plt = _plt()
    r = f1_vs_threshold(probs, targets)
    g = r["threshold"]
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    ax.plot(g, r["OP"], color="#7fb3d5", lw=1, label="OP (overall precision)")
    ax.plot(g, r["OR"], color="#f5b041", lw=1, label="OR (overall recall)")
    ax.plot(g, r["OF1"], color="#1f4e79", lw=2, label="OF1 (overall F1)")
    ax.plot(g, r["CF1"], color="#8e44ad", lw=1.6, ls="-.", label="CF1 (per-class averaged)")
    best = int(np.argmax(r["OF1"]))
    ax.plot([g[best]], [r["OF1"][best]], "o", color="#1f4e79")
    ax.annotate(f"best OF1 {100 * r['OF1'][best]:.1f}% at {100 * g[best]:.0f}%",
                (g[best], r["OF1"][best]), xytext=(6, 8), textcoords="offset points",
                fontsize=8, color="#1f4e79")
    if threshold is not None and not (isinstance(threshold, float) and math.isnan(threshold)):
        ax.axvline(float(threshold), color="#555555", ls="--", lw=1,
                   label=f"threshold in use ({100 * float(threshold):.0f}%)")
    if thresholds is not None:
        th = np.asarray(list(thresholds), dtype=float)
        ax.plot(th, np.full(th.size, 0.012), "|", color="#c0392b", ms=12, mew=1.2,
                label=f"per-class thresholds ({th.size})")
        for key, color in (("OF1", "#1f4e79"), ("CF1", "#8e44ad")):
            if at_thresholds and key in at_thresholds:
                ax.axhline(at_thresholds[key], color=color, ls=":", lw=1.2,
                           label=f"{key} with per-class thresholds "
                                 f"{100 * at_thresholds[key]:.1f}%")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    _percent_axis(ax.xaxis)
    _percent_axis(ax.yaxis)
    ax.set_xlabel("global probability threshold (predicted when score ≥ threshold)")
    ax.set_ylabel("value")
    ax.grid(alpha=0.25)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(_title(title, context), fontsize=10)
    return _save(fig, path)


# ------------------------------------------------------------------------------ overlays
def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _fit(img: Any, size: int, sharp: bool = False) -> Any:
    """``img`` scaled so that its longer side is ``size`` (aspect kept); with ``sharp``, a
    small picture enlarged 2x or more keeps its pixels (nearest neighbour)."""
    from PIL import Image

    w, h = img.size
    s = size / max(w, h)
    new = (max(1, round(w * s)), max(1, round(h * s)))
    if new == img.size:
        return img
    method = (Image.Resampling.NEAREST if sharp and s >= 2 else Image.Resampling.BICUBIC
              if s > 1 else Image.Resampling.LANCZOS)
    return img.resize(new, method)


def overlay(image: Any, maps: Any, names: Sequence[str], scores: Any = None, *,
            top_k: int = 3, classes: Sequence[int] | None = None, size: int = 224,
            alpha: float = 0.5, cmap: str = "jet", normalize: str = "each",
            include_image: bool = True) -> Any:
    """One PIL image: the picture, then one panel per chosen class with that class's map
    upsampled (bilinear) to the picture and blended over it with a colormap, its name and
    score written under the panel.

    ``image``: a PIL image, a path or an (H, W, 3) uint8 array. ``maps``: (C, h, w) class
    maps (``Output.attention`` of one image; any real values). ``names``: the C class names.
    ``scores``: (C,) probabilities; the ``top_k`` highest-scoring classes get panels (without
    scores, the classes with the strongest maps). ``classes``: class indices to show instead.
    ``size``: the panels' longer side in pixels. ``normalize``: ``"each"`` stretches every
    map to its own min..max (where each class looks, not how strongly; the default, since
    heads differ in what their maps hold), ``"joint"`` one min..max over the panels shown
    (strength comparable between panels), ``"none"`` clips to [0, 1] (sigmoid maps such as
    DLSA's). ``alpha``: the weight of the colour map in the blend.
    """
    from PIL import Image, ImageDraw

    if isinstance(image, str | Path):
        from .io import open_rgb

        image = open_rgb(image)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image = image.convert("RGB")
    m = _np(maps).astype(np.float32)
    if m.ndim != 3:
        raise ValueError(f"overlay: maps must be (C, h, w), got shape {m.shape}")
    names = list(names)
    if len(names) != m.shape[0]:
        raise ValueError(f"overlay: {len(names)} names for {m.shape[0]} maps")
    if normalize not in ("each", "joint", "none"):
        raise ValueError(f"overlay: normalize must be 'each', 'joint' or 'none', "
                         f"got {normalize!r}")
    sc = None if scores is None else _np(scores).astype(np.float64).reshape(-1)
    if classes is None:
        key = sc if sc is not None else m.reshape(m.shape[0], -1).max(1)
        classes = np.argsort(-key, kind="stable")[:max(0, int(top_k))].tolist()
    classes = [int(c) for c in classes]
    base = _fit(image, size)
    w, h = base.size
    chosen = m[classes] if classes else np.zeros((0, *m.shape[1:]), np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(chosen)[None], size=(h, w),
                                         mode="bilinear", align_corners=False)[0].numpy()
    # a map without contrast (constant over the picture) says nothing about where: such a
    # panel shows the picture untinted, marked "flat"
    flat = [bool(np.ptp(u) <= 1e-6 * max(1.0, float(np.abs(u).max()))) for u in up]
    if normalize == "joint" and up.size:
        lo, hi = float(up.min()), float(up.max())
        up = (up - lo) / (hi - lo) if hi > lo else np.zeros_like(up)
    elif normalize == "each" and up.size:
        lo = up.reshape(len(classes), -1).min(1)[:, None, None]
        hi = up.reshape(len(classes), -1).max(1)[:, None, None]
        up = np.where(hi > lo, (up - lo) / np.maximum(hi - lo, 1e-12), 0.0)
    up = np.clip(up, 0.0, 1.0)
    import matplotlib

    colormap = matplotlib.colormaps[cmap]
    rgb = np.asarray(base, dtype=np.float32) / 255.0
    fs = max(10, min(16, w // 12))
    font = _font(fs)
    text_h = fs + 8
    pad = 4
    panels = ([(base, "image")] if include_image else [])
    for k, c in enumerate(classes):
        col = colormap(up[k])[..., :3]
        blend = rgb if flat[k] else (1 - alpha) * rgb + alpha * col
        label = _short(names[c], max(8, w // (fs // 2 + 1)))
        if sc is not None:
            label += f" {100 * sc[c]:.0f}%"
        if flat[k]:
            label += " (flat)"
        panels.append((Image.fromarray((blend * 255).round().astype(np.uint8)), label))
    if not panels:
        panels = [(base, "image")]
    out = Image.new("RGB", (len(panels) * (w + pad) + pad, h + text_h + 2 * pad), "white")
    draw = ImageDraw.Draw(out)
    for i, (im, label) in enumerate(panels):
        x = pad + i * (w + pad)
        out.paste(im, (x, pad))
        draw.text((x + 2, pad + h + 3), label, fill=(20, 20, 20), font=font)
    return out
