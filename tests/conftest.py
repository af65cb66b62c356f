"""Shared test fixtures: where the real data lives, and small image datasets made on the fly."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

torch.set_num_threads(1)  # small ops: a 2nd thread costs more than it gives

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MLRKIT_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real data folder {DATA} not found (set MLRKIT_DATA)")
    return DATA


def make_color_images(folder: Path, n: int, size: int = 32, seed: int = 0) -> Path:
    """Write ``n`` PNGs whose labels (3 classes: red, green, blue present) are learnable from
    the pixels, and a ``labels.txt`` in the ``file, idx idx`` list format; return the list."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        present = rng.random(3) < 0.5
        img = rng.integers(0, 60, size=(size, size, 3), dtype=np.uint8)
        for c in np.flatnonzero(present):
            img[..., c] = np.clip(img[..., c].astype(int) + 150, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img{i:04d}.png")
        lines.append(f"img{i:04d}.png, " + " ".join(str(c) for c in np.flatnonzero(present)))
    (folder / "labels.txt").write_text("\n".join(lines) + "\n")
    (folder / "names.txt").write_text("red\ngreen\nblue\n")
    return folder / "labels.txt"


def train_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int,
                 lr: float, loss_fn=None) -> list[float]:
    """Full-batch Adam steps on cached feature maps; the loss after each step's forward."""
    import torch.nn.functional as F

    from mlrkit.structures import Features

    loss_fn = loss_fn or F.binary_cross_entropy_with_logits
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = loss_fn(model(Features(map=x)).logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def write_config(path: Path, cfg: dict, over: dict | None = None) -> Path:
    """Write a run config as YAML after ``over``: dotted keys (``"train.epochs": 2``) set
    inside the nested mapping; return the path."""
    import yaml

    for k, v in (over or {}).items():
        node = cfg
        *parents, last = k.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = v
    path.write_text(yaml.safe_dump(cfg))
    return path
