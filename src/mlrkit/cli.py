"""The ``mlrkit`` command: train, eval, cv, predict, extract-features, embed-labels, export,
push, demo, data, list-models."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__


def _add_common(p: argparse.ArgumentParser, top: bool = False) -> None:
    # sub-commands must not reset a --debug given before them
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors",
                   default=False if top else argparse.SUPPRESS)


CHECKPOINT_HELP = "run directory, .safetensors file or hf-hub:owner/name[@revision]"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser. Building it imports nothing heavy (no torch): each command
    imports what it needs when it runs, so --help and --version answer at once."""
    parser = argparse.ArgumentParser(
        prog="mlrkit", description="Multi-label image recognition: train, evaluate and use "
        "label-semantics methods and their baselines (`mlrkit list-models` names them).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _add_common(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="train a model from a YAML config")
    p.add_argument("--config", help="YAML config (optional with --resume)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config keys, e.g. optim.lr=1e-4 data.val.split=test")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip bad label lines/images, listing them in RUN_DIR/skipped.txt")
    p.add_argument("--no-report", action="store_true",
                   help="skip the HTML report written to RUN_DIR/report at the end")
    _add_common(p)

    p = sub.add_parser("eval", help="evaluate a checkpoint on its (or another) val dataset")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override keys of the checkpoint's config, e.g. data.val.root=/x")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out bad label lines and unreadable images, listing them")
    p.add_argument("--report", metavar="DIR", help="also write a self-contained HTML report "
                   "(metrics, per-class AP, PR curves, F1 vs threshold, image gallery) to DIR")
    _add_common(p)

    p = sub.add_parser("cv", help="K-fold cross-validation of a config (inner validation "
                       "split picks the checkpoint; each outer fold is scored once)")
    p.add_argument("--config", required=True, help="YAML config; its data.train is the pool")
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    p.add_argument("--output-dir", help="where the runs and <name>_cv.json go "
                   "(default: the config's output_dir)")
    _add_common(p)

    p = sub.add_parser("predict", help="label images with a trained checkpoint")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--threshold", type=float, help="probability threshold for every class "
                   "(default: the checkpoint's per-class thresholds)")
    p.add_argument("--min-labels", type=int, default=1, metavar="N",
                   help="when fewer classes pass their thresholds, name the highest-scoring "
                   "ones up to N (default 1; 0: none)")
    p.add_argument("--top-k", type=int, metavar="K", help="name at most K classes per image")
    p.add_argument("--labels", metavar="A,B,...", help="score these label names instead of the "
                   "trained ones (open-vocabulary methods such as sigrl; comma-separated)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print one JSON object per image")
    out.add_argument("--csv", action="store_true",
                     help="print CSV: image, labels (;-joined), one probability per class")
    p.add_argument("--overlay", metavar="DIR", help="write one image per input with the "
                   "top classes' attention maps (heads with attention) to DIR")
    p.add_argument("--skip-bad", action="store_true",
                   help="go on past unreadable images, naming each one (on stderr, or as "
                   "an \"error\" field with --json)")
    p.add_argument("--max-image-pixels", type=int, metavar="N",
                   help="Pillow's decompression-bomb limit (default: the checkpoint's "
                   "data.max_image_pixels, else Pillow's; 0: no limit)")
    _add_common(p)

    p = sub.add_parser("extract-features",
                       help="run a frozen backbone once over a dataset into a feature cache")
    p.add_argument("--config", required=True, help="YAML config naming backbone and data")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    p.add_argument("--split", choices=["train", "val", "both"], default="both")
    p.add_argument("--skip-bad", action="store_true",
                   help="leave out bad label lines and unreadable images, listing them")
    _add_common(p)

    p = sub.add_parser("demo", help="the embedded demo: Fashion-MNIST mosaics, frozen "
                       "EfficientNet-Lite0 features, methods compared")
    p.add_argument("--methods", default=None,
                   help="comma-separated methods to compare (default: every demo method)")
    p.add_argument("--output-dir", default="runs", help="where the demo run goes")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE")
    _add_common(p)

    p = sub.add_parser("data", help="dataset tools")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION")
    q = dsub.add_parser("inspect", help="print label statistics of a dataset")
    q.add_argument("name", help="dataset name, e.g. voc2007, coco, list, nuswide")
    q.add_argument("--root")
    q.add_argument("--split")
    q.add_argument("--option", nargs="+", default=[], metavar="KEY=VALUE",
                   help="other load_dataset options, e.g. labels_file=... num_classes=80")
    _add_common(q)
    _add_common(p)

    p = sub.add_parser("embed-labels", help="compute label embeddings (CLIP text tower, "
                       "GloVe, MiniLM) of a list of names into a file read back by name")
    p.add_argument("--model", required=True, help="clip_vitb16, clip_rn101, clip_rn50, "
                   "glove50, minilm, or a GloVe .txt file")
    p.add_argument("--weights", metavar="FILE", help="CLIP weight file (or open_clip tag; "
                   "default: open_clip's 'openai' weights, if cached or downloadable)")
    p.add_argument("--template", help="CLIP prompt with one {} for the name (default: "
                   "'There is a {} in the scene', as MKT / SigRL)")
    names = p.add_mutually_exclusive_group(required=True)
    names.add_argument("--names", metavar="A,B,...", help="comma-separated label names")
    names.add_argument("--names-file", action="append", metavar="FILE",
                       help="one name a line (e.g. NUS-WIDE TagList1k.txt); repeat to join "
                       "files, a name listed twice is kept once")
    p.add_argument("--exclude-file", action="append", default=[], metavar="FILE",
                   help="leave out the names listed here (NUS-WIDE's 925 seen tags: "
                   "--names-file TagList1k.txt --exclude-file Concepts81.txt)")
    p.add_argument("--out", required=True, metavar="FILE",
                   help=".npz or .pkl (names + matrix), or .npy / .pt (matrix; names in "
                   "FILE.names.txt beside it)")
    p.add_argument("--no-normalize", action="store_true",
                   help="CLIP: keep the raw text features (as the reference's files)")
    p.add_argument("--device", help="CLIP: where to run the text tower (default: cuda if "
                   "available, else cpu)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    _add_common(p)

    p = sub.add_parser("list-models", help="list methods and backbones")
    _add_common(p)

    p = sub.add_parser("export", help="export a checkpoint (images -> logits) to ONNX or "
                       "TorchScript, class names and preprocessing inside the file")
    p.add_argument("--checkpoint", required=True, help=CHECKPOINT_HELP)
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", required=True, metavar="FILE", help="file to write")
    p.add_argument("--image-size", type=int, metavar="S",
                   help="input side (default: the checkpoint's data.image_size)")
    p.add_argument("--no-check", action="store_true",
                   help="skip running the written file against PyTorch on a random batch")
    _add_common(p)

    p = sub.add_parser("push", help="upload a run's checkpoint and a model card to the "
                       "Hugging Face Hub (then usable as --checkpoint hf-hub:REPO_ID)")
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="run directory (its best checkpoint, else last) or .safetensors file")
    p.add_argument("repo_id", metavar="REPO_ID", help="model repository, e.g. me/dlsa-voc")
    p.add_argument("--revision", metavar="BRANCH",
                   help="branch to commit to (created if missing; default: main)")
    p.add_argument("--private", action="store_true",
                   help="create the repository private (when it does not exist yet)")
    p.add_argument("--message", metavar="TEXT", help="commit message")
    p.add_argument("--dry-run", metavar="DIR", help="write the files that would be uploaded "
                   "(model card included) to DIR and upload nothing")
    _add_common(p)
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine.trainer import train

    config = args.config
    if config is None:
        if not args.resume:
            raise ValueError("train: give --config X.yaml (or --resume RUN_DIR)")
        config = Path(args.resume) / "config.yaml"
    cfg = load_config(config, args.set + (["data.skip_bad=true"] if args.skip_bad else []))
    trainer = train(cfg, resume=args.resume)
    if trainer.info.is_main:
        names = list(trainer.labels.names)
        best = trainer.best
        if trainer.best_report is not None:
            print(f"best checkpoint: epoch {best['epoch']} of {trainer.epoch} (validation "
                  "split; `mlrkit eval` and `predict` use this checkpoint)")
            print(trainer.best_report.format_table(names))
        else:
            print(f"epoch {trainer.epoch} (the last; best checkpoint: epoch {best['epoch']}, "
                  f"mAP {100 * best['mAP']:.2f})")
            print(trainer.report.format_table(names))
        if not args.no_report:
            from .report import report_checkpoint

            path = report_checkpoint(trainer.run_dir, trainer.run_dir / "report")
            print(f"report: {path}")
        print(f"run written to {trainer.run_dir}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .engine.evaluation import evaluate_checkpoint, predict_checkpoint

    overrides = args.set + (["data.skip_bad=true"] if args.skip_bad else [])
    if args.report:
        pred = predict_checkpoint(args.checkpoint, overrides)
        report, names = pred.report, pred.names
    else:
        report, names = evaluate_checkpoint(args.checkpoint, overrides)
    _print_skipped(getattr(report, "skipped", []))
    zero_shot = getattr(report, "zero_shot", None)  # zero-shot runs: ZSL / GZSL metrics
    spml = getattr(report, "spml", None)  # eval.spml: SPML metrics
    if args.json:
        out = report.to_dict()
        if zero_shot is not None:
            out["zero_shot"] = zero_shot.to_dict()
        if spml is not None:
            out["spml"] = spml.to_dict()
        print(json.dumps(out, indent=2, default=str))
    else:
        print(report.format_table(names))
        if zero_shot is not None:
            print("\nzero-shot (ZSL: unseen labels scored alone; GZSL: all labels)")
            print(zero_shot.format_table())
        if spml is not None:
            print("\nsingle-positive metrics (per-image top-k means)")
            print(spml.format_table())
    if args.report:
        from .report import report_from_predictions

        print(f"report: {report_from_predictions(pred, args.report)}",
              file=sys.stderr if args.json else sys.stdout)
    return 0


def _cmd_cv(args: argparse.Namespace) -> int:
    from .engine.crossval import cross_validate, format_summary

    res = cross_validate(args.config, args.folds, args.seeds, args.set, args.output_dir)
    title = (f"{res['name']}: {args.folds}-fold cross-validation x {len(args.seeds)} seeds "
             f"(test folds, mean ± std over {len(res['runs'])} runs)")
    print(format_summary(res["summary"], title))
    print()
    print(format_summary(res["pooled"], f"pooled: each seed's {args.folds} test folds scored "
                         f"together (mean ± std over {len(args.seeds)} seeds)"))
    print(f"written to {res['path']}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    import csv

    from .predict import Predictor

    pred = Predictor.from_checkpoint(args.checkpoint, max_image_pixels=args.max_image_pixels)
    if args.labels:
        pred.set_labels(args.labels.split(","), threshold=args.threshold)
    images = _expand_images(args.images)
    names = list(pred.labels.names)
    writer = None
    if args.csv:
        writer = csv.writer(sys.stdout)
        writer.writerow(["image", "labels", *names])
    overlay_dir = Path(args.overlay) if args.overlay else None
    if overlay_dir is not None:
        overlay_dir.mkdir(parents=True, exist_ok=True)
    skipped = 0
    for i, res in enumerate(pred.iter_predict(
            images, threshold=args.threshold, skip_bad=args.skip_bad,
            min_labels=args.min_labels, top_k=args.top_k, attention=overlay_dir is not None)):
        if args.json:
            print(json.dumps(res.to_dict()), flush=True)
        elif res.error is not None:
            print(f"skipped {res.error}", file=sys.stderr)
        elif writer is not None:
            writer.writerow([res.image, ";".join(res.labels),
                             *(f"{res.scores[n]:.6f}" for n in names)])
        else:
            top = ", ".join(f"{n} {res.scores[n]:.2f}" for n in res.labels) or "(none)"
            print(f"{res.image}: {top}", flush=True)
        skipped += res.error is not None
        if overlay_dir is not None and res.error is None:
            _write_overlay(res, names, overlay_dir, i, args.top_k or 3)
    if skipped:
        print(f"{skipped} of {len(images)} images skipped (unreadable)", file=sys.stderr)
    return 0


_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def _expand_images(items: Sequence[str]) -> list[str]:
    """Files as given; a folder stands for its image files (by suffix), sorted by name."""
    out: list[str] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(str(f) for f in p.iterdir() if f.suffix.lower() in _IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"{p}: no image files in this folder")
            out += found
        else:
            out.append(item)
    return out


def _write_overlay(res, names: list[str], folder: Path, index: int, top_k: int) -> None:
    from .io import atomic_write, open_rgb
    from .viz import overlay

    target = folder / f"{index:05d}_{Path(res.image).stem}.png"
    if res.attention is None:
        raise ValueError("--overlay: this checkpoint's head returns no attention maps")
    img = overlay(open_rgb(res.image), res.attention, names,
                  [res.scores[n] for n in names], top_k=top_k)
    with atomic_write(target) as f:
        img.save(f, format="PNG")


def _print_skipped(skipped: list[str]) -> None:
    if skipped:
        print(f"skipped {len(skipped)} bad label lines / images:", file=sys.stderr)
        for item in skipped:
            print(f"  {item}", file=sys.stderr)


def _cmd_extract(args: argparse.Namespace) -> int:
    from .config import load_config
    from .engine import builders
    from .engine.distributed import DistInfo

    cfg = load_config(args.config, args.set + (["data.skip_bad=true"] if args.skip_bad else []))
    cfg.data.cache = True
    info = DistInfo()
    device = builders.resolve_device(cfg.train.device, info)
    splits = ["train", "val"] if args.split == "both" else [args.split]
    datasets = {s: builders.load_split(cfg, s) for s in splits}
    for ds in datasets.values():
        _print_skipped(ds.info.get("skipped", []))
    from .model import create_model

    # the cache depends on the backbone alone, so a plain head suffices to hold it
    model = create_model("baseline", backbone=cfg.model.backbone, pretrained=cfg.model.pretrained,
                         num_classes=len(next(iter(datasets.values())).labels),
                         freeze_backbone=True)
    for s, ds in datasets.items():
        feats = builders.cached_dataset(cfg, model, ds, device, info)
        print(f"{s}: {len(feats)} feature maps cached under {cfg.data.cache_dir}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    methods = args.methods.split(",") if args.methods else None
    run_demo(methods=methods, output_dir=args.output_dir, overrides=args.set)
    return 0


def _cmd_data(args: argparse.Namespace) -> int:
    from .config import parse_overrides
    from .data import load_dataset
    from .data.inspect import summarize

    if args.data_command != "inspect":
        raise ValueError("data: choose an action, e.g. `mlrkit data inspect voc2007 --root ...`")
    options = parse_overrides(args.option)
    ds = load_dataset(args.name, root=args.root, split=args.split, **options)
    print(summarize(ds, max_classes=None))
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    from .hub import push_run, stage_run

    if args.dry_run:
        for f in stage_run(args.run_dir, args.dry_run, args.repo_id):
            print(f"{f}  ({f.stat().st_size} bytes)")
        return 0
    url = push_run(args.run_dir, args.repo_id, revision=args.revision, private=args.private,
                   commit_message=args.message)
    print(f"pushed to {url}")
    print(f"use it as: mlrkit predict --checkpoint hf-hub:{args.repo_id}"
          + (f"@{args.revision}" if args.revision else "") + " IMAGE")
    return 0


def _read_names(path: str) -> list[str]:
    """Names one a line (CR/LF, blank lines skipped; ``index<TAB>name`` keeps the name)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: names file not found") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    names = [ln.split("\t")[-1].strip() for ln in text.splitlines()]
    names = [n for n in names if n]
    if not names:
        raise ValueError(f"{path}: no names in this file")
    return names


def _cmd_embed_labels(args: argparse.Namespace) -> int:
    if args.names is not None:
        listed = [n.strip() for n in args.names.split(",") if n.strip()]
    else:
        listed = [n for f in args.names_file for n in _read_names(f)]
    drop = {n for f in args.exclude_file for n in _read_names(f)}
    names = [n for n in dict.fromkeys(listed) if n not in drop]
    if not names:
        raise ValueError("embed-labels: no names left to embed")
    from .semantics.embeddings import label_embeddings, save_label_embeddings

    model = args.model
    clip = model.startswith("clip")
    if not clip and (args.weights or args.template or args.no_normalize or args.device):
        raise ValueError(f"embed-labels: --weights, --template, --no-normalize and --device "
                         f"apply to CLIP models, not {model!r}")
    meta = {"source": model}
    if clip:
        from .semantics.clip_text import DEFAULT_TEMPLATE, clip_label_embeddings

        arch = model.removeprefix("clip:")
        template = args.template if args.template is not None else DEFAULT_TEMPLATE
        emb = clip_label_embeddings(names, model=arch, weights=args.weights, template=template,
                                    cache=not args.no_cache, device=args.device,
                                    normalize=not args.no_normalize)
        meta = {"source": f"clip:{arch}", "weights": str(args.weights or "openai"),
                "template": template, "normalized": str(not args.no_normalize).lower()}
    else:
        emb = label_embeddings(model, names, cache=not args.no_cache)
    out = save_label_embeddings(args.out, names, emb, meta)
    print(f"{len(names)} x {emb.shape[1]} label embeddings ({meta['source']}) written to {out}"
          + (f" (names in {out.with_suffix('.names.txt')})" if out.suffix in (".npy", ".pt")
             else ""))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model

    res = export_model(args.checkpoint, args.out, format=args.format,
                       image_size=args.image_size, check=not args.no_check)
    names = res.metadata.get("label_names") or []
    print(f"{res.format}: {res.path} ({res.input_name} {res.input_shape} -> "
          f"{', '.join(res.output_names)} (batch, {len(names)}))")
    if res.max_abs_diff is not None:
        print(f"max |logit difference| vs PyTorch on a random batch: {res.max_abs_diff:.2e}")
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .backbones import list_backbones
    from .model import list_models

    print("methods:   " + ", ".join(list_models()))
    print("backbones: " + ", ".join(list_backbones()))
    return 0


_COMMANDS = {"train": _cmd_train, "eval": _cmd_eval, "cv": _cmd_cv, "predict": _cmd_predict,
             "extract-features": _cmd_extract, "demo": _cmd_demo, "data": _cmd_data,
             "list-models": _cmd_list, "embed-labels": _cmd_embed_labels,
             "export": _cmd_export, "push": _cmd_push}


def error_line(e: BaseException) -> str:
    """One line for the user: the message's first line, or for an error re-raised from a
    DataLoader worker (``Caught X in DataLoader worker process N. Original Traceback...``)
    the original error's own message, which names the file."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if "Original Traceback" in text and len(lines) > 1:
        last = lines[-1].strip()
        head, sep, rest = last.partition(": ")
        is_type = sep and head.replace(".", "").replace("_", "").isalnum()
        return rest if is_type else last
    return lines[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("mlrkit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line for the user; --debug shows all
        if args.debug:
            raise
        print(f"mlrkit {args.command}: error: {error_line(e)}", file=sys.stderr)
        print("(run again with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
