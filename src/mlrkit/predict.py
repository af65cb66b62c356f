"""Inference: load a checkpoint and turn images into labels, scores and attention maps."""

from __future__ import annotations

from collections.abc import Sequence
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

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "labels": self.labels, "scores": self.scores}


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu"
               ) -> tuple[MLRModel, Config, dict[str, Any]]:
    """Rebuild the model a checkpoint was trained as and load its weights."""
    from .engine.builders import build_model
    from .engine.checkpoint import SEMANTIC_KEYS, load_checkpoint

    state, meta = load_checkpoint(checkpoint)
    cfg = config_from_dict(meta["config"])
    semantics = {k.split(".", 1)[1]: state.pop(k, None) for k in SEMANTIC_KEYS}
    model = build_model(cfg, len(meta["label_names"]), semantics, pretrained=False)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{checkpoint}: weights do not fit the model "
                           f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(device).eval(), cfg, meta


class Predictor:
    """``Predictor.from_checkpoint(run_dir).predict(["a.jpg", ...])``."""

    def __init__(self, model: MLRModel, labels: LabelSpace, thresholds: Sequence[float],
                 image_size: int, device: str | torch.device = "cpu") -> None:
        import dataclasses

        from .data.transforms import transform_for

        self.model = model.to(device).eval()
        self.labels = labels
        self.thresholds = torch.as_tensor(list(thresholds), dtype=torch.float32)
        self.device = torch.device(device)
        prep = dataclasses.replace(model.backbone.preprocessing, image_size=image_size)
        self.transform = transform_for(prep, train=False)

    @classmethod
    def from_checkpoint(cls, checkpoint: str | Path, device: str = "auto") -> Predictor:
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        model, cfg, meta = load_model(checkpoint, device)
        return cls(model, LabelSpace(tuple(meta["label_names"])), meta["thresholds"],
                   cfg.data.image_size, device)

    @staticmethod
    def _open(img: str | Path | Image.Image) -> Image.Image:
        if isinstance(img, Image.Image):
            return img.convert("RGB")
        return open_rgb(img)

    @torch.no_grad()
    def predict(self, images: Sequence[str | Path | Image.Image], threshold: float | None = None,
                batch_size: int = 8, attention: bool = False) -> list[Prediction]:
        """Scores are probabilities (sigmoid of logits); ``threshold`` overrides the
        checkpoint's per-class thresholds."""
        out: list[Prediction] = []
        thr = (self.thresholds if threshold is None
               else torch.full_like(self.thresholds, float(threshold)))
        for start in range(0, len(images), batch_size):
            chunk = images[start:start + batch_size]
            batch = torch.stack([self.transform(self._open(im)) for im in chunk]).to(self.device)
            res = self.model(batch)
            probs = torch.sigmoid(res.logits.float()).cpu()
            for j, im in enumerate(chunk):
                p = probs[j]
                order = torch.argsort(p, descending=True)
                chosen = [self.labels.names[i] for i in order.tolist() if p[i] >= thr[i]]
                att = res.attention[j].cpu() if attention and res.attention is not None else None
                out.append(Prediction(
                    image=str(im) if not isinstance(im, Image.Image) else f"<image {start + j}>",
                    labels=chosen,
                    scores={n: float(v) for n, v in zip(self.labels.names, p.tolist())},
                    attention=att))
        return out
