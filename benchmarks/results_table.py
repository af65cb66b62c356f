"""Results on real data that runs on a CPU: every method and ablation row, several seeds.

Trains each head on frozen EfficientNet-Lite0 features (the feature cache is filled once
and shared by all rows) on
  * coco128: 128 real COCO photos, a deterministic 96 / 32 hold-out split, 448 px;
  * the Fashion-MNIST mosaic task (its own train / test photos), 224 px;
and writes mean ± std of mAP, CF1 and OF1 (%) over the seeds as a Markdown table.

    python benchmarks/results_table.py --seeds 5 --out docs/results.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mlrkit.config import load_config
from mlrkit.engine.trainer import Trainer

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MLRKIT_DATA", REPO.parent / "shared" / "data"))

# (row label, config family, --set overrides)
ROWS: list[tuple[str, str, list[str]]] = [
    ("Baseline (avg pool + FC)", "baseline", []),
    ("ML-GCN", "mlgcn", []),
    ("SSGRL", "ssgrl", []),
    *[(f"DLSA {name}", "dlsa", [f"model.options.lspl={a}", f"model.options.sd={b}",
                                 f"model.options.sar={c}"])
      for name, a, b, c in [("w/o LSPL, SD, SAR", "false", "false", "false"),
                            ("LSPL", "true", "false", "false"),
                            ("LSPL + SD", "true", "true", "false"),
                            ("SD + SAR", "false", "true", "true"),
                            ("LSPL + SD + SAR (full)", "true", "true", "true")]],
    ("CMSG (full)", "cmsg", []),
    ("CMSG w/o SGA", "cmsg", ["model.options.sga=false"]),
    ("CMSG w/o SAA", "cmsg", ["model.options.saa=false"]),
    ("CMSG w/o correlation", "cmsg", ["model.options.correlation=false"]),
    ("DLSA full, d2 = 1280 (no projection)", "dlsa", ["model.options.d2=1280"]),
]

DATASETS = {
    "coco128": ("coco128 (96 train / 32 val photos, 448 px)",
                [f"data.train.root={DATA / 'coco128'}", f"data.val.root={DATA / 'coco128'}"]),
    "mosaic": ("Fashion-MNIST mosaics (2,000 train / 500 test, 224 px)", []),
}


def run_row(dataset: str, family: str, overrides: list[str], seed: int, out: Path,
            cache_dir: Path, row: int = 0) -> dict[str, float]:
    cfg = load_config(REPO / "configs" / f"{family}_{dataset}_effl0.yaml",
                      [*DATASETS[dataset][1], *overrides, f"seed={seed}",
                       f"name={dataset}-row{row}-{family}-seed{seed}",
                       f"output_dir={out}", f"data.cache_dir={cache_dir}",
                       "train.progress=false", "data.num_workers=0"])
    t0 = time.perf_counter()
    trainer = Trainer(cfg)
    trainer.fit()
    d = trainer.report.to_dict()
    return {"mAP": 100 * d["mAP"], "CF1": 100 * d["CF1"], "OF1": 100 * d["OF1"],
            "seconds": time.perf_counter() - t0}


def fmt(vals: list[float]) -> str:
    if len(vals) == 1:
        return f"{vals[0]:.1f}"
    return f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--datasets", default="coco128,mosaic")
    ap.add_argument("--rows", default=None, help="comma-separated row numbers (default all)")
    ap.add_argument("--out", default=str(REPO / "docs" / "results.md"))
    ap.add_argument("--json", default=None, help="also write the raw numbers here")
    ap.add_argument("--cache-dir", default=str(REPO / ".cache" / "features"))
    ap.add_argument("--threads", type=int, default=2, help="torch threads")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    picked = range(len(ROWS)) if args.rows is None else [int(i) for i in args.rows.split(",")]
    rows = [(i, *ROWS[i]) for i in picked]
    raw: dict[str, dict[str, list[dict[str, float]]]] = {}
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for ds in args.datasets.split(","):
            raw[ds] = {}
            for row, label, family, over in rows:
                raw[ds][label] = []
                for seed in range(args.seeds):
                    r = run_row(ds, family, over, seed, Path(tmp), Path(args.cache_dir), row)
                    raw[ds][label].append(r)
                    print(f"{ds:8s} {label:32s} seed {seed}: mAP {r['mAP']:.2f} "
                          f"CF1 {r['CF1']:.2f} OF1 {r['OF1']:.2f} ({r['seconds']:.1f} s)",
                          flush=True)
    total = time.perf_counter() - t_all
    lines = [
        "# Results on data that runs here",
        "",
        "Frozen EfficientNet-Lite0 (ImageNet weights) features, GloVe-50 label embeddings, "
        f"mean ± std over {args.seeds} seeds (the seed sets head initialization and batch "
        "order; the data splits are fixed). Values in %. Each method's settings are in "
        "`configs/<method>_<dataset>_effl0.yaml`; ablation rows switch modules off with "
        "`--set model.options.<module>=false`.",
        "",
        f"Made by: `python benchmarks/results_table.py --seeds {args.seeds} "
        f"--datasets {args.datasets}` ({total / 60:.1f} min on {os.cpu_count()} CPU cores, "
        f"{platform.machine()}, torch {torch.__version__}).",
        "",
    ]
    for ds in raw:
        lines += [f"## {DATASETS[ds][0]}", "", "| method | mAP | CF1 | OF1 | s / run |",
                  "| --- | --- | --- | --- | --- |"]
        for label, runs in raw[ds].items():
            lines.append(f"| {label} | {fmt([r['mAP'] for r in runs])} | "
                         f"{fmt([r['CF1'] for r in runs])} | {fmt([r['OF1'] for r in runs])} "
                         f"| {statistics.mean(r['seconds'] for r in runs):.1f} |")
        lines.append("")
    Path(args.out).write_text("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(raw, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
