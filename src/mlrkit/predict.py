"""Inference: load a checkpoint and turn images into labels, scores and attention maps."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .config import Config, config_from_dict
from .io import open_rgb
from .labels import LabelSpace
from .model import MLRModel


@dataclass
class Prediction:
    image: str
    labels: list[str]  # names whose score passes the class threshold, highest first
    scores: dict[str, float]  # every class's probability
    attention: torch.Tensor | None = field(default=None, repr=False)  # (C, h, w)
    error: str | None = None  # why the image was skipped (``skip_bad``); then no scores

    def to_dict(self) -> dict[str, Any]:
        if self.error is not None:
            return {"image": self.image, "error": self.error}
        return {"image": self.image, "labels": self.labels, "scores": self.scores}


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[MLRModel, Config, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained as and load its weights.

    For a zero-shot run the returned metadata also holds ``label_bank``: the embeddings
    (C_all, E) of every label in ``meta["zero_shot"]["names"]``, seen and unseen."""
    from .engine.builders import build_model
    from .engine.checkpoint import SEMANTIC_KEYS, load_checkpoint, resolve_checkpoint

    state, meta = load_checkpoint(checkpoint)
    weights = resolve_checkpoint(checkpoint)
    n = len(meta["label_names"])

    def mismatch(key: str, got: tuple[int, ...], want: tuple[int, ...]) -> RuntimeError:
        # the class count is the axis where the model expects n and the file differs
        m = next((g for g, w in zip(got, want) if w == n and g != w), None)
        if m is None or len(got) != len(want):
            return RuntimeError(f"{weights}: weights do not fit the model built from "
                                f"{weights.with_suffix('.json').name}: {key} has shape "
                                f"{got} in the file, the model expects {want}")
        return RuntimeError(f"{weights}: {weights.with_suffix('.json').name} lists {n} "
                            f"classes but the weights have {m} ({key}: {got} in the file, "
                            f"{want} for {n} classes); the two files come from different "
                            "runs or one was edited")

    cfg = config_from_dict(meta["config"])
    semantics = {k.split(".", 1)[1]: state.pop(k, None) for k in SEMANTIC_KEYS}
    bank = state.pop("__semantics__.label_bank", None)  # zero-shot runs: every label's row
    zs = meta.get("zero_shot")
    if bank is not None or zs:
        if bank is None or not zs or bank.shape[0] != len(zs.get("names", [])):
            raise RuntimeError(f"{weights}: the zero-shot label bank and the "
                               f"{weights.with_suffix('.json').name} label list do not "
                               "match; the two files come from different runs")
        meta = {**meta, "label_bank": bank}
    for key, value in semantics.items():  # checked before they reach create_model
        if value is not None and value.shape[0] != n:
            want = (n, n) if key == "graph" else (n, *value.shape[1:])
            raise mismatch(f"__semantics__.{key}", tuple(value.shape), want)
    model = build_model(cfg, n, semantics, pretrained=False,
                        class_names=list(meta["label_names"]))
    expected = model.state_dict()
    for key, want in expected.items():  # the first misfit in the model's own order
        if key in state and state[key].shape != want.shape:
            raise mismatch(key, tuple(state[key].shape), tuple(want.shape))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{checkpoint}: weights do not fit the model "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(device).eval(), cfg, meta


