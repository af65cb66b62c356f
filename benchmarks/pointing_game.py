"""Pointing game of the attention heads: do the class maps peak on the class's object?

Trains (or, with ``--run-dir``, reuses) SSGRL, DLSA and CMSG from their CPU configs
(``configs/<method>_<dataset>_effl0.yaml``, frozen EfficientNet-Lite0 from the feature
cache, ``--epochs`` epochs) on
  * coco128: scored on the configs' val fold (32 photos) against the YOLO boxes;
  * the Fashion-MNIST mosaics: scored on the test split (500 mosaics) against the grid
    cells that hold each item (``--mosaic-boxes item``: the pasted photos' squares);
and prints, per dataset, each head's pointing-game hit rate (over (image, class) pairs and
the mean of per-class rates) next to the centre prior and the uniform (random-peak)
baseline at the same map size, plus diagnostics: how often a peak falls on any object, how
many cells tie at the peak, how often all classes of an image peak at the same cell, and for
CMSG the hit rates of the maps inside its head (formation attention, each SAA head, the SAA
scores without / with only the positional term of the keys).

    python benchmarks/pointing_game.py --epochs 5 [--run-dir /tmp/pg_runs] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mlrkit.config import load_config
from mlrkit.data.yolo import load_yolo_boxes
from mlrkit.engine import builders
from mlrkit.engine.distributed import DistInfo
from mlrkit.engine.trainer import Trainer
from mlrkit.metrics import evaluate, pointing_baselines, pointing_game
from mlrkit.predict import load_model
from mlrkit.structures import Features

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MLRKIT_DATA", REPO.parent / "shared" / "data"))
METHODS = ("ssgrl", "dlsa", "cmsg")
DATASETS = {
    "coco128": ("coco128 val fold (448 px, YOLO boxes)",
                [f"data.train.root={DATA / 'coco128'}", f"data.val.root={DATA / 'coco128'}"]),
    "mosaic": ("Fashion-MNIST mosaics, test split (224 px, 2x2 grid)", []),
}


# ------------------------------------------------------------------------------ runs
def get_run(dataset: str, method: str, args: argparse.Namespace, out: Path) -> tuple[Any, Any]:
    """(config, run dir): the run found in ``out``, else trained there."""
    cfg = load_config(REPO / "configs" / f"{method}_{dataset}_effl0.yaml",
                      [*DATASETS[dataset][1], f"name={method}_{dataset}_e{args.epochs}",
                       f"output_dir={out}", f"data.cache_dir={args.cache_dir}",
                       f"train.epochs={args.epochs}", "train.progress=false",
                       "data.num_workers=0", *args.set])
    done = any((cfg.run_dir / f"{s}.safetensors").exists() for s in ("best", "last"))
    if not done:
        t0 = time.perf_counter()
        Trainer(cfg).fit()
        print(f"  trained {cfg.name} ({args.epochs} epochs, {time.perf_counter() - t0:.0f} s)",
              flush=True)
    return cfg, cfg.run_dir


def epochs_done(run_dir: Path) -> int:
    """Epochs a run completed (rows of its log.csv): a reused run may differ from --epochs."""
    log = run_dir / "log.csv"
    return max(0, len(log.read_text().splitlines()) - 1) if log.exists() else -1


@torch.no_grad()
def head_outputs(model: torch.nn.Module, feats: Any, batch: int = 64,
                 variants: bool = False) -> dict[str, np.ndarray]:
    """Logits, ``Output.attention`` and (CMSG, ``variants``) its inner maps, float32."""
    out: dict[str, list[np.ndarray]] = {}
    for s in range(0, len(feats), batch):
        x = torch.stack([feats[i][0] for i in range(s, min(len(feats), s + batch))]).float()
        res = model(Features(map=x))
        got = {"logits": res.logits, "attention": res.attention}
        if variants:
            got.update(cmsg_maps(model.head, x) if hasattr(model.head, "saa_layers")
                       else dlsa_maps(model.head, x))
        for k, v in got.items():
            out.setdefault(k, []).append(v.float().cpu().numpy())
    return {k: np.concatenate(v) for k, v in out.items()}


def dlsa_maps(head: torch.nn.Module, fmap: torch.Tensor) -> dict[str, torch.Tensor]:
    """DLSA's alignment scores before the sigmoid (``Output.attention`` is their sigmoid),
    and the share of map values that the float32 sigmoid rounds to exactly 1."""
    align = head.align
    if align is None:
        return {}
    s = head.align_semantics(head.semantics())
    b, _, h, w = fmap.shape
    if head.proj is not None:
        logits = align._align(s @ head.proj.weight, fmap) + (s @ head.proj.bias)[:, None]
    else:
        logits = align._align(s, fmap)
    logits = (logits * align.scale).view(b, -1, h, w)
    return {"pre_sigmoid": logits,
            "saturated": (torch.sigmoid(logits) == 1).float().mean((2, 3))}


def cmsg_maps(head: torch.nn.Module, fmap: torch.Tensor) -> dict[str, torch.Tensor]:
    """CMSG's forward up to the last SAA layer, keeping the maps it makes on the way.

    ``formation``: the class-formation attention (one head, softmax over positions);
    ``saa_head{k}``: head k of the last cross-attention (what ``Output.attention`` averages);
    ``saa_content`` / ``saa_position``: head-mean softmax of the last layer's scores from the
    keys' content part ``W_k m`` / positional part ``W_k p`` alone; and ``var_pos`` (B, C):
    the share of the scores' variance over positions that the positional part carries.
    """
    from mlrkit.nn.attention import correlation_bias, sine_position_encoding

    x = head.input_proj(fmap)
    b, d, h, w = x.shape
    memory = x.flatten(2).transpose(1, 2)
    pos = sine_position_encoding(h, w, d, device=x.device, dtype=x.dtype)[None]
    queries = head.queries()
    hc, form = head.formation(queries, memory, pos)
    maps = {"formation": form}
    kf = head.formation.k_proj(memory + pos)  # (B, N, d)
    sf = torch.einsum("cd,bnd->bcn", queries, kf)
    sf_common = torch.einsum("d,bnd->bn", queries.mean(0), kf)[:, None]
    maps["formation_var_common"] = sf_common.var(-1) / sf.var(-1).clamp_min(1e-12)
    bias = (correlation_bias(head.correlation, head.correlation_mode, validate=False)
            if head.use_correlation else None)
    for layer in head.sga_layers:
        hc, _ = layer(hc, attn_mask=bias)
    if len(head.saa_layers):
        for layer in head.saa_layers[:-1]:
            hc, _ = layer(hc, memory, pos)
        mha = head.saa_layers[-1].attn
        q = mha._split(mha.q_proj(hc))  # (B, heads, C, dh)
        k_content = mha._split(mha.k_proj(memory))  # W m + b
        k_pos = mha._split(mha.k_proj(memory + pos)) - k_content  # W p
        scale = 1.0 / math.sqrt(mha.head_dim)
        s_content = q @ k_content.transpose(-2, -1) * scale  # (B, heads, C, N)
        s_pos = q @ k_pos.transpose(-2, -1) * scale
        s = s_content + s_pos
        wts = s.softmax(-1)
        for k in range(wts.shape[1]):
            maps[f"saa_head{k}"] = wts[:, k]
        maps["saa_content"] = s_content.softmax(-1).mean(1)
        maps["saa_position"] = s_pos.softmax(-1).mean(1)
        maps["var_pos"] = (s_pos.var(-1) / s.var(-1).clamp_min(1e-12)).mean(1)
        # the part of the scores shared by all classes (the class-mean query) vs the rest
        k_all = k_content + k_pos
        q_mean = q.mean(2, keepdim=True)
        s_common = q_mean @ k_all.transpose(-2, -1) * scale  # (B, heads, 1, N)
        maps["var_common"] = (s_common.var(-1) / s.var(-1).clamp_min(1e-12)).mean(1)
        maps["saa_class_specific"] = (s - s_common).softmax(-1).mean(1)
        hn = torch.nn.functional.normalize(hc, dim=-1)  # the SAA's class queries
        cos = hn @ hn.transpose(1, 2)
        maps["query_cosine"] = (cos.sum(-1) - 1) / max(hc.shape[1] - 1, 1)
        maps["peak_weight"] = wts.mean(1).amax(-1)  # (B, C): largest attention weight
    c = head.num_classes
    return {k: (v.reshape(b, c, h, w) if v.dim() == 3 else v) for k, v in maps.items()}


# ---------------------------------------------------------------------- diagnostics
def any_object_rate(att: np.ndarray, rep: Any, boxes: list[np.ndarray]) -> tuple[float, float]:
    """(share of pairs whose peak lies on an object of any class, uniform expectation)."""
    pi, pc = rep.pair_image, rep.pair_class
    maps = att[pi, pc][:, None]  # (P, 1, h, w)
    anyb = [np.c_[np.zeros(len(boxes[i])), boxes[i][:, 1:]] for i in pi.tolist()]
    r = pointing_game(maps, anyb)
    u = pointing_baselines(anyb, 1, att.shape[-2:])["uniform"]
    return r.hit_rate, u.hit_rate


def peak_stats(att: np.ndarray, rep: Any) -> dict[str, float]:
    """Mean number of cells tied at a pair's peak; share of pairs whose peak is the peak of
    the mean map of all classes of that image (class-agnostic pointing)."""
    n, c, h, w = att.shape
    rows = att[rep.pair_image, rep.pair_class].reshape(-1, h * w)
    ties = (rows == rows.max(1, keepdims=True)).sum(1)
    mean_peak = att.reshape(n, c, h * w).mean(1).argmax(1)
    same = rows.argmax(1) == mean_peak[rep.pair_image]
    return {"tied_cells": float(ties.mean()), "same_peak": float(same.mean())}


# ------------------------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--datasets", default="coco128,mosaic")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--run-dir", default=None,
                    help="folder of runs <method>_<dataset>_e<epochs>: reused when there, "
                         "trained into it when not (default: a temporary folder)")
    ap.add_argument("--cache-dir", default=str(REPO / ".cache" / "features"))
    ap.add_argument("--mosaic-boxes", choices=("cell", "item"), default="cell")
    ap.add_argument("--set", nargs="*", default=[], help="more config overrides, all runs")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.run_dir) if args.run_dir else Path(tmp)
        for ds_name in args.datasets.split(","):
            rows, diag, base, info = [], [], None, {}
            for method in args.methods.split(","):
                cfg, run_dir = get_run(ds_name, method, args, out)
                model, _, _ = load_model(run_dir)
                val = builders.load_split(cfg, "val")
                boxes = (load_yolo_boxes(val) if ds_name == "coco128"
                         else val.boxes(args.mosaic_boxes))
                feats = builders.cached_dataset(cfg, model, val, torch.device("cpu"),
                                                DistInfo())
                got = head_outputs(model, feats, variants=method in ("cmsg", "dlsa"))
                att = got["attention"]
                mAP = evaluate(got["logits"], val.targets, scores_are="logits").mAP
                rep = pointing_game(att, boxes)
                on_any, any_uniform = any_object_rate(att, rep, boxes)
                rows.append((method, tuple(att.shape), rep, mAP, epochs_done(run_dir)))
                diag.append((method, {"on_any_object": on_any, **peak_stats(att, rep)}))
                if base is None:
                    base = pointing_baselines(boxes, att.shape[1], att.shape[-2:])
                    info = {"images": len(val), "any_uniform": any_uniform}
                for k, v in got.items():
                    if k in ("logits", "attention") or v.ndim != 4:
                        continue
                    r = pointing_game(v, boxes)
                    on, _ = any_object_rate(v, r, boxes)
                    diag.append((f"{method} {k}", {"hit_rate": r.hit_rate,
                                                   "class_mean": r.class_mean,
                                                   "on_any_object": on, **peak_stats(v, r)}))
                if "saturated" in got:
                    diag.append(("dlsa sigmoid", {"saturated_cells": float(
                        got["saturated"].mean())}))
                if method == "cmsg":
                    diag.append(("cmsg SAA scores", {
                        "positional_variance_share": float(got["var_pos"].mean()),
                        "peak_weight": float(got["peak_weight"].mean()),
                        "class_common_variance_share": float(got["var_common"].mean()),
                        "query_cosine": float(got["query_cosine"].mean()),
                        "formation_class_common_variance_share": float(
                            got["formation_var_common"].mean()),
                        "uniform_weight": 1.0 / (att.shape[-1] * att.shape[-2])}))
            results[ds_name] = {"rows": rows, "diag": diag, "base": base, "info": info}
    total = time.perf_counter() - t_all
    print_tables(results, args, total)
    if args.json:
        Path(args.json).write_text(json.dumps(to_json(results), indent=2))
    return 0


def print_tables(results: dict[str, Any], args: argparse.Namespace, total: float) -> None:
    print(f"\nPointing game (hit = the map's peak cell centre inside a box of the class; split "
          f"ties), heads trained from cached EfficientNet-Lite0 features (--epochs "
          f"{args.epochs}; the epochs column says what each run completed); "
          f"{total / 60:.1f} min on {os.cpu_count()} CPU cores ({platform.machine()}, torch "
          f"{torch.__version__}), one run per head, seed 0.")
    for ds_name, r in results.items():
        rep0 = r["rows"][0][2]
        boxes = f"{args.mosaic_boxes} boxes" if ds_name == "mosaic" else "YOLO boxes"
        print(f"\n## {DATASETS[ds_name][0]}: {r['info']['images']} images, "
              f"{rep0.num_pairs} (image, class) pairs in {rep0.num_images} images, "
              f"{int((rep0.pairs_per_class > 0).sum())} classes; {boxes}\n")
        print("| maps | epochs | map size | hit rate (%) | mean of per-class rates (%) "
              "| val mAP (%) |")
        print("| --- | --- | --- | --- | --- | --- |")
        for method, shape, rep, mAP, ep in r["rows"]:
            print(f"| {method} `Output.attention` | {ep} | {shape[2]}x{shape[3]} | "
                  f"{100 * rep.hit_rate:.1f} | {100 * rep.class_mean:.1f} | {100 * mAP:.1f} |")
        for name, rep in r["base"].items():
            print(f"| {name} | - | {rep.map_size[0]}x{rep.map_size[1]} | "
                  f"{100 * rep.hit_rate:.1f} | {100 * rep.class_mean:.1f} | - |")
        print(f"\nDiagnostics (peak on an object of any class: uniform expectation "
              f"{100 * r['info']['any_uniform']:.1f} %):\n")
        for name, d in r["diag"]:
            print(f"  {name:22s} " + ", ".join(
                f"{k} {100 * v:.1f}%" if k not in ("tied_cells",) and v <= 1 else f"{k} {v:.3g}"
                for k, v in d.items()))


def to_json(results: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for ds_name, r in results.items():
        out[ds_name] = {
            "heads": {m: {"map_size": list(s[2:]), **rep.to_dict(), "mAP": mAP, "epochs": ep}
                      for m, s, rep, mAP, ep in r["rows"]},
            "baselines": {k: rep.to_dict() for k, rep in r["base"].items()},
            "diagnostics": dict(r["diag"]), **r["info"]}
    return out


if __name__ == "__main__":
    sys.exit(main())
