"""A self-contained HTML report of a model on a split: one folder, ``index.html`` inside.

The folder holds ``index.html`` (inline CSS and a few lines of inline JavaScript, nothing
fetched from elsewhere), ``figures/*.png`` (matplotlib), ``images/*.jpg`` (gallery
thumbnails and attention overlays, copied and resized here, never linked to the original
files) and ``report.json`` (the same numbers for programs). Zip the folder and it opens
anywhere, offline.

Sections: the metrics with the settings behind them; AP per class (sorted, classes without
positives marked, not drawn as 0); precision-recall step curves as small multiples; F1
against one global threshold (with the per-class thresholds marked when there are some);
a gallery of images with predicted and true labels (correct / missed / false alarm) and,
for heads with attention, the top classes' maps; the gallery filters (all / with errors /
all correct, and one class) are plain JavaScript in the page.

Entry points: :func:`write_report` (scores, targets and optionally images you already
have), :func:`report_checkpoint` (a checkpoint on its validation split, or another split
via ``--set``-style overrides) and :func:`report_from_predictions` (the result of
:func:`mlrkit.engine.evaluation.predict_checkpoint`, when the caller has scored already).
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .io import atomic_write_text
from .metrics import EvaluationReport, evaluate
from .metrics import _to_numpy as _np
from .viz import _fit

__all__ = ["report_checkpoint", "report_from_predictions", "select_gallery", "write_report"]

ImageSource = Sequence[Any] | Callable[[int], Any]
AttentionSource = (Callable[[Sequence[int]], Any] | Mapping[int, Any] | torch.Tensor
                   | np.ndarray)




def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _pct(v: float, digits: int = 1) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else \
        f"{100 * v:.{digits}f}"


# ----------------------------------------------------------------------------- gallery
def select_gallery(probs: Any, targets: Any, threshold: Any, max_items: int = 48,
                   seed: int = 0) -> list[int]:
    """Rows for the gallery (ascending), at most ``max_items``.

    All rows when there are few enough. Otherwise, in a random order fixed by ``seed``:
    first one image per class that has positives (rarest class first), up to half the
    cap, so that the class filter has something to show; then the rest split evenly
    between images with at least one error (a missed label or a false alarm) and images
    without one, whichever runs out leaving its share to the other.
    """
    p, t = _np(probs), _np(targets)
    n = p.shape[0]
    if n <= max_items:
        return list(range(n))
    if max_items <= 0:
        return []
    thr = np.asarray(threshold, dtype=np.float64)
    pred = p >= (thr[None, :] if thr.ndim else float(thr))
    pos, neg = t == 1, t == -1
    err = ((pos & ~pred) | (neg & pred)).any(1)
    order = np.random.default_rng(seed).permutation(n)
    taken = np.zeros(n, dtype=bool)
    chosen: list[int] = []
    npos = pos.sum(0)
    for c in np.argsort(npos, kind="stable"):
        if npos[c] == 0:
            continue
        if len(chosen) >= max_items // 2:
            break
        cand = order[pos[order, c] & ~taken[order]]
        if cand.size:
            chosen.append(int(cand[0]))
            taken[cand[0]] = True
    rest = max_items - len(chosen)
    errs = order[err[order] & ~taken[order]]
    oks = order[~err[order] & ~taken[order]]
    n_err = min(errs.size, (rest + 1) // 2)
    n_ok = min(oks.size, rest - n_err)
    n_err = min(errs.size, rest - n_ok)
    chosen += [int(i) for i in errs[:n_err]] + [int(i) for i in oks[:n_ok]]
    return sorted(chosen)


def _load_image(images: ImageSource, i: int) -> Any:
    from PIL import Image

    src = images(i) if callable(images) else images[i]
    if isinstance(src, Image.Image):
        return src.convert("RGB")
    if isinstance(src, np.ndarray):
        return Image.fromarray(src).convert("RGB")
    from .io import open_rgb

    return open_rgb(src)


def _attention_rows(attention: AttentionSource | None, rows: list[int]
                    ) -> dict[int, np.ndarray]:
    if attention is None or not rows:
        return {}
    if isinstance(attention, Mapping):
        return {r: _np(attention[r]) for r in rows if r in attention}
    if callable(attention):
        maps = attention(rows)
        if maps is None:
            return {}
        maps = _np(maps)
        return {r: maps[k] for k, r in enumerate(rows)}
    maps = _np(attention)
    return {r: maps[r] for r in rows}


# ------------------------------------------------------------------------------ tables
def _per_class(probs: np.ndarray, t: np.ndarray, thr: np.ndarray, ap: np.ndarray,
               ) -> list[dict[str, Any]]:
    pred = probs >= thr[None, :]
    pos, known = t == 1, t != 0
    tp = (pred & pos).sum(0)
    npred = (pred & known).sum(0)
    npos = pos.sum(0)
    rows = []
    for c in range(t.shape[1]):
        p = tp[c] / npred[c] if npred[c] else 0.0
        r = tp[c] / npos[c] if npos[c] else math.nan
        f = (2 * p * r / (p + r) if p + r > 0 else 0.0) if npos[c] else math.nan
        rows.append({"class": c, "ap": float(ap[c]), "positives": int(npos[c]),
                     "known": int(known[:, c].sum()), "predicted": int(npred[c]),
                     "correct": int(tp[c]), "precision": float(p) if npos[c] else math.nan,
                     "recall": float(r), "f1": float(f), "threshold": float(thr[c])})
    return rows


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return _json_safe(x.item())
    return x


_CSS = """
:root{--ok:#1e8449;--ok-bg:#e3f4e8;--fn:#b9770e;--fn-bg:#fdf0d9;--fp:#c0392b;--fp-bg:#fbe3e0;
--unk:#566573;--unk-bg:#eceff1;--line:#d5d8dc}
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;
margin:0;color:#1c2833;background:#fafafa;line-height:1.4}
header{background:#1f4e79;color:#fff;padding:14px 24px}
header h1{margin:0 0 4px;font-size:1.35em} header p{margin:0;opacity:.9;font-size:.9em}
nav{padding:6px 24px;background:#eaf0f6;border-bottom:1px solid var(--line);font-size:.9em}
nav a{margin-right:14px;color:#1f4e79}
main{padding:8px 24px 40px;max-width:1500px}
section{margin:18px 0 28px} h2{font-size:1.15em;border-bottom:2px solid #1f4e79;padding-bottom:3px}
table{border-collapse:collapse;font-size:.88em;background:#fff}
th,td{border:1px solid var(--line);padding:3px 8px;text-align:right}
th{background:#eef2f5} td.l,th.l{text-align:left}
tr.nopos td{color:#7f8c8d;font-style:italic}
.cols{display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start}
.note{color:#566573;font-size:.85em;max-width:1000px}
figure.fig{margin:8px 0} figure.fig img{max-width:100%;height:auto;border:1px solid var(--line);
background:#fff}
.scroll{max-height:520px;overflow:auto;display:inline-block;border:1px solid var(--line)}
.filters{position:sticky;top:0;background:#fafafa;padding:8px 0;z-index:2;display:flex;
gap:8px;align-items:center;flex-wrap:wrap;border-bottom:1px solid var(--line)}
.filters button{border:1px solid #1f4e79;background:#fff;color:#1f4e79;padding:4px 10px;
border-radius:4px;cursor:pointer;font-size:.9em}
.filters button.on{background:#1f4e79;color:#fff}
#gallery{display:grid;grid-template-columns:repeat(auto-fill,minmax(var(--card),1fr));gap:12px;
margin-top:10px}
.card{background:#fff;border:1px solid var(--line);border-radius:6px;padding:8px;margin:0}
.card.err{border-left:4px solid var(--fp)} .card.ok{border-left:4px solid var(--ok)}
[hidden]{display:none!important}
.card .pic{display:flex;gap:8px;align-items:flex-start}
.card img.thumb{width:var(--thumb);height:auto;image-rendering:auto;border:1px solid #eee}
.card img.maps{width:100%;height:auto;margin-top:6px;border:1px solid #eee}
.card .id{font-size:.8em;color:#566573;word-break:break-all}
ul.chips{list-style:none;padding:0;margin:4px 0 0;display:flex;flex-wrap:wrap;gap:3px}
ul.chips li{font-size:.78em;padding:1px 6px;border-radius:10px;white-space:nowrap}
li.tp{background:var(--ok-bg);color:var(--ok)} li.fn{background:var(--fn-bg);color:var(--fn)}
li.fp{background:var(--fp-bg);color:var(--fp)} li.unk{background:var(--unk-bg);color:var(--unk)}
.legend li{font-size:.85em}
"""

_JS = """
(function(){
  var mode = "all", cards = Array.prototype.slice.call(document.querySelectorAll("#gallery .card"));
  var sel = document.getElementById("cls"), count = document.getElementById("count");
  var buttons = document.querySelectorAll(".filters button");
  function has(list, c){ return (" " + list + " ").indexOf(" " + c + " ") >= 0; }
  function apply(){
    var c = sel.value, shown = 0;
    cards.forEach(function(el){
      var err = c ? has(el.dataset.errcls, c) : el.dataset.errcls.trim() !== "";
      var ok = (mode === "all" || (mode === "err") === err) && (!c || has(el.dataset.cls, c));
      el.hidden = !ok; if (ok) shown++;
    });
    count.textContent = shown + " of " + cards.length + " shown";
  }
  buttons.forEach(function(b){ b.addEventListener("click", function(){
    mode = b.dataset.f;
    buttons.forEach(function(x){ x.classList.toggle("on", x === b); });
    apply();
  }); });
  sel.addEventListener("change", apply);
  apply();
})();
"""


# ------------------------------------------------------------------------------ report
def write_report(out_dir: str | Path, scores: Any, targets: Any, names: Sequence[str], *,
                 scores_are: str = "probs", threshold: Any = 0.5,
                 report: EvaluationReport | None = None, ap_mode: str = "sklearn",
                 top_k: int | None = None, images: ImageSource | None = None,
                 ids: Sequence[str] | None = None,
                 attention: AttentionSource | None = None, split: str = "",
                 checkpoint: str = "", title: str | None = None,
                 settings: Mapping[str, Any] | None = None, max_gallery: int = 48,
                 gallery_rows: Sequence[int] | None = None, top_maps: int = 3,
                 thumb_size: int = 160, seed: int = 0) -> Path:
    """Write the report folder ``out_dir`` and return the path of its ``index.html``.

    ``scores`` (N, C): probabilities (``scores_are="probs"``) or logits (``"logits"``; used
    as they are for ranking, through a sigmoid for thresholds). ``targets`` (N, C) in
    {1, -1, 0} (0 unknown: ignored everywhere). ``threshold``: one probability or one per
    class; ``report``: an :class:`EvaluationReport` already computed on these scores (its
    threshold(s), AP mode and top-k are then used), else one is computed with
    ``threshold``, ``ap_mode`` and ``top_k``.

    ``images``: the N pictures for the gallery, as a sequence (paths, PIL images or uint8
    arrays) or a function ``row -> PIL image``; without it there is no gallery. ``ids``:
    a name per row (default the row number). ``attention``: class maps for the gallery
    rows, as a function ``rows -> (len(rows), C, h, w)`` (or ``None``), a mapping
    ``row -> (C, h, w)`` or an (N, C, h, w) array; the ``top_maps`` highest-scoring classes
    of each gallery image get an overlay. ``max_gallery``: the gallery's cap (rows chosen
    by :func:`select_gallery`, or given as ``gallery_rows``); ``thumb_size``: thumbnail
    side in pixels. ``split`` and ``checkpoint`` go into the title lines of the page and
    the figures; ``settings``: extra lines for the settings table.
    """
    from .viz import (
        overlay,
        plot_per_class_ap,
        plot_pr_curves,
        plot_pr_grid,
        plot_threshold_f1,
    )

    t_start = time.perf_counter()
    out = Path(out_dir)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    names = [str(n) for n in names]
    raw = _np(scores).astype(np.float32)
    t = _np(targets)
    if raw.ndim != 2 or raw.shape != t.shape or raw.shape[1] != len(names):
        raise ValueError(f"write_report: scores {raw.shape}, targets {t.shape} and "
                         f"{len(names)} names do not match (need (N, C), (N, C), C)")
    if scores_are == "logits":
        probs = 1.0 / (1.0 + np.exp(-raw.astype(np.float64)))
    elif scores_are == "probs":
        probs = raw.astype(np.float64)
    else:
        raise ValueError(f"scores_are must be 'probs' or 'logits', got {scores_are!r}")
    if report is None:
        report = evaluate(raw, t, threshold=threshold, top_k=top_k, ap_mode=ap_mode,
                          scores_are=scores_are, zero_means="unknown")
    n, c = raw.shape
    per_class_thr = report.thresholds is not None
    thr = (np.asarray(report.thresholds, dtype=np.float64) if per_class_thr
           else np.full(c, float(report.threshold)))
    ap = np.asarray(report.per_class_ap, dtype=np.float64)
    rows = _per_class(probs, t, thr, ap)
    ids = [str(i) for i in ids] if ids is not None else [str(i) for i in range(n)]
    ck_short = "/".join(Path(checkpoint).parts[-2:]) if checkpoint else ""
    context = " · ".join(x for x in (f"split: {split}" if split else "",
                                     f"checkpoint: {ck_short}" if ck_short else "",
                                     f"{n} images") if x)
    timings: dict[str, float] = {}

    # ---- figures
    t0 = time.perf_counter()
    npos = np.array([r["positives"] for r in rows])
    figs = {
        "per_class_ap": plot_per_class_ap(100 * ap, names, out / "figures" / "per_class_ap.png",
                                          context=context, positives=npos),
        "pr_grid": plot_pr_grid(raw, t, names, out / "figures" / "pr_grid.png",
                                context=context, ap=ap),
        "pr_curves": plot_pr_curves(raw, t, names, out / "figures" / "pr_curves.png",
                                    context=context, ap=ap),
    }
    at = None
    if per_class_thr:
        at = {"OF1": report.summary["OF1"], "CF1": report.summary["CF1"]}
    figs["threshold_f1"] = plot_threshold_f1(
        probs, t, out / "figures" / "threshold_f1.png", context=context,
        threshold=None if per_class_thr else float(report.threshold),
        thresholds=thr.tolist() if per_class_thr else None, at_thresholds=at)
    timings["figures"] = time.perf_counter() - t0

    # ---- gallery
    t0 = time.perf_counter()
    gallery_html = ""
    chosen: list[int] = []
    maps: dict[int, np.ndarray] = {}
    for old in (out / "images").glob("g*.jpg"):  # a previous report's gallery
        old.unlink()
    if images is not None:
        chosen = (sorted(int(r) for r in gallery_rows) if gallery_rows is not None
                  else select_gallery(probs, t, thr, max_gallery, seed))
        maps = _attention_rows(attention, chosen)
        gallery_html = _gallery(out, chosen, images, ids, names, probs, t, thr, maps,
                                top_maps, thumb_size, n, overlay)
    has_maps = bool(maps)
    timings["gallery"] = time.perf_counter() - t0

    # ---- page
    s = report.summary
    page_title = title or ("mlrkit report" + (f": {ck_short}" if ck_short else ""))
    if per_class_thr:
        thr_text = (f"per class ({c} values, {100 * thr.min():.1f}% to {100 * thr.max():.1f}%, "
                    f"mean {100 * thr.mean():.1f}%)")
    else:
        thr_text = f"{100 * float(report.threshold):g}% for every class"
    no_pos = [names[r["class"]] for r in rows if r["positives"] == 0]
    n_unknown = int((t == 0).sum())
    setting_rows: list[tuple[str, str]] = [
        ("checkpoint", checkpoint or "(not given)"), ("split", split or "(not given)"),
        ("images", str(n)),
        ("classes", f"{c} ({c - len(no_pos)} with at least one positive)"),
        ("AP mode", report.ap_mode), ("threshold(s)", thr_text),
        ("top-k", str(report.top_k) if report.top_k else "none"),
        ("unknown targets (0)", f"{n_unknown} entries, ignored in every metric"
         if n_unknown else "none"),
        ("scores", "sigmoid of the model's logits" if scores_are == "logits"
         else "probabilities as given"),
    ]
    setting_rows += [(str(k), str(v)) for k, v in (settings or {}).items()]
    metrics_rows = "".join(f"<tr><th class='l'>{_e(k)}</th><td>{_pct(v, 2)}</td></tr>"
                           for k, v in s.items())
    settings_html = "".join(f"<tr><th class='l'>{_e(k)}</th><td class='l'>{_e(v)}</td></tr>"
                            for k, v in setting_rows)
    per_html = _per_class_table(rows, names, per_class_thr)
    nopos_note = (f"<p class='note'>No positive in this split, so no AP, no curve and no "
                  f"recall ({len(no_pos)}): {_e(', '.join(no_pos))}.</p>" if no_pos else "")
    thr_note = ("<p class='note'>The per-class thresholds come with the checkpoint (chosen "
                "to maximize each class's F1 on a validation split). If that is the split "
                "shown here, the threshold metrics (CP ... OF1) are optimistic.</p>"
                if per_class_thr else "")
    thr_fig_note = ("the red ticks along the bottom are the per-class thresholds in use and "
                    "the dotted lines what they reach" if per_class_thr
                    else "the dashed vertical line is the threshold in use")
    gallery_section = (gallery_html if images is not None else
                       "<p class='note'>No images were given, so there is no gallery.</p>")
    body = f"""<header><h1>{_e(page_title)}</h1>
<p>{_e(context)} · written {_e(_dt.datetime.now().strftime('%Y-%m-%d %H:%M'))}</p></header>
<nav><a href="#metrics">Metrics</a><a href="#per-class">Per class</a><a href="#pr">PR curves</a>
<a href="#threshold">Threshold</a><a href="#gallery-section">Gallery</a></nav>
<main>
<section id="metrics"><h2>Metrics</h2><div class="cols">
<table><tr><th class='l'>metric</th><th>value (%)</th></tr>{metrics_rows}</table>
<table><tr><th class='l' colspan='2'>settings</th></tr>{settings_html}</table></div>
<p class="note">mAP: mean of the per-class AP over the classes with at least one positive.
CP, CR: precision and recall per class, averaged over those classes (a class with no
prediction has precision 0); CF1 is the F1 of CP and CR. OP, OR, OF1: counted over all
labels together. A label is predicted when its probability is at least its threshold.</p>
{thr_note}</section>
<section id="per-class"><h2>Per class</h2>{nopos_note}<div class="cols">
<div class="scroll">{per_html}</div>
<figure class="fig"><img src="figures/per_class_ap.png" alt="AP per class"></figure></div>
</section>
<section id="pr"><h2>Precision-recall curves</h2>
<p class="note">One panel per class with a positive; each curve is a step function (the
precision at a score cut holds over the recall that cut adds), so its area is the AP. The
dashed line is the share of positives, what random scores would reach. Below: every class on
one set of axes.</p>
<figure class="fig"><img src="figures/pr_grid.png" alt="precision-recall per class"></figure>
<figure class="fig"><img src="figures/pr_curves.png" alt="precision-recall, all classes">
</figure></section>
<section id="threshold"><h2>F1 against a global threshold</h2>
<p class="note">OF1 and CF1 if every class used the same threshold; {thr_fig_note}.</p>
<figure class="fig"><img src="figures/threshold_f1.png" alt="F1 against threshold"></figure>
</section>
<section id="gallery-section"><h2>Gallery</h2>{gallery_section}</section>
<p class="note">Written by mlrkit in {{SECONDS}} s. Everything this page shows is in its
folder (figures/, images/, report.json); it needs no network.</p>
</main>"""
    timings["total"] = time.perf_counter() - t_start
    body = body.replace("{SECONDS}", f"{timings['total']:.1f}")
    thumb_css = f"--thumb:{thumb_size}px;--card:{_card_width(thumb_size, top_maps, has_maps)}px"
    page = (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_e(page_title)}</title><style>{_CSS}</style></head>"
            f"<body style='{thumb_css}'>{body}<script>{_JS if gallery_html else ''}</script>"
            f"</body></html>\n")
    index = out / "index.html"
    atomic_write_text(index, page)
    data = {
        "title": page_title, "checkpoint": checkpoint, "split": split, "num_images": n,
        "summary": report.summary, "settings": report.settings(),
        "extra_settings": dict(settings or {}),
        "per_class": [{**r, "name": names[r["class"]]} for r in rows],
        "classes_without_positives": no_pos,
        "gallery": [{"row": r, "id": ids[r]} for r in chosen],
        "figures": {k: str(Path(v).relative_to(out)) for k, v in figs.items()},
        "seconds": timings,
    }
    atomic_write_text(out / "report.json", json.dumps(_json_safe(data), indent=2, default=str))
    return index


def _card_width(thumb: int, top_maps: int, maps_present: bool) -> int:
    if not maps_present:
        return thumb + 150
    return max(thumb + 150, top_maps * (int(thumb * 0.8) + 4) + 20)


def _per_class_table(rows: list[dict[str, Any]], names: list[str], per_class_thr: bool) -> str:
    order = sorted(rows, key=lambda r: (r["positives"] == 0,
                                        -(r["ap"] if not math.isnan(r["ap"]) else 0.0)))
    head = ("<tr><th class='l'>class</th><th>AP (%)</th><th>positives</th><th>predicted</th>"
            "<th>P (%)</th><th>R (%)</th><th>F1 (%)</th>"
            + ("<th>threshold (%)</th>" if per_class_thr else "") + "</tr>")
    body = []
    for r in order:
        nopos = r["positives"] == 0
        cells = [f"<td class='l'>{_e(names[r['class']])}</td>",
                 f"<td>{'no positives' if nopos else _pct(r['ap'])}</td>",
                 f"<td>{r['positives']}</td>", f"<td>{r['predicted']}</td>",
                 f"<td>{_pct(r['precision'])}</td>", f"<td>{_pct(r['recall'])}</td>",
                 f"<td>{_pct(r['f1'])}</td>"]
        if per_class_thr:
            cells.append(f"<td>{_pct(r['threshold'])}</td>")
        body.append(f"<tr class='{'nopos' if nopos else ''}'>{''.join(cells)}</tr>")
    return f"<table id='per-class-table'>{head}{''.join(body)}</table>"


def _gallery(out: Path, chosen: list[int], images: ImageSource, ids: list[str],
             names: list[str], probs: np.ndarray, t: np.ndarray, thr: np.ndarray,
             maps: dict[int, np.ndarray], top_maps: int, thumb_size: int, n: int,
             overlay: Callable[..., Any]) -> str:
    cards = []
    counts = np.zeros(len(names), dtype=np.int64)
    n_err = 0
    for k, r in enumerate(chosen):
        pred = probs[r] >= thr
        pos, neg, unk = t[r] == 1, t[r] == -1, t[r] == 0
        kinds = {"tp": np.flatnonzero(pos & pred), "fn": np.flatnonzero(pos & ~pred),
                 "fp": np.flatnonzero(neg & pred), "unk": np.flatnonzero(unk & pred)}
        chips = []
        labels = {"tp": "✓ ", "fn": "missed ", "fp": "false alarm ", "unk": "? "}
        tips = {"tp": "correct: labelled and predicted", "fn": "missed: labelled, not predicted",
                "fp": "false alarm: predicted, labelled absent",
                "unk": "predicted; the label is unknown (not scored)"}
        for kind in ("tp", "fn", "fp", "unk"):
            for c in sorted(kinds[kind], key=lambda c: -probs[r, c]):
                chips.append(f"<li class='{kind}' title='{tips[kind]}'>{labels[kind]}"
                             f"{_e(names[c])} {100 * probs[r, c]:.0f}%</li>")
        if not chips:
            chips.append("<li class='unk'>no label, nothing predicted</li>")
        involved = np.union1d(np.flatnonzero(pos), np.flatnonzero(pred))
        counts[involved] += 1
        errcls = np.union1d(kinds["fn"], kinds["fp"])
        is_err = errcls.size > 0
        n_err += is_err
        pic_maps = ""
        try:
            img = _load_image(images, r)
        except Exception as e:  # noqa: BLE001 - one unreadable picture must not end the report
            pic = f"<p class='note'>image not readable: {_e(e)}</p>"
        else:
            name = f"g{k:03d}.jpg"
            _fit(img, thumb_size, sharp=True).save(out / "images" / name, quality=88)
            pic = f"<img class='thumb' src='images/{name}' alt='{_e(ids[r])}'>"
            if r in maps:
                strip = overlay(img, maps[r], names, probs[r], top_k=top_maps,
                                size=int(thumb_size * 0.8), include_image=False)
                mname = f"g{k:03d}_maps.jpg"
                strip.save(out / "images" / mname, quality=88)
                pic_maps = (f"<img class='maps' src='images/{mname}' alt='attention maps of "
                            f"the top {top_maps} classes'>")
        cards.append(
            f"<figure class='card {'err' if is_err else 'ok'}' "
            f"data-cls='{' '.join(str(int(c)) for c in involved)}' "
            f"data-errcls='{' '.join(str(int(c)) for c in errcls)}'>"
            f"<div class='pic'>{pic}<figcaption><div class='id'>{_e(ids[r])}</div>"
            f"<ul class='chips'>{''.join(chips)}</ul></figcaption></div>{pic_maps}</figure>")
    options = "".join(f"<option value='{c}'>{_e(names[c])} ({int(counts[c])})</option>"
                      for c in sorted(np.flatnonzero(counts), key=lambda c: names[c].lower()))
    how = ("all of them" if len(chosen) == n else
           "one image per class first (rarest class first), then images with and without "
           "errors in equal shares, at random with a fixed seed")
    maps_note = (f" Under each picture: the {top_maps} highest-scoring classes' attention "
                 "maps over it, each stretched to its own range (where the head looks, not "
                 "how strongly)." if maps else "")
    return f"""<p class="note">{len(chosen)} of {n} images ({how}).{maps_note}</p>
<div class="note">Labels, each with its probability: <ul class="chips legend"
style="display:inline-flex"><li class="tp">✓ correct</li><li class="fn">missed</li>
<li class="fp">false alarm</li><li class="unk">? predicted, label unknown</li></ul></div>
<div class="filters">
<button type="button" data-f="all" class="on">All ({len(chosen)})</button>
<button type="button" data-f="err">With errors ({n_err})</button>
<button type="button" data-f="ok">All correct ({len(chosen) - n_err})</button>
<label>class <select id="cls"><option value="">any class</option>{options}</select></label>
<span id="count" class="note"></span>
<span class="note">(a class shows the images where it is labelled or predicted; with a class
chosen, "errors" means errors on that class)</span></div>
<div id="gallery">{''.join(cards)}</div>"""


# ---------------------------------------------------------------------- from checkpoints
def report_from_predictions(pred: Any, out_dir: str | Path, **options: Any) -> Path:
    """The report of a :class:`~mlrkit.engine.evaluation.CheckpointPredictions` (what
    ``predict_checkpoint`` returns) in ``out_dir``; ``options`` as in :func:`write_report`
    (``max_gallery``, ``top_maps``, ``thumb_size``, ``seed``, ``title``)."""
    cfg, meta = pred.config, pred.meta
    settings: dict[str, Any] = {
        "method": cfg.model.name, "backbone": cfg.model.backbone,
        "image size": cfg.data.image_size,
    }
    if "epoch" in meta:
        settings["epoch"] = meta["epoch"]
    if "weights" in meta:
        settings["weights"] = meta["weights"] + (" (EMA)" if meta["weights"] == "ema" else "")
    if pred.report.thresholds is not None and meta.get("thresholds_from"):
        settings["thresholds from"] = meta["thresholds_from"]
    if meta.get("mlrkit_version"):
        settings["trained with mlrkit"] = meta["mlrkit_version"]
    skipped = getattr(pred.report, "skipped", [])
    if skipped:
        settings["left out (unreadable)"] = len(skipped)
    options = {"settings": {**settings, **options.pop("settings", {})}, **options}
    return write_report(out_dir, pred.logits, pred.targets, pred.names, scores_are="logits",
                        report=pred.report, images=pred.image, ids=pred.ids,
                        attention=pred.attention, split=pred.split,
                        checkpoint=str(pred.checkpoint), **options)


def report_checkpoint(checkpoint: str | Path, out_dir: str | Path,
                      overrides: list[str] | None = None, **options: Any) -> Path:
    """Score ``checkpoint`` (a run directory or a ``.safetensors`` file) on ``data.val``
    of its config after ``overrides`` (``--set`` syntax, e.g. ``data.val.split=test``),
    write the report into ``out_dir`` and return the path of ``index.html``. ``options``
    as in :func:`write_report`."""
    from .engine.evaluation import predict_checkpoint

    return report_from_predictions(predict_checkpoint(checkpoint, overrides), out_dir,
                                   **options)

