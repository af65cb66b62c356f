"""The HTML report (files, tables, figures, gallery), its figures and attention overlays; and
the report of a small real run opened in a headless Chromium (skipped without one)."""

from __future__ import annotations

import json
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import make_color_images
from mlrkit.metrics import average_precision, evaluate, threshold_metrics
from mlrkit.report import select_gallery, write_report
from mlrkit.viz import (
    f1_vs_threshold,
    overlay,
    plot_per_class_ap,
    plot_pr_curves,
    plot_pr_grid,
    precision_recall_curve,
)

CHROMIUM = Path(os.environ.get("MLRKIT_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def _synthetic(folder: Path, n: int = 60, c: int = 8, seed: int = 0, empty: int = 1):
    """Logits, targets (a few unknown; the last ``empty`` classes without positives), class
    names and ``n`` real PNG files."""
    rng = np.random.default_rng(seed)
    t = np.where(rng.random((n, c)) < 0.3, 1, -1).astype(np.int8)
    if empty:
        t[:, -empty:] = -1
    t[rng.random((n, c)) < 0.03] = 0
    logits = rng.normal(-1.0, 1.2, (n, c)) + 2.5 * (t == 1)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"pic{i:03d}.png"
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    names = [f"class {k}" for k in range(c)]
    return torch.tensor(logits, dtype=torch.float32), torch.from_numpy(t), names, paths


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.imgs: list[str] = []

    def handle_starttag(self, tag, attrs):
        d = dict(attrs)
        for key in ("src", "href"):
            if d.get(key):
                self.refs.append(d[key])
        if tag == "img":
            self.imgs.append(d.get("src", ""))


def _refs(index: Path) -> _Refs:
    p = _Refs()
    p.feed(index.read_text(encoding="utf-8"))
    return p


def _png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


# ------------------------------------------------------------------------------ figures
def test_pr_step_curve_area_is_the_sklearn_ap():
    rng = np.random.default_rng(1)
    t = np.where(rng.random((200, 5)) < 0.3, 1, -1).astype(np.int8)
    t[rng.random((200, 5)) < 0.1] = 0
    s = np.round(rng.normal(size=(200, 5)) + 1.5 * (t == 1), 1)  # many tied scores
    ap = average_precision(s, t).numpy()
    for c in range(5):
        prec, rec = precision_recall_curve(s, t, c)
        assert np.all(np.diff(rec) >= 0) and rec[-1] == pytest.approx(1.0)
        area = rec[0] * prec[0] + np.sum(np.diff(rec) * prec[1:])
        assert area == pytest.approx(ap[c], abs=1e-12)
        # one point per distinct known score: tied scores are one cut
        assert len(rec) == len(np.unique(s[t[:, c] != 0, c]))


def test_f1_vs_threshold_agrees_with_threshold_metrics():
    rng = np.random.default_rng(2)
    t = np.where(rng.random((300, 6)) < 0.25, 1, -1).astype(np.int8)
    t[:, 5] = -1  # no positive: left out of CP / CR
    t[rng.random((300, 6)) < 0.05] = 0
    p = 1 / (1 + np.exp(-(rng.normal(size=(300, 6)) + 2 * (t == 1))))
    grid = np.array([0.2, 0.35, 0.5, 0.8])
    got = f1_vs_threshold(p, t, grid)
    for j, g in enumerate(grid):
        want = threshold_metrics(p, t, threshold=float(g))
        for key in ("OP", "OR", "OF1", "CP", "CR", "CF1"):
            assert got[key][j] == pytest.approx(want[key], abs=1e-12), (key, g)


def test_figures_readable_at_80_classes_and_demo_calls_still_work(tmp_path):
    rng = np.random.default_rng(3)
    n, c = 150, 80
    t = np.where(rng.random((n, c)) < 0.1, 1, -1).astype(np.int8)
    t[:, :2] = -1  # two classes without positives
    s = torch.sigmoid(torch.tensor(rng.normal(size=(n, c)) + 2 * (t == 1), dtype=torch.float32))
    names = [f"name{k}" for k in range(c)]
    grid = plot_pr_grid(s, torch.from_numpy(t), names, tmp_path / "grid.png", context="val")
    w, h = _png_size(grid)
    assert 1500 < w < 2000 and h < 1800  # 10 columns x 8 rows of small panels
    # the demo's calls: probabilities, AP in percent with NaN for an empty class
    curves = plot_pr_curves(s, torch.from_numpy(t), names, tmp_path / "pr.png",
                            title="demo: precision-recall per class")
    assert _png_size(curves)[0] < 1200  # legend capped at 10 entries, outside the axes
    ap = [100 * float(v) for v in evaluate(s, torch.from_numpy(t)).per_class_ap]
    assert np.isnan(ap[0])
    bars = plot_per_class_ap(ap, names, tmp_path / "ap.png", title="demo: AP per class")
    w, h = _png_size(bars)
    assert h > 0.15 * 110 * c  # one readable row per class
    small = plot_per_class_ap(ap[:10], names[:10], tmp_path / "ap10.png")
    assert _png_size(small)[1] < 500


# ------------------------------------------------------------------------------ overlay
def test_overlay_panels_hot_where_the_map_is_high():
    img = Image.new("RGB", (60, 40), (128, 128, 128))
    maps = np.zeros((4, 4, 4), dtype=np.float32)
    maps[0, :2, :2] = 1.0  # class 0 looks top-left
    maps[1, 2:, 2:] = 5.0  # class 1 bottom-right
    maps[2] = 0.3  # class 2: a flat map
    maps[3, 0, 3] = 2.0
    out = overlay(img, maps, ["a", "b", "c", "d"], scores=[0.9, 0.8, 0.7, 0.1], top_k=3,
                  size=60, include_image=True)
    assert out.mode == "RGB"
    pad = 4
    assert out.size[0] == 4 * (60 + pad) + pad  # the image, then the 3 top classes
    px = np.asarray(out).astype(int)

    def panel(k):
        x = pad + k * (60 + pad)
        return px[pad:pad + 40, x:x + 60]

    a, b, flat = panel(1), panel(2), panel(3)
    # jet: high values are red, low ones blue
    assert a[:10, :15, 0].mean() > a[-10:, -15:, 0].mean() + 60
    assert b[-10:, -15:, 0].mean() > b[:10, :15, 0].mean() + 60
    assert np.abs(flat - 128).max() <= 1  # a flat map leaves the picture as it is
    only = overlay(img, maps, list("abcd"), classes=[3], include_image=False, size=30)
    assert only.size[0] == 30 + 2 * pad
    with pytest.raises(ValueError, match="names"):
        overlay(img, maps, ["a"])
    with pytest.raises(ValueError, match=r"\(C, h, w\)"):
        overlay(img, maps[0], list("abcd"))


# ------------------------------------------------------------------------------ gallery
def test_select_gallery_caps_covers_classes_and_mixes_errors():
    rng = np.random.default_rng(4)
    n, c = 400, 12
    t = np.where(rng.random((n, c)) < 0.15, 1, -1).astype(np.int8)
    p = 1 / (1 + np.exp(-(rng.normal(-1.5, 1, size=(n, c)) + 4 * (t == 1))))
    rows = select_gallery(p, t, 0.5, max_items=48, seed=0)
    assert len(rows) == 48 and rows == sorted(set(rows))
    assert rows == select_gallery(p, t, 0.5, max_items=48, seed=0)
    assert rows != select_gallery(p, t, 0.5, max_items=48, seed=1)
    assert all((t[rows, k] == 1).any() for k in range(c))  # every class has an image
    pred = p >= 0.5
    err = (((t == 1) & ~pred) | ((t == -1) & pred)).any(1)
    assert err.sum() > 100 and (~err).sum() > 100  # enough of both kinds
    # 12 rows cover the classes, the other 36 are 18 with errors and 18 without
    assert 18 <= int(err[rows].sum()) <= 30
    assert select_gallery(p[:20], t[:20], 0.5, 48) == list(range(20))


# ------------------------------------------------------------------- report, no browser
def test_write_report_files_tables_and_offline_links(tmp_path):
    logits, t, names, paths = _synthetic(tmp_path / "pics", n=60, c=8)
    thr = np.linspace(0.3, 0.7, 8)
    out = tmp_path / "rep"
    index = write_report(out, logits, t, names, scores_are="logits", threshold=thr,
                         images=[str(p) for p in paths[:-1]] + [tmp_path / "gone.png"],
                         ids=[p.stem for p in paths], split="val (synthetic)",
                         checkpoint="runs/x/best.safetensors", max_gallery=60)
    assert index == out / "index.html"
    text = index.read_text(encoding="utf-8")
    want = evaluate(logits, t, threshold=thr, scores_are="logits", zero_means="unknown")
    data = json.loads((out / "report.json").read_text())
    for key, v in want.summary.items():
        assert data["summary"][key] == pytest.approx(v)
        assert f"<th class='l'>{key}</th><td>{100 * v:.2f}</td>" in text
    for s in ("val (synthetic)", "runs/x/best.safetensors", "per class (8 values",
              "sklearn", "id='per-class-table'"):
        assert s in text, s
    # the class without positives is marked, not scored as 0
    assert data["classes_without_positives"] == ["class 7"]
    assert "<tr class='nopos'><td class='l'>class 7</td><td>no positives</td>" in text
    assert data["per_class"][7]["ap"] is None
    for fig in ("per_class_ap", "pr_grid", "pr_curves", "threshold_f1"):
        w, h = _png_size(out / "figures" / f"{fig}.png")
        assert w > 300 and h > 200
    # every reference stays inside the folder and exists there; nothing from the network
    refs = _refs(index)
    assert "http://" not in text and "https://" not in text
    for ref in refs.refs:
        if not ref.startswith("#"):
            assert not Path(ref).is_absolute() and (out / ref).is_file(), ref
    thumbs = sorted((out / "images").glob("g???.jpg"))
    assert len(thumbs) == 59 and len(refs.imgs) == 4 + 59  # 4 figures; one picture missing
    assert "image not readable" in text and "gone.png" in text
    with Image.open(thumbs[0]) as im:
        assert max(im.size) == 160  # copied and resized, not linked
    # a second report into the same folder replaces the gallery; no images, no gallery
    write_report(out, logits, t, names, scores_are="logits")
    assert not list((out / "images").glob("g*.jpg"))
    assert "No images were given" in index.read_text(encoding="utf-8")


def test_write_report_gallery_cap_and_attention_maps(tmp_path):
    logits, t, names, paths = _synthetic(tmp_path / "pics", n=80, c=5, empty=0)
    calls = []

    def maps(rows):
        calls.append(list(rows))
        return torch.rand(len(rows), 5, 3, 3)

    out = tmp_path / "rep"
    write_report(out, torch.sigmoid(logits), t, names, threshold=0.5, images=paths,
                 attention=maps, max_gallery=12, top_maps=2)
    data = json.loads((out / "report.json").read_text())
    rows = [g["row"] for g in data["gallery"]]
    assert len(rows) == 12 and calls == [rows]  # maps computed once, for the gallery only
    assert len(list((out / "images").glob("g???_maps.jpg"))) == 12
    with Image.open(out / "images" / "g000_maps.jpg") as im:
        assert im.size[0] == 2 * (128 + 4) + 4  # two panels of 0.8 x 160 px


# --------------------------------------------------------------- a real run, in a browser
@pytest.fixture(scope="module")
def real_report(tmp_path_factory):
    """DLSA (small dims) on frozen pretrained EfficientNet-Lite0 features of the colour
    images at 64 px, 2 epochs with per-class thresholds; its report with 24 gallery images."""
    from mlrkit.config import load_config
    from mlrkit.engine.evaluation import evaluate_checkpoint, predict_checkpoint
    from mlrkit.engine.trainer import train
    from mlrkit.report import report_from_predictions

    tmp = tmp_path_factory.mktemp("report_run")
    tr = make_color_images(tmp / "imgs", 40, size=64)
    va = make_color_images(tmp / "val", 60, size=64, seed=1)
    names = str(tmp / "imgs" / "names.txt")
    cfg = {
        "name": "dlsa", "seed": 0, "output_dir": str(tmp / "runs"),
        "model": {"name": "dlsa", "backbone": "efficientnet_lite0", "pretrained": True,
                  "freeze_backbone": True, "label_embeddings": "glove50",
                  "label_graph": "cooccurrence", "options": {"d1": 16, "d2": 32, "heads": 2}},
        "data": {"train": {"name": "list", "labels_file": str(tr), "names": names},
                 "val": {"name": "list", "labels_file": str(va), "names": names},
                 "image_size": 64, "batch_size": 16, "num_workers": 0, "cache": True,
                 "cache_dir": str(tmp / "cache")},
        "optim": {"name": "adam", "lr": 1e-2}, "eval": {"thresholds": "per_class"},
        "train": {"epochs": 2, "progress": False, "amp": "none"},
    }
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    train(load_config(tmp / "cfg.yaml"))
    run = tmp / "runs" / "dlsa"
    pred = predict_checkpoint(run)
    old, _ = evaluate_checkpoint(run)  # the old entry point reports the same numbers
    assert old.summary == pred.report.summary
    index = report_from_predictions(pred, tmp / "report", max_gallery=24)
    # attention maps from the images themselves (no feature cache) match the cached ones
    direct = predict_checkpoint(run, ["data.cache=false"])
    a, b = pred.attention([0, 5, 7]), direct.attention([0, 5, 7])
    assert a is not None and a.shape == b.shape == (3, 3, 2, 2)
    assert torch.allclose(a, b, atol=2e-2)
    # shared as a folder: the report must not need the original images any more
    shutil.rmtree(tmp / "val")
    return index, pred


def test_checkpoint_report_files(real_report):
    index, pred = real_report
    out = index.parent
    text = index.read_text(encoding="utf-8")
    data = json.loads((out / "report.json").read_text())
    assert data["num_images"] == 60 and len(data["gallery"]) == 24
    assert data["extra_settings"]["method"] == "dlsa"
    assert "list (val/labels.txt)" in text and str(pred.checkpoint) in text
    assert pred.report.thresholds is not None and "threshold (%)" in text
    assert len(list((out / "images").glob("g???_maps.jpg"))) == 24  # DLSA has attention


def _visible(page) -> int:
    return page.locator("#gallery .card:visible").count()


def test_checkpoint_report_in_browser(request, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (bash scripts/ensure_chromium.sh, or set "
                    "MLRKIT_CHROMIUM)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install playwright)")
    index, pred = request.getfixturevalue("real_report")  # trained only when it will be used
    data = json.loads((index.parent / "report.json").read_text())
    rows = [g["row"] for g in data["gallery"]]
    probs, t = pred.probs.numpy(), pred.targets.numpy()
    thr = np.asarray(pred.report.thresholds)
    pred_m, pos = probs >= thr, t == 1
    err_m = (pos & ~pred_m) | ((t == -1) & pred_m)

    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            problems: list[str] = []
            outside: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(
                "file://") else (outside.append(route.request.url), route.abort()))
            page.goto(index.as_uri())
            broken = page.evaluate("Array.from(document.images).filter("
                                   "i => !(i.complete && i.naturalWidth > 0)).map(i => i.src)")
            n_img = page.evaluate("document.images.length")
            assert n_img == 4 + 2 * 24 and broken == []
            assert problems == [] and outside == []
            assert _visible(page) == 24
            assert page.inner_text("#count") == "24 of 24 shown"

            page.click("button[data-f=err]")
            n_err = int(err_m[rows].any(1).sum())
            assert _visible(page) == n_err
            page.click("button[data-f=ok]")
            assert _visible(page) == 24 - n_err
            page.click("button[data-f=all]")
            assert _visible(page) == 24
            for c in range(len(pred.names)):
                involved = int((pos[rows, c] | pred_m[rows, c]).sum())
                if involved == 0:
                    continue
                page.select_option("#cls", str(c))
                assert _visible(page) == involved, pred.names[c]
                page.click("button[data-f=err]")
                assert _visible(page) == int(err_m[rows, c].sum()), pred.names[c]
                page.click("button[data-f=all]")
            page.select_option("#cls", "")
            assert page.inner_text("#count") == "24 of 24 shown"
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
            assert problems == [] and outside == []
        finally:
            browser.close()