class Predictor:
    """``Predictor.from_checkpoint(run_dir).predict(["a.jpg", ...])``."""

    def __init__(self, model: MLRModel, labels: LabelSpace, thresholds: Sequence[float],
                 image_size: int, device: str | torch.device = "cpu",
                 max_image_pixels: int | None = None) -> None:
        import dataclasses

        from .data.transforms import transform_for

        self.model = model.to(device).eval()
        self.labels = labels
        self.label_embeddings: torch.Tensor | None = None  # set by set_labels
        self.embedding_source: str | None = None  # how the checkpoint embedded its labels
        self.label_bank: dict[str, torch.Tensor] = {}  # name -> embedding, zero-shot runs
        self.thresholds = torch.as_tensor(list(thresholds), dtype=torch.float32)
        self.device = torch.device(device)
        self.max_image_pixels = max_image_pixels
        prep = dataclasses.replace(model.backbone.preprocessing, image_size=image_size)
        self.transform = transform_for(prep, train=False)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = "auto",
                        max_image_pixels: int | None = None) -> Predictor:
        """``max_image_pixels`` overrides the checkpoint config's ``data.max_image_pixels``."""
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model, cfg, meta = load_model(checkpoint, device)
        limit = max_image_pixels if max_image_pixels is not None else getattr(
            cfg.data, "max_image_pixels", None)
        pred = cls(model, LabelSpace(tuple(meta["label_names"])), meta["thresholds"],
                   cfg.data.image_size, device, limit)
        pred.embedding_source = cfg.model.label_embeddings
        pred.model_config = cfg.model  # set_labels: weights / template of a clip: source
        if "label_bank" in meta:  # zero-shot run: the embeddings of all its labels
            pred.label_bank = dict(zip(meta["zero_shot"]["names"], meta["label_bank"]))
        pred.default_threshold = cfg.eval.threshold
        return pred

    def set_labels(self, names: Sequence[str], threshold: float | None = None) -> None:
        """Score ``names`` from now on, labels the model may never have seen (open-vocabulary
        heads such as ``sigrl``): their embeddings come from the source the checkpoint was
        trained with; every class gets ``threshold`` (default: the config's
        ``eval.threshold``), since no validation chose one for them. A ``clip:<backbone>``
        source uses the config's ``model.label_template`` and, when the model's backbone is
        that CLIP, the checkpoint's own text tower (the weights ``model.pretrained`` named);
        else ``model.label_weights`` or open_clip's default weights."""
        names = [str(n).strip() for n in names if str(n).strip()]
        if not names:
            raise ValueError("set_labels: no label names given")
        if not self.model.open_vocabulary:
            raise ValueError(f"method {self.model.method!r} scores only the labels it was "
                             "trained on; --labels needs an open-vocabulary method (sigrl)")
        # names a zero-shot run embedded already come from its label bank (the exact rows it
        # was evaluated with); the others from the embedding source
        missing = list(dict.fromkeys(n for n in names if n not in self.label_bank))
        if missing:
            rows = dict(zip(missing, self._embed(missing)))
        emb = torch.stack([self.label_bank[n] if n in self.label_bank else rows[n]
                           for n in names]).float()
        self.label_embeddings = emb.to(self.device)
        self.labels = LabelSpace(tuple(names))
        thr = threshold if threshold is not None else getattr(self, "default_threshold", 0.5)
        self.thresholds = torch.full((len(names),), float(thr))

    def _embed(self, names: list[str]) -> torch.Tensor:
        from .semantics.embeddings import embedding_options, label_embeddings

        if not self.embedding_source:
            raise ValueError("set_labels: the checkpoint names no label-embedding source")
        opts: dict[str, Any] = {}
        if self.embedding_source.startswith("clip:"):
            mcfg = getattr(self, "model_config", None)
            opts = embedding_options(mcfg) if mcfg is not None else {"weights": None,
                                                                     "template": None}
            bb = self.model.backbone
            if (getattr(mcfg, "label_weights", None) is None and hasattr(bb, "text")
                    and getattr(bb, "name", None) == self.embedding_source[len("clip:"):]):
                opts["weights"] = bb  # its text tower came with the checkpoint
        return label_embeddings(self.embedding_source, names, **opts)

    def _open(self, img: str | Path | Image.Image) -> Image.Image:
        if isinstance(img, Image.Image):
            return img.convert("RGB")
        return open_rgb(img, self.max_image_pixels)

    def predict(self, images: str | Path | Image.Image | Sequence[str | Path | Image.Image],
                threshold: float | None = None, batch_size: int = 8, attention: bool = False,
                skip_bad: bool = False, min_labels: int = 0,
                top_k: int | None = None) -> list[Prediction]:
        """One ``Prediction`` per image (a single path or image is one image). Scores are
        probabilities (sigmoid of logits); ``threshold`` overrides the checkpoint's
        per-class thresholds. ``min_labels``: when fewer classes pass their thresholds, the
        highest-scoring others fill up to it (a top-k fallback); ``top_k``: at most that
        many labels. An image that cannot be read raises ``DataError`` naming it, or with
        ``skip_bad`` gives a ``Prediction`` with ``error`` set and no scores."""
        return list(self.iter_predict(images, threshold, batch_size, attention, skip_bad,
                                      min_labels, top_k))

    @torch.no_grad()
    def iter_predict(self, images: str | Path | Image.Image | Sequence[str | Path | Image.Image],
                     threshold: float | None = None, batch_size: int = 8,
                     attention: bool = False, skip_bad: bool = False, min_labels: int = 0,
                     top_k: int | None = None) -> Iterator[Prediction]:
        """``predict`` as a generator: results come out batch by batch, in input order."""
        from .data.base import DataError

        if isinstance(images, str | Path | Image.Image):
            images = [images]
        images = list(images)
        thr = (self.thresholds if threshold is None
               else torch.full_like(self.thresholds, float(threshold)))
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            names = [str(im) if not isinstance(im, Image.Image) else f"<image {start + j}>"
                     for j, im in enumerate(chunk)]
            tensors: list[torch.Tensor | None] = []
            errors: list[str | None] = []
            for im in chunk:
                try:
                    tensors.append(self.transform(self._open(im)))
                    errors.append(None)
                except (FileNotFoundError, ValueError) as e:
                    if not skip_bad:
                        raise DataError(f"{e} (pass skip_bad=True / --skip-bad to skip "
                                        "unreadable images)") from None
                    tensors.append(None)
                    errors.append(str(e))
            good = [t for t in tensors if t is not None]
            if good:
                res = self.model(torch.stack(good).to(self.device),
                                 label_embeddings=self.label_embeddings)
                probs = torch.sigmoid(res.logits.float()).cpu()
            k = 0
            for j, name in enumerate(names):
                if errors[j] is not None:
                    yield Prediction(image=name, labels=[], scores={}, error=errors[j])
                    continue
                p = probs[k]
                order = torch.argsort(p, descending=True).tolist()
                passed = [i for i in order if p[i] >= thr[i]]
                if len(passed) < min_labels:  # fallback: the best of the rest
                    passed += [i for i in order if p[i] < thr[i]][:min_labels - len(passed)]
                chosen = [self.labels.names[i] for i in passed[:top_k]]
                att = res.attention[k].cpu() if attention and res.attention is not None else None
                k += 1
                yield Prediction(
                    image=name, labels=chosen,
                    scores={n: float(v) for n, v in zip(self.labels.names, p.tolist())},
                    attention=att)
