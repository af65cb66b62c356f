"""``fashion_mosaic``: a multi-label demo task composed from Fashion-MNIST's real photos.

Each image is a ``grid x grid`` mosaic; every positive class contributes one real
Fashion-MNIST photo of that class placed in its own random cell (empty cells stay black).
Labels follow an "outfit" prior so that classes co-occur the way clothes do:

* with probability ``outfit_prob`` the image is an outfit:
  one top (uniform over T-shirt/top, Pullover, Dress, Coat, Shirt);
  Trouser with probability ``bottom_prob`` (``dress_bottom_prob`` when the top is a Dress);
  one pair of shoes with probability ``shoes_prob``: with probability ``shoe_match_prob`` the
  pair that matches the top (Dress -> Sandal; Coat, Pullover -> Ankle boot;
  T-shirt/top, Shirt -> Sneaker), otherwise uniform over Sandal, Sneaker, Ankle boot;
  a Bag with probability ``bag_prob``;
  a Coat layered over a non-Coat top with probability ``layer_prob``;
* otherwise it is a random assortment: ``k`` uniform in ``[min_items, max_items]`` distinct
  classes, uniform over the 10;
* then every image is brought into ``[min_items, max_items]`` items: surplus items are dropped
  uniformly at random, missing ones are added uniformly from the absent classes.

All draws for image ``i`` come from row ``i`` of one ``(N, 29)`` uniform matrix, so targets are
computed up front, vectorized, and image ``i`` is the same whatever ``num_images`` is. The
layout (cells, source photo, item size and offset) is drawn lazily from a generator seeded by
``(seed, split, i)``. ``split="train"`` uses Fashion-MNIST's 60,000 training photos,
``split="test"`` its 10,000 test photos.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..labels import LabelSpace
from ..registry import DATASETS
from .base import DataError, MultiLabelDataset

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
TSHIRT, TROUSER, PULLOVER, DRESS, COAT, SANDAL, SHIRT, SNEAKER, BAG, BOOT = range(10)
TOPS = (TSHIRT, PULLOVER, DRESS, COAT, SHIRT)
SHOES = (SANDAL, SNEAKER, BOOT)
MATCHING_SHOE = {TSHIRT: SNEAKER, PULLOVER: BOOT, DRESS: SANDAL, COAT: BOOT, SHIRT: SNEAKER}
NUM_CLASSES = len(FASHION_CLASSES)

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"  # Debian package dataset-fashion-mnist
ENV_ROOT = "MLRKIT_FASHION_MNIST"
_FILES = {"train": "train", "test": "t10k"}
_SPLIT_CODE = {"train": 0, "test": 1}
# columns of the per-image uniform matrix
_U_OUTFIT, _U_TOP, _U_BOTTOM, _U_SHOE, _U_HAS_SHOE, _U_BAG, _U_LAYER, _U_K = range(8)
_U_ASSORT = slice(8, 18)  # sort keys of the random assortment
_U_CLAMP = slice(18, 28)  # sort keys used to drop / add items
_U_MATCH = 28
_NUM_U = 29


@dataclass(frozen=True)
class OutfitPrior:
    """Parameters of the label prior (see the module docstring)."""

    outfit_prob: float = 0.75
    bottom_prob: float = 0.8
    dress_bottom_prob: float = 0.1
    shoes_prob: float = 0.8
    bag_prob: float = 0.3
    layer_prob: float = 0.25
    shoe_match_prob: float = 0.6

    def __post_init__(self) -> None:
        for k, v in asdict(self).items():
            if not 0.0 <= float(v) <= 1.0:
                raise ValueError(f"fashion_mosaic: {k} must be a probability in [0, 1], got {v}")


def sample_labels(u: np.ndarray, prior: OutfitPrior, min_items: int,
                  max_items: int) -> np.ndarray:
    """(N, 10) bool label matrix from an (N, 29) uniform matrix ``u`` (vectorized)."""
    n = u.shape[0]
    rows = np.arange(n)
    outfit = np.zeros((n, NUM_CLASSES), dtype=bool)
    top = np.asarray(TOPS)[np.minimum((u[:, _U_TOP] * len(TOPS)).astype(int), len(TOPS) - 1)]
    outfit[rows, top] = True
    p_bottom = np.where(top == DRESS, prior.dress_bottom_prob, prior.bottom_prob)
    outfit[:, TROUSER] = u[:, _U_BOTTOM] < p_bottom
    shoe = np.asarray(SHOES)[np.minimum((u[:, _U_SHOE] * len(SHOES)).astype(int), len(SHOES) - 1)]
    match = np.zeros(NUM_CLASSES, dtype=int)
    match[list(MATCHING_SHOE)] = list(MATCHING_SHOE.values())
    shoe = np.where(u[:, _U_MATCH] < prior.shoe_match_prob, match[top], shoe)
    outfit[rows, shoe] |= u[:, _U_HAS_SHOE] < prior.shoes_prob
    outfit[:, BAG] |= u[:, _U_BAG] < prior.bag_prob
    outfit[:, COAT] |= (top != COAT) & (u[:, _U_LAYER] < prior.layer_prob)

    span = max_items - min_items + 1
    k = min_items + np.minimum((u[:, _U_K] * span).astype(int), span - 1)
    assort = _rank(u[:, _U_ASSORT]) < k[:, None]
    labels = np.where((u[:, _U_OUTFIT] < prior.outfit_prob)[:, None], outfit, assort)

    keys = u[:, _U_CLAMP]
    drop = _rank(np.where(labels, keys, np.inf)) >= max_items  # keep the max_items lowest keys
    labels &= ~drop
    need = np.maximum(min_items - labels.sum(1), 0)
    labels |= _rank(np.where(labels, np.inf, keys)) < need[:, None]
    return labels


def _rank(keys: np.ndarray) -> np.ndarray:
    """Row-wise rank (0 = smallest) of each entry."""
    return np.argsort(np.argsort(keys, axis=1, kind="stable"), axis=1, kind="stable")


# ---------------------------------------------------------------------------- idx files

_CACHE: dict[tuple[str, float], tuple[np.ndarray, np.ndarray]] = {}
_CACHE_LOCK = threading.Lock()


def resolve_root(root: str | os.PathLike[str] | None) -> Path:
    """``root``, else ``$MLRKIT_FASHION_MNIST``, else the Debian package folder."""
    return Path(root if root is not None else os.environ.get(ENV_ROOT, DEFAULT_ROOT))


def _find(root: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}: install the photos with "
        f"`apt-get install dataset-fashion-mnist` (they go to {DEFAULT_ROOT}), or point "
        f"root= / ${ENV_ROOT} to a folder holding the idx files")


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an idx file (uint8 payload, big-endian header), gzip-compressed or raw."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read ({e}); reinstall dataset-fashion-mnist") from None
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated idx header")
    magic = int.from_bytes(data[:4], "big")
    if magic != 0x0800 + ndim:
        raise DataError(f"{path}: not an idx{ndim} uint8 file (magic {magic:#x}, "
                        f"expected {0x0800 + ndim:#x})")
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if len(data) != header + int(np.prod(dims)):
        raise DataError(f"{path}: header says {dims} but the payload has "
                        f"{len(data) - header} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def load_fashion_mnist(root: str | os.PathLike[str] | None,
                       split: str) -> tuple[np.ndarray, np.ndarray]:
    """(photos (N, 28, 28) uint8, labels (N,) uint8) of one Fashion-MNIST split (cached)."""
    base = resolve_root(root)
    if not base.is_dir():
        _find(base, f"{_FILES[split]}-images-idx3-ubyte")  # raises the install hint
    img_path = _find(base, f"{_FILES[split]}-images-idx3-ubyte")
    lab_path = _find(base, f"{_FILES[split]}-labels-idx1-ubyte")
    key = (str(img_path.resolve()), img_path.stat().st_mtime)
    with _CACHE_LOCK:
        if key not in _CACHE:
            photos, labels = read_idx(img_path, 3), read_idx(lab_path, 1)
            if len(photos) != len(labels):
                raise DataError(f"{img_path}: {len(photos)} photos but {lab_path} has "
                                f"{len(labels)} labels")
            if labels.size and int(labels.max()) >= NUM_CLASSES:
                raise DataError(f"{lab_path}: label {int(labels.max())} outside 0..9")
            _CACHE[key] = (photos, labels)
        return _CACHE[key]


# ---------------------------------------------------------------------------- dataset

@dataclass(frozen=True)
class Item:
    """One placed photo: class, index of the source photo in its split, pixel box."""

    cls: int
    photo: int
    box: tuple[int, int, int, int]  # left, top, right, bottom (exclusive)


class FashionMosaic(MultiLabelDataset):
    """Mosaics composed on the fly; ``ds[i]`` -> (PIL RGB image or transformed, target)."""

    def __init__(self, targets: torch.Tensor, ids: list[str], photos: np.ndarray,
                 photo_labels: np.ndarray, grid: int, image_size: int,
                 item_scale: tuple[float, float], seed: int, split: str,
                 info: dict[str, Any]) -> None:
        super().__init__(None, targets, LabelSpace(FASHION_CLASSES), ids=ids, info=info)
        # what is drawn; kept apart from .targets, which a label protocol may hide or drop
        self.present = targets.numpy() == 1
        self.rows = np.arange(len(targets))  # each row's index in the generated split
        self.photos = photos
        self.grid = grid
        self.image_size = image_size
        self.item_scale = item_scale
        self.seed = seed
        self.split = split
        order = np.argsort(photo_labels, kind="stable")
        bounds = np.searchsorted(photo_labels[order], np.arange(NUM_CLASSES + 1))
        self.pools = [order[bounds[c]:bounds[c + 1]] for c in range(NUM_CLASSES)]
        edges = np.linspace(0, image_size, grid + 1).round().astype(int)
        self.cell_edges = edges

    def __getstate__(self) -> dict[str, Any]:  # spawned workers reload the photos
        state = dict(self.__dict__)
        state["photos"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.photos is None:
            self.photos = load_fashion_mnist(self.info["root"], self.split)[0]

    def subset(self, indices: Sequence[int]) -> FashionMosaic:
        """Rows ``indices`` of this mosaic set: each keeps the picture it had (the layout is
        drawn from the row's index in the generated split, not its new position)."""
        new = super().subset(indices)
        idx = np.asarray([int(i) for i in indices], dtype=np.int64)
        new.present = self.present[idx]
        new.rows = self.rows[idx]
        return new

    def cell_box(self, cell: int) -> tuple[int, int, int, int]:
        r, c = divmod(cell, self.grid)
        e = self.cell_edges
        return int(e[c]), int(e[r]), int(e[c + 1]), int(e[r + 1])

    def layout(self, i: int) -> list[Item]:
        """The items of image ``i``, drawn from a generator seeded by (seed, split, i)."""
        if not 0 <= i < len(self):
            raise IndexError(f"fashion_mosaic: index {i} out of range 0..{len(self) - 1}")
        rng = np.random.default_rng([self.seed, _SPLIT_CODE[self.split], 1,
                                     int(self.rows[i])])
        classes = np.flatnonzero(self.present[i])
        cells = rng.permutation(self.grid * self.grid)[: len(classes)]
        u = rng.random((len(classes), 4))
        items = []
        lo, hi = self.item_scale
        for j, cls in enumerate(classes):  # at most grid*grid items
            pool = self.pools[cls]
            photo = int(pool[min(int(u[j, 0] * len(pool)), len(pool) - 1)])
            x0, y0, x1, y1 = self.cell_box(int(cells[j]))
            side = max(1, int(round(min(x1 - x0, y1 - y0) * (lo + (hi - lo) * u[j, 1]))))
            ox = x0 + int(u[j, 2] * (x1 - x0 - side + 1))
            oy = y0 + int(u[j, 3] * (y1 - y0 - side + 1))
            items.append(Item(int(cls), photo, (ox, oy, ox + side, oy + side)))
        return items

    def compose(self, items: list[Item]) -> Image.Image:
        """Paste each item's photo, resized (bilinear) to its box, on a black canvas."""
        canvas = np.zeros((self.image_size, self.image_size), dtype=np.uint8)
        for it in items:
            x0, y0, x1, y1 = it.box
            patch = Image.fromarray(self.photos[it.photo]).resize((x1 - x0, y1 - y0),
                                                                  Image.BILINEAR)
            canvas[y0:y1, x0:x1] = np.asarray(patch)
        return Image.fromarray(np.repeat(canvas[:, :, None], 3, axis=2), mode="RGB")

    def load_image(self, i: int) -> Image.Image:
        return self.compose(self.layout(i))

    def item_boxes(self, i: int, kind: str = "cell", normalized: bool = True) -> np.ndarray:
        """Where image ``i``'s items are: (K, 5) float64 rows ``(class, x1, y1, x2, y2)``.

        ``kind="cell"``: the grid cell holding each item; ``"item"``: the pasted photo's
        square (inside its cell). Pixels with exclusive right / bottom edges, divided by
        ``image_size`` when ``normalized``. The same layout as ``load_image(i)`` draws.
        """
        if kind not in ("cell", "item"):
            raise ValueError(f"fashion_mosaic: kind must be 'cell' or 'item', got {kind!r}")
        items = self.layout(i)
        b = np.array([it.box for it in items], dtype=np.float64).reshape(-1, 4)
        if kind == "cell":  # the cell whose edges enclose the item's top-left corner
            e = self.cell_edges
            col = np.searchsorted(e, b[:, 0], side="right") - 1
            row = np.searchsorted(e, b[:, 1], side="right") - 1
            b = np.stack([e[col], e[row], e[col + 1], e[row + 1]], axis=1).astype(np.float64)
        cls = np.array([it.cls for it in items], dtype=np.float64)
        out = np.concatenate([cls[:, None], b], axis=1)
        if normalized:
            out[:, 1:] /= self.image_size
        return out

    def boxes(self, kind: str = "cell", normalized: bool = True) -> list[np.ndarray]:
        """``item_boxes`` of every row, aligned with ``ids`` (for the pointing game)."""
        return [self.item_boxes(i, kind, normalized) for i in range(len(self))]


@DATASETS.register("fashion_mosaic")
def fashion_mosaic(root: str | None = None, split: str | None = "train",
                   num_images: int | None = None, grid: int = 2, min_items: int = 1,
                   max_items: int | None = None, image_size: int = 224,
                   item_scale: tuple[float, float] | list[float] = (0.7, 1.0), seed: int = 0,
                   outfit_prob: float = 0.75, bottom_prob: float = 0.8,
                   dress_bottom_prob: float = 0.1, shoes_prob: float = 0.8,
                   bag_prob: float = 0.3, layer_prob: float = 0.25,
                   shoe_match_prob: float = 0.6) -> FashionMosaic:
    """Multi-label Fashion-MNIST mosaics (10 classes) with an outfit co-occurrence prior.

    ``num_images`` defaults to a tenth of the split's photos (6,000 train / 1,000 test);
    ``max_items`` defaults to ``min(grid*grid, 4)``; ``item_scale``: an item's side as a
    fraction of its cell, uniform in the range.
    """
    split = "train" if split is None else split
    if split not in _FILES:
        raise DataError(f"fashion_mosaic: split must be 'train' or 'test', got {split!r}")
    if not isinstance(grid, int) or grid < 1:
        raise DataError(f"fashion_mosaic: grid must be an int >= 1, got {grid!r}")
    cells = grid * grid
    max_items = min(cells, 4) if max_items is None else max_items
    if not 1 <= min_items <= max_items <= min(cells, NUM_CLASSES):
        raise DataError(f"fashion_mosaic: need 1 <= min_items ({min_items}) <= max_items "
                        f"({max_items}) <= min(grid*grid, 10) = {min(cells, NUM_CLASSES)}")
    if not isinstance(image_size, int) or image_size < 4 * grid:
        raise DataError(f"fashion_mosaic: image_size must be an int >= {4 * grid}, "
                        f"got {image_size!r}")
    lo, hi = (float(v) for v in item_scale)
    if not 0.0 < lo <= hi <= 1.0:
        raise DataError(f"fashion_mosaic: item_scale must satisfy 0 < low <= high <= 1, "
                        f"got {item_scale!r}")
    try:
        prior = OutfitPrior(outfit_prob, bottom_prob, dress_bottom_prob, shoes_prob, bag_prob,
                            layer_prob, shoe_match_prob)
    except ValueError as e:
        raise DataError(str(e)) from None
    photos, photo_labels = load_fashion_mnist(root, split)
    n = len(photos) // 10 if num_images is None else int(num_images)
    if n < 1:
        raise DataError(f"fashion_mosaic: num_images must be >= 1, got {num_images!r}")

    u = np.random.default_rng([seed, _SPLIT_CODE[split], 0]).random((n, _NUM_U))
    labels = sample_labels(u, prior, min_items, max_items)
    targets = torch.from_numpy(np.where(labels, 1, -1).astype(np.int8))

    config = {"split": split, "grid": grid, "min_items": min_items, "max_items": max_items,
              "image_size": image_size, "item_scale": [lo, hi], "seed": seed,
              "prior": asdict(prior)}
    tag = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:10]
    ids = [f"fashion_mosaic-{split}-{tag}-{i:06d}" for i in range(n)]
    info = dict(config, num_images=n, root=str(resolve_root(root)), config_hash=tag)
    return FashionMosaic(targets, ids, photos, photo_labels, grid, image_size, (lo, hi), seed,
                         split, info)
