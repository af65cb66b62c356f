"""Partial-label sweep: train one config at each proportion of known training labels.

Run ``p`` trains the config with the user's ``--set`` overrides followed by
``name=<name>_p<p>`` and ``data.protocol=partial:<p>:legacy`` (NumPy's legacy generator,
seed 0: on VOC2007 trainval loaded with ``difficult: negative`` these are exactly the
published ``train_proportion_<p>.txt`` files). It prints the table of the partial-label
papers (mAP per proportion and the average; CF1 and OF1 as well) as Markdown, and writes it
with every run's numbers to ``<output_dir>/<name>_partial_sweep.json``, beside the runs.
The numbers are the final epoch's validation metrics, in percent.

    python benchmarks/partial_sweep.py --config configs/dlsa_voc07_r101.yaml \\
        --set data.train.root=/data/VOC2007 data.val.root=/data/VOC2007 \\
              data.train.difficult=negative
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from mlrkit.config import ConfigError, load_config
from mlrkit.engine.trainer import train
from mlrkit.io import atomic_write_text

PROPS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
METRICS: tuple[str, ...] = ("mAP", "CF1", "OF1")


def prop_label(p: float) -> str:
    """The proportion as written in run names and protocol specs (``0.1``, ``0.25``)."""
    return f"{p:g}"


def parse_props(values: Sequence[str]) -> list[float]:
    """Proportions from ``0.1 0.5`` or ``0.1,0.5``; each in (0, 1], no repeats."""
    props: list[float] = []
    for v in values:
        for s in v.split(","):
            if not s.strip():
                continue
            try:
                p = float(s)
            except ValueError:
                raise ValueError(f"--props: {s!r} is not a number") from None
            if not 0.0 < p <= 1.0:
                raise ValueError(f"--props: {s} must be in (0, 1]")
            if p in props:
                raise ValueError(f"--props: {s} given twice")
            props.append(p)
    if not props:
        raise ValueError("--props: no proportion given")
    return props


def run_overrides(name: str, p: float, sets: Sequence[str],
                  output_dir: str | Path | None = None) -> list[str]:
    """The ``--set`` list of one run: the user's overrides, then the sweep's own."""
    lab = prop_label(p)
    out = [*sets, f"name={name}_p{lab}", f"data.protocol=partial:{lab}:legacy"]
    if output_dir is not None:
        out.append(f"output_dir={output_dir}")
    return out


def summarize(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-proportion metrics (percent) and their means over the proportions run."""
    if not rows:
        raise ValueError("summarize: no runs")
    rows = sorted(rows, key=lambda r: r["prop"])
    average = {m: math.fsum(float(r[m]) for r in rows) / len(rows) for m in METRICS}
    return {"props": [r["prop"] for r in rows], "rows": list(rows), "average": average}


def markdown_table(summary: dict[str, Any], title: str | None = None) -> str:
    """The sweep as a Markdown table: one column per proportion and ``Avg.``, one row per
    metric (percent, one decimal)."""
    props = summary["props"]
    head = ["metric (%)", *(f"{100 * p:g}%" for p in props), "Avg."]
    lines = [] if title is None else [title, ""]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for m in METRICS:
        vals = [f"{float(r[m]):.1f}" for r in summary["rows"]]
        lines.append(f"| {m} | " + " | ".join(vals) + f" | {summary['average'][m]:.1f} |")
    if len(props) != len(PROPS):
        lines += ["", f"Avg. is the mean over the {len(props)} proportions run, not all "
                  f"{len(PROPS)}."]
    return "\n".join(lines)


def _voc_note(train_spec: dict[str, Any]) -> str | None:
    name = str(train_spec.get("name", ""))
    difficult = train_spec.get("difficult", "ignore")
    if name.startswith("voc") and difficult != "negative":
        return (f"note: data.train.difficult is {difficult!r}; the published VOC partial-label "
                "files count kept difficult-only labels as negatives (difficult: negative), "
                "here they are " + ("unknown" if difficult == "ignore" else "positive"))
    return None


def run_sweep(config: str | Path, props: Sequence[float] = PROPS, sets: Sequence[str] = (),
              output_dir: str | Path | None = None, resume: bool = False) -> dict[str, Any]:
    """Train ``config`` at each proportion, write the JSON summary, return it."""
    if any(s.split("=", 1)[0].strip() == "data.protocol" for s in sets):
        raise ConfigError("--set data.protocol: the sweep sets the protocol of each run itself")
    base = load_config(config, list(sets) or None)
    out_dir = Path(output_dir if output_dir is not None else base.output_dir)
    note = _voc_note(base.data.train)
    if note:
        print(note, file=sys.stderr)
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for p in props:
        cfg = load_config(config, run_overrides(base.name, p, sets, out_dir))
        again = resume and (cfg.run_dir / "train_state.pt").exists()
        t0 = time.perf_counter()
        trainer = train(cfg, resume=cfg.run_dir if again else None)
        d = trainer.report.to_dict()
        rows.append({"prop": p, "name": cfg.name, "run_dir": str(cfg.run_dir),
                     "protocol": cfg.data.protocol, **{m: 100 * d[m] for m in METRICS},
                     "best_mAP": 100 * trainer.best["mAP"], "best_epoch": trainer.best["epoch"],
                     "epochs": trainer.epoch, "seconds": time.perf_counter() - t0,
                     "resumed": again})
    summary = summarize(rows)
    device = (torch.cuda.get_device_name(0) if torch.cuda.is_available()
              else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)")
    summary.update({
        "config": str(config), "name": base.name, "sets": list(sets),
        "protocol": "partial:<p>:legacy (NumPy RandomState(0), the published VOC files' mask)",
        "metrics": "final epoch, validation split, percent", "device": device,
        "seconds": time.perf_counter() - t_all})
    summary["table"] = markdown_table(summary, f"{base.name}: partial labels, "
                                      f"{len(props)} proportions, one run each")
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{base.name}_partial_sweep.json"
    atomic_write_text(path, json.dumps(summary, indent=2, default=str) + "\n")
    summary["json"] = str(path)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True, help="the YAML config to sweep")
    ap.add_argument("--props", nargs="+", default=[prop_label(p) for p in PROPS],
                    help="proportions of known labels (default: 0.1 ... 0.9)")
    ap.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE", dest="sets",
                    help="config overrides applied to every run")
    ap.add_argument("--output-dir", default=None,
                    help="where the runs and the JSON go (default: the config's output_dir)")
    ap.add_argument("--resume", action="store_true",
                    help="resume runs whose directory already holds a train_state.pt")
    args = ap.parse_args(argv)
    try:
        props = parse_props(args.props)
        summary = run_sweep(args.config, props, args.sets, args.output_dir, args.resume)
    except (ValueError, OSError) as e:  # ConfigError is a ValueError
        print(f"partial_sweep: {e}", file=sys.stderr)
        return 2
    print(summary["table"])
    print(f"\n{len(props)} runs (one each), {summary['seconds']:.0f} s in all on "
          f"{summary['device']}; JSON: {summary['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
