"""Dataset contract shared by every loader.

A dataset has ``.targets`` ((N, C) int8: 1 / -1 / 0), ``.ids`` (N image ids), ``.labels``
(a ``LabelSpace``) and ``.transform``; ``ds[i]`` returns ``(image, target)`` where ``image``
is the transformed image (a tensor once a transform is set) and ``target`` the int8 row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from ..io import open_rgb
from ..labels import LabelSpace, validate_targets


class DataError(ValueError):
    """Bad input data; the message names the file (and line) at fault."""


class MultiLabelDataset(Dataset):
    """Images on disk (``paths``) with targets in the mlrkit convention."""

    def __init__(self, paths: Sequence[str | Path] | None, targets: torch.Tensor,
                 labels: LabelSpace, ids: Sequence[str] | None = None,
                 transform: Callable[[Any], Any] | None = None,
                 info: dict[str, Any] | None = None) -> None:
        self.targets = validate_targets(targets, len(labels))
        self.labels = labels
        self.paths = [Path(p) for p in paths] if paths is not None else None
        if self.paths is not None and len(self.paths) != len(self.targets):
            raise DataError(f"{len(self.paths)} images but {len(self.targets)} label rows")
        self.ids = list(ids) if ids is not None else [Path(p).stem for p in (self.paths or [])]
        if len(self.ids) != len(self.targets):
            raise DataError(f"{len(self.ids)} ids but {len(self.targets)} label rows")
        self.transform = transform
        self.info: dict[str, Any] = dict(info or {})  # recorded choices (difficult=..., ...)

    def __len__(self) -> int:
        return len(self.targets)

    #: Pillow's decompression-bomb limit for this dataset's images (None: Pillow's own)
    max_image_pixels: int | None = None

    def load_image(self, i: int) -> Image.Image:
        if self.paths is None:
            raise DataError("this dataset has labels only (no image files)")
        try:
            return open_rgb(self.paths[i], self.max_image_pixels)
        except (FileNotFoundError, ValueError) as e:
            raise DataError(str(e)) from None

    def __getitem__(self, i: int) -> tuple[Any, torch.Tensor]:
        img = self.load_image(i)
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[i]

    def subset(self, indices: Sequence[int]) -> MultiLabelDataset:
        """A copy holding only the rows ``indices`` (in that order); datasets that make
        their images from the index override this."""
        idx = [int(i) for i in indices]
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.targets = self.targets[torch.as_tensor(idx, dtype=torch.long)]
        new.ids = [self.ids[i] for i in idx]
        new.paths = [self.paths[i] for i in idx] if self.paths is not None else None
        new.info = dict(self.info)
        return new

    def with_targets(self, targets: torch.Tensor) -> MultiLabelDataset:
        """A copy sharing images and ids but with other targets (e.g. a label protocol)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.targets = validate_targets(targets, len(self.labels))
        if len(new.targets) != len(self):
            raise DataError(f"protocol has {len(new.targets)} rows, dataset {len(self)}")
        new.info = dict(self.info)
        return new


def check_image(path: str | Path, max_pixels: int | None = None) -> str | None:
    """``None`` when ``path`` decodes as an image, else the reason, naming the file.

    Every byte of the file is decoded (a truncated JPEG fails here as it would in
    training); JPEGs are decoded at reduced scale, which reads the whole stream faster.
    """
    from PIL import Image

    from ..io import _pixel_limit

    try:
        with _pixel_limit(max_pixels), Image.open(path) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
        return None
    except Exception:  # noqa: BLE001 - the reason comes from open_rgb, which names the file
        try:
            open_rgb(path, max_pixels)
        except (FileNotFoundError, ValueError) as e:
            return str(e)
        return None


class _ImageCheck(Dataset):
    def __init__(self, paths: Sequence[Path], max_pixels: int | None) -> None:
        self.paths, self.max_pixels = paths, max_pixels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> str:
        return check_image(self.paths[i], self.max_pixels) or ""


def drop_unreadable_images(ds: MultiLabelDataset, num_workers: int = 0,
                           progress: bool = False) -> MultiLabelDataset:
    """``ds`` without the rows whose image file is missing or does not decode; each one is
    added to ``info["skipped"]`` as ``path: reason``. Datasets without image files (labels
    only, images made from the index) are returned as they are."""
    if ds.paths is None or len(ds) == 0:
        return ds
    from torch.utils.data import DataLoader
    from tqdm.auto import tqdm

    loader = DataLoader(_ImageCheck(ds.paths, ds.max_image_pixels), batch_size=16,
                        num_workers=num_workers, collate_fn=list)
    reasons: list[str] = []
    for chunk in tqdm(loader, desc="checking images", unit="batch", disable=not progress):
        reasons.extend(chunk)
    bad = [i for i, r in enumerate(reasons) if r]
    if not bad:
        return ds
    badset = set(bad)
    out = ds.subset([i for i in range(len(ds)) if i not in badset])
    out.info["skipped"] = list(ds.info.get("skipped", [])) + [reasons[i] for i in bad]
    return out
